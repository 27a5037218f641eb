"""``clefctl index build`` and ``clefctl index status``: the store's FAISS index, built on request
(thin wrappers over :func:`clefctl.embed.index.run_index_build` and
:func:`clefctl.store.index.report.index_report`)."""

from __future__ import annotations

import json

import click

from clefctl.commands.options import STORE, OptionsCommand, json_option, shared_options
from clefctl.commands.options import build as options_from


def _store(store, run_ref, workspace):
    from clefctl.workspace import Workspace

    return Workspace(workspace).resolve_store(store, run_ref)


def _mb(nbytes) -> str:
    from clefctl.store.index.kinds import _size

    return "?" if nbytes is None else _size(nbytes)


@click.group("index")
def index() -> None:
    """Build or inspect the FAISS index of an embedding store.

    \b
    Example: clefctl index build
             clefctl index build --store store.h5 --budget 600MB --json
             clefctl index status
    """


@index.command("build", cls=OptionsCommand, options="clefctl.embed.index:IndexBuildOptions")
@shared_options("run")
@json_option("Print the report as JSON.")
def build(run, as_json, **kw) -> None:
    """Build the store's index now (embed builds it too; queries never build one silently).

    Prints what it will build and the memory it needs first, and refuses a build that would not fit.

    \b
    Example: clefctl index build
             clefctl index build --store store.h5 --kind ivf-sq8 --recall 0.97 --json
    """
    from clefctl.embed.index import IndexBuildOptions, run_index_build

    opts = options_from(IndexBuildOptions, kw, progress=not as_json)
    store_path, opts.config = _store(opts.store, run, opts.workspace)
    opts.store = str(store_path)
    res = run_index_build(opts)
    if as_json:
        click.echo(json.dumps(res, indent=2, default=str))
        return
    p = res.get("params", {})
    head = "built" if res["built"] else "fresh already (use --rebuild to build again)"
    lists = f", {p['nlist']} lists, nprobe {p['nprobe']}" if "nlist" in p else ""
    click.echo(f"index {head}: {res['kind']} over {res['rows']:,} rows{lists}, {_mb(res.get('bytes'))} "
               f"(float16 embeddings: {_mb(res.get('float16_bytes'))}) -> {res['path']}")
    if res.get("recall_at_10"):
        click.echo("recall@10 on " + ", ".join(f"{k}-like queries {v:.3f}" for k, v in res["recall_at_10"].items()))
    if res.get("note"):
        click.echo(f"note: {res['note']}")


@index.command("status")
@shared_options(*STORE, "workspace")
@json_option("Print the report as JSON.")
def status(store, run, workspace, as_json) -> None:
    """Show the saved index of a store and whether it is fresh for the store's rows.

    \b
    Example: clefctl index status --json
    """
    from clefctl.store.index.report import index_report

    store_path, _ = _store(store, run, workspace)
    rep = index_report(store_path)
    if as_json:
        click.echo(json.dumps(rep, indent=2, default=str))
        return
    if rep["index"] is None:
        click.echo(f"{rep['store']}: no index ({rep['rows']:,} rows; `clefctl index build` makes one)")
        return
    state = "fresh" if rep["fresh"] else f"stale: {rep['reason']} (`clefctl index build` rebuilds it)"
    lists = f", {rep['nlist']} lists, nprobe {rep['nprobe']}" if rep["ivf"] else ""
    click.echo(f"{rep['index']}: {rep['kind']}{lists}, {_mb(rep['bytes'])} for {rep['rows']:,} rows "
               f"(float16 embeddings {_mb(rep['float16_bytes'])}); {state}")
