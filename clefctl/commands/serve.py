"""``clefctl serve``: a local web explorer over an embedding store (a thin wrapper over
:func:`clefctl.serve.run_serve`). The store and its model are found as ``query`` finds them."""

from __future__ import annotations

import json

import click

from clefctl.commands.options import build, json_option, options_command, progress_option, shared_options
from clefctl.errors import ClefError


@options_command("serve", "clefctl.serve:ServeOptions")
@shared_options("run")
@progress_option("No progress bar while starting.")
@json_option("Print the start record (url, port, token, store, rows) as one JSON line.")
def serve(run, no_progress, as_json, **kw) -> None:
    """Explore an embedding store in the browser: search by text or image, see why a face matched,
    edit prompt classes live. The same server answers a JSON API (docs/serve.md).

    The model is loaded once and kept warm. Ctrl-C stops the server.

    \b
    Example: clefctl serve                      # the latest store, http://127.0.0.1:8765/
             clefctl serve --store s.h5 --weights model.pt --port 9000
             curl 'http://127.0.0.1:8765/api/search?q=raised+inner+brows&k=5'
    """
    from clefctl.serve import ServeOptions, run_serve
    from clefctl.serve.server import require_server_packages
    from clefctl.workspace import Workspace

    require_server_packages()
    opts = build(ServeOptions, kw, progress=not no_progress and not as_json)
    ws = Workspace(opts.workspace)
    opts.store, opts.config = ws.resolve_store(opts.store, run)
    if not opts.store.is_file():  # before the model loads
        raise ClefError("embedding store not found", path=opts.store, hint="create it with `clefctl embed`")
    opts.model = ws.store_model(opts.store, opts.config, weights=opts.weights, arch=opts.arch,
                                trust_checkpoint=opts.trust_checkpoint)

    def ready(rec: dict) -> None:
        if as_json:
            click.echo(json.dumps(rec))
        else:
            click.echo(f"serving {rec['store']} ({rec['rows']} rows, model {rec['model']}, {rec['index']} index)")
            click.echo(f"open {rec['url']}" + ("   (the token is required: keep this URL private)"
                                               if rec["token"] else ""))
            click.echo("Ctrl-C stops the server")

    opts.on_ready = ready
    run_serve(opts)
