"""``clefctl index build`` and ``clefctl index status``: the store's FAISS index, built on request
(a thin wrapper over :mod:`clefctl.store.index.run`)."""

from __future__ import annotations

import json

import click

from clefctl.commands.types import ByteSize, Finite
from clefctl.store.index.kinds import INDEX_KINDS


def _store(store, run_ref, workspace):
    from clefctl.commands.query import resolve_store
    from clefctl.workspace import Workspace

    return resolve_store(store, run_ref, Workspace(workspace))


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


@index.command("build")
@click.option("--store", default=None, type=click.Path(dir_okay=False), help="Store file (default: latest embed run).")
@click.option("--run", "run_ref", default=None, help="Embed run name or folder.")
@click.option("--kind", default="auto", show_default=True, type=click.Choice(list(INDEX_KINDS)),
              help="Index family (auto: exact below 100k rows, else the most accurate that fits --budget).")
@click.option("--budget", default=None, type=ByteSize(), help="Most memory the index may take, e.g. 600MB (default: the float16 "
                                             "embeddings' size).")
@click.option("--nlist", default=None, type=click.IntRange(min=1), help="IVF lists (default: ~4*sqrt(rows)).")
@click.option("--nprobe", default=None, type=click.IntRange(min=1),
              help="IVF lists probed per query (default: tuned to reach --recall on text-like queries).")
@click.option("--recall", "target_recall", default=0.95, show_default=True,
              type=Finite(min=0, max=1, min_open=True),
              help="recall@10 the tuned nprobe must reach on text-like queries.")
@click.option("--gpu", default="auto", show_default=True, type=click.Choice(["auto", "yes", "no"]),
              help="Use GPU FAISS when it is installed and sees a GPU.")
@click.option("--rebuild", is_flag=True, help="Build even when the saved index is fresh.")
@click.option("--weights", default=None, help="Model for the tuning texts (default: the embed run's).")
@click.option("--arch", default=None, help="Architecture (default: that of the embed run).")
@click.option("--trust-checkpoint", is_flag=True,
              help="Allow full unpickling of a trusted weights file (never taken from a config file).")
@click.option("--prompts", default=None, help="Prompt set whose texts tune nprobe (default: the store's data set's).")
@click.option("--workspace", default=None, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def build(store, run_ref, kind, budget, nlist, nprobe, target_recall, gpu, rebuild, weights, arch, trust_checkpoint,
          prompts, workspace, as_json) -> None:
    """Build the store's index now (embed builds it too; queries never build one silently).

    Prints what it will build and the memory it needs first, and refuses a build that would not fit.

    \b
    Example: clefctl index build
             clefctl index build --store store.h5 --kind ivf-sq8 --recall 0.97 --json
    """
    from clefctl.store.index.run import IndexBuildOptions, run_index_build

    store_path, cfg = _store(store, run_ref, workspace)
    res = run_index_build(IndexBuildOptions(
        store=str(store_path), kind=kind, budget=budget, nlist=nlist, nprobe=nprobe, target_recall=target_recall,
        gpu=gpu, rebuild=rebuild, config=cfg, weights=weights, arch=arch, trust_checkpoint=trust_checkpoint,
        prompts=prompts, workspace=workspace, progress=not as_json))
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
@click.option("--store", default=None, type=click.Path(dir_okay=False), help="Store file (default: latest embed run).")
@click.option("--run", "run_ref", default=None, help="Embed run name or folder.")
@click.option("--workspace", default=None, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def status(store, run_ref, workspace, as_json) -> None:
    """Show the saved index of a store and whether it is fresh for the store's rows.

    \b
    Example: clefctl index status --json
    """
    from clefctl.store.index.run import index_report

    store_path, _ = _store(store, run_ref, workspace)
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
