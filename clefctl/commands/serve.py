"""``clefctl serve``: a local web explorer over an embedding store (a thin wrapper over
:func:`clefctl.serve.run_serve`). The store and its model are found as ``query`` finds them."""

from __future__ import annotations

import json

import click

from clefctl.commands.types import Finite
from clefctl.errors import ClefError


@click.command("serve")
@click.option("--store", default=None, type=click.Path(dir_okay=False), help="Store file (default: latest embed run).")
@click.option("--run", "run_ref", default=None, help="Embed run name or folder.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but a loopback address requires the token printed at start.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port.")
@click.option("--token", default=None, envvar="CLEF_SERVE_TOKEN",
              help="Access token (default: none on 127.0.0.1, a random one on any other address).")
@click.option("--weights", default=None, help="Model weights (default: those of the embed run).")
@click.option("--arch", default=None, help="Architecture (default: that of the embed run).")
@click.option("--trust-checkpoint", is_flag=True,
              help="Allow full unpickling of a trusted weights file (never taken from a config file).")
@click.option("--prompts", "prompts_ref", default=None,
              help="Prompt set shown as classes (default: the model's run's, else the store's data set's).")
@click.option("--mode", type=click.Choice(["names", "descriptions", "ensemble"]), default="names", show_default=True,
              help="Class vectors for the prompt classes: label names, descriptions or both.")
@click.option("--index", "index_kind", default="auto", show_default=True,
              type=click.Choice(["auto", "flat", "hnsw", "ivf"]))
@click.option("--max-upload-mb", default=16.0, show_default=True, type=Finite(min=0, max=65536, min_open=True),
              help="Largest image upload taken by image search.")
@click.option("--workspace", default=None, type=click.Path(file_okay=False))
@click.option("--no-progress", is_flag=True, help="No progress bar while starting.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the start record (url, port, token, store, rows) as one JSON line.")
def serve(store, run_ref, host, port, token, weights, arch, trust_checkpoint, prompts_ref, mode, index_kind,
          max_upload_mb, workspace, no_progress, as_json) -> None:
    """Explore an embedding store in the browser: search by text or image, see why a face matched,
    edit prompt classes live. The same server answers a JSON API (docs/serve.md).

    The model is loaded once and kept warm. Ctrl-C stops the server.

    \b
    Example: clefctl serve                      # the latest store, http://127.0.0.1:8765/
             clefctl serve --store s.h5 --weights model.pt --port 9000
             curl 'http://127.0.0.1:8765/api/search?q=raised+inner+brows&k=5'
    """
    from clefctl.commands.query import resolve_store, store_model
    from clefctl.serve import ServeOptions, run_serve
    from clefctl.serve.server import require_server_packages
    from clefctl.workspace import Workspace

    require_server_packages()
    ws = Workspace(workspace)
    store_path, cfg = resolve_store(store, run_ref, ws)
    if not store_path.is_file():  # before the model loads
        raise ClefError("embedding store not found", path=store_path, hint="create it with `clefctl embed`")
    model = store_model(store_path, cfg, weights, arch, trust_checkpoint, workspace)

    def ready(rec: dict) -> None:
        if as_json:
            click.echo(json.dumps(rec))
        else:
            click.echo(f"serving {rec['store']} ({rec['rows']} rows, model {rec['model']}, {rec['index']} index)")
            click.echo(f"open {rec['url']}" + ("   (the token is required: keep this URL private)"
                                               if rec["token"] else ""))
            click.echo("Ctrl-C stops the server")

    run_serve(ServeOptions(store=store_path, model=model, config=cfg, prompts=prompts_ref, mode=mode, host=host,
                           port=port, token=token, max_upload_mb=max_upload_mb, index=index_kind,
                           workspace=workspace, progress=not no_progress and not as_json, on_ready=ready))
