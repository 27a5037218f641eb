"""``clefctl embed`` and ``clefctl query``: fill an embedding store, search it.

Thin wrappers over :mod:`clefctl.store` and :mod:`clefctl.search`. ``embed`` writes the store of
(model, image set) into a workspace folder named after both, ``<workspace>/embed/<image set>--
<arch>-<hash>/store.h5``, so running it again resumes the same file; ``query`` reads the latest
such folder unless told otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from clefctl.errors import ClefError

STORE_NAME = "store.h5"


def default_dataset(workspace, dataset_root, data_root) -> tuple[str, str | None, str | None]:
    """The data set (and its folders) of the latest fine-tuning run."""
    run = workspace.latest("finetune")
    if run is None:
        raise ClefError(f"no --dataset given and no fine-tuning run in {workspace.root}",
                        hint="run `clefctl finetune` first or pass --dataset NAME")
    cfg = run.config()
    opts = cfg.get("options", {})
    return cfg["dataset"], dataset_root or opts.get("dataset_root"), data_root or opts.get("data_root")


def embed_run_dir(workspace, fingerprint: str, image_set: str) -> Path:
    """The folder of the store of (model, image set): deterministic, so reruns resume."""
    from clefctl.store import STORE_SUFFIX, store_filename

    return workspace.stage_dir("embed") / store_filename(fingerprint, image_set)[: -len(STORE_SUFFIX)]


@click.command("embed")
@click.option("--dataset", "dataset", default=None,
              help="Registered data set, e.g. rafdb, bp4d, synthetic-fer (default: the latest fine-tuning run's).")
@click.option("--dataset-root", default=None, type=click.Path(), help="The data set's own folder (or CSV).")
@click.option("--data-root", default=None, type=click.Path(file_okay=False), help="Folder holding the data sets.")
@click.option("--split", default="all", show_default=True, help="Official split to embed (train/val/test) or all.")
@click.option("--weights", default=None, help="Model weights (file or open_clip tag; 'random' = untrained). "
                                              "Default: the latest finetune run's model.")
@click.option("--arch", default="ViT-B-16", show_default=True, help="Architecture (a clefctl checkpoint carries its own).")
@click.option("--trust-checkpoint", is_flag=True,
              help="Allow full unpickling of a trusted weights file (never taken from a config file).")
@click.option("--device", default="auto", show_default=True)
@click.option("--out", "out", default=None, type=click.Path(dir_okay=False),
              help="Store file (default: <workspace>/embed/<image set>--<model>/store.h5).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--chunk-size", default=1024, show_default=True, type=click.IntRange(min=1),
              help="Images per committed chunk (the unit a killed run resumes from).")
@click.option("--dtype", default="float16", show_default=True, type=click.Choice(["float16", "float32"]),
              help="Stored embedding type.")
@click.option("--workers", default=None, type=click.IntRange(min=0), help="Image-loading processes.")
@click.option("--index", "index_kind", default="auto", show_default=True,
              type=click.Choice(["auto", "flat", "hnsw", "ivf", "none"]), help="FAISS index to build after embedding.")
@click.option("--overwrite", is_flag=True, help="Start the store again instead of resuming it.")
@click.option("--workspace", default=None, type=click.Path(file_okay=False), help="Run folder root.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def embed(dataset, dataset_root, data_root, split, weights, arch, trust_checkpoint, device, out, batch_size,
          chunk_size, dtype, workers, index_kind, overwrite, workspace, as_json) -> None:
    """Embed a data set's images into a resumable HDF5 store (and build its FAISS index).

    Killed runs continue from the last committed chunk when started again. Under torchrun each
    process embeds a shard and rank 0 merges them.

    With no options: the data set and checkpoint of the latest fine-tuning run.

    \b
    Example: clefctl embed
             clefctl embed --dataset synthetic-fer --weights random --arch clef-tiny
    """
    from clefctl import distributed
    from clefctl.data import load_dataset
    from clefctl.paths import write_json_atomic
    from clefctl.store import embed_into_store, load_index
    from clefctl.workspace import Run, Workspace

    distributed.setup_from_env()
    ws = Workspace(workspace)
    if dataset is None:
        dataset, dataset_root, data_root = default_dataset(ws, dataset_root, data_root)
    bundle = load_dataset(dataset, root=dataset_root, data_root=data_root)
    if split != "all":
        kept = [s for s in bundle.samples if s.split == split]
        if not kept:
            raise ClefError(f"data set {bundle.name} has no samples in split {split!r}",
                            hint="use --split all, train, val or test")
        bundle.samples = kept
    image_set = bundle.name if split == "all" else f"{bundle.name}-{split}"
    dev = device
    if distributed.world_size() > 1 and device in ("auto", "cuda"):
        import torch

        dev = f"cuda:{distributed.local_rank()}" if torch.cuda.is_available() else "cpu"
    choice = ws.resolve_model(weights, arch=arch,
                              hint="pass --weights model.pt (or --weights random for an untrained model)")
    model = choice.load(dev, trust_checkpoint=trust_checkpoint, default_arch=arch)
    if out is None:
        run_dir = embed_run_dir(ws, model.fingerprint, image_set)
        store_path = run_dir / STORE_NAME
    else:
        store_path = Path(out)
        run_dir = store_path.parent
    if distributed.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
    distributed.barrier()
    report = embed_into_store(model, bundle, store_path, batch_size=batch_size, chunk_size=chunk_size,
                              progress=not as_json, image_set=image_set, dtype=dtype,
                              num_workers=workers, overwrite=overwrite)
    result = report.to_dict()
    if distributed.is_main():
        if index_kind != "none" and report.rows:
            idx = load_index(store_path, index_kind)
            result["index"] = {"kind": idx.kind, "rows": idx.ntotal, "params": idx.meta.get("params", {})}
        if out is None:
            run = Run(run_dir, "embed")
            run.save_config({"dataset": dataset, "dataset_root": dataset_root, "data_root": data_root,
                             "split": split, "image_set": image_set, "arch": model.arch,
                             "weights": choice.weights or "random",
                             "fingerprint": model.fingerprint, "store": STORE_NAME,
                             "dtype": dtype, "batch_size": batch_size, "chunk_size": chunk_size})
            write_json_atomic(run_dir / "report.json", result)
            ws.set_latest(run)
        if as_json:
            click.echo(json.dumps(result, indent=2, default=str))
        else:
            if report.embedded_now == 0 and report.complete:
                now = "already complete"
            else:
                now = (f"{report.embedded_now} embedded now at {report.images_per_s:.1f} img/s"
                       f"{', resumed after ' + str(report.resumed_from) if report.resumed_from else ''}")
            click.echo(f"{report.rows} images in {store_path} ({report.skipped} unreadable skipped; {now})")
            if "index" in result:
                click.echo(f"index: {result['index']['kind']} over {result['index']['rows']} rows")
    distributed.cleanup()


def resolve_store(store: str | None, run_ref: str | None, workspace) -> tuple[Path, dict]:
    """``--store FILE``, else the store of ``--run`` / the latest embed run, with its config."""
    from clefctl.workspace import Run

    if store:
        p = Path(store)
        cfg_path = p.parent / "config.yaml"
        cfg = Run(p.parent, "embed").config() if cfg_path.is_file() else {}
        return p, cfg
    run = workspace.resolve("embed", run_ref) if run_ref else workspace.latest("embed")
    if run is None:
        raise ClefError(f"no embed run in workspace {workspace.root}",
                        hint="run `clefctl embed --dataset NAME` first, or pass --store FILE")
    cfg = run.config()
    return run.path / cfg.get("store", STORE_NAME), cfg


@click.command("query")
@click.argument("text", required=False)
@click.option("--image", default=None, help="Search by an image file or a store id instead of text.")
@click.option("-k", "--k", "k", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--store", default=None, type=click.Path(dir_okay=False), help="Store file (default: latest embed run).")
@click.option("--run", "run_ref", default=None, help="Embed run name or folder.")
@click.option("--weights", default=None, help="Model weights (default: those of the embed run).")
@click.option("--arch", default=None, help="Architecture (default: that of the embed run).")
@click.option("--trust-checkpoint", is_flag=True,
              help="Allow full unpickling of a trusted weights file (never taken from a config file).")
@click.option("--index", "index_kind", default="auto", show_default=True,
              type=click.Choice(["auto", "flat", "hnsw", "ivf"]))
@click.option("--classes", "show_classes", is_flag=True,
              help="Also show which prompt classes the query text is nearest to, and precision@k of the hits.")
@click.option("--sheet", "--contact-sheet", "sheet", default=None, type=click.Path(dir_okay=False),
              help="Also draw the hits into this PNG.")
@click.option("--workspace", default=None, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the hits as JSON.")
def query(text, image, k, store, run_ref, weights, arch, trust_checkpoint, index_kind, show_classes, sheet,
          workspace, as_json) -> None:
    """Find the stored images nearest to a text (or to an image / store id).

    Uses the latest store; when none exists it embeds the latest fine-tuning run's data set first.

    \b
    Example: clefctl query "lip corner pulled up"
             clefctl query "the lip corners are pulled up" -k 12 --classes --sheet hits.png
    """
    from clefctl.search import contact_sheet_of_hits, query_image, query_text
    from clefctl.workspace import Workspace

    if (text is None) == (image is None):
        raise ClefError("give a query text or --image (exactly one)",
                        hint='e.g. clefctl query "raised inner brows" or clefctl query --image face.jpg')
    ws = Workspace(workspace)
    if store is None and run_ref is None and ws.latest("embed") is None:
        import contextlib
        import sys

        click.echo("no embedding store yet: embedding the latest fine-tuning run's data set first", err=True)
        with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the query's own output
            click.get_current_context().invoke(embed, workspace=workspace)
    store_path, cfg = resolve_store(store, run_ref, ws)
    model = store_model(store_path, cfg, weights, arch, trust_checkpoint, workspace)
    hits = (query_text(store_path, model, text, k=k, index=index_kind) if text is not None
            else query_image(store_path, model, image, k=k, index=index_kind))
    if sheet:
        contact_sheet_of_hits(hits, sheet, title=text or image)
    cols = ["rank", "score", "id", "labels", "subject", "path"]
    near = None
    if show_classes and text is not None:
        near = _nearest_with_precision(model, cfg, text, hits)
    if as_json:
        records = hits[cols].to_dict(orient="records")
        out = {"query": text or image, "store": str(store_path), "hits": records}
        if near is not None:
            out["classes"] = near
        click.echo(json.dumps(out, indent=2, default=lambda v: v.item() if hasattr(v, "item") else str(v)))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{text or image}  ({store_path.name}, top {len(hits)})")
    for c in cols:
        table.add_column(c, justify="right" if c in ("rank", "score") else "left")
    for r in hits[cols].itertuples(index=False):
        table.add_row(str(r.rank), f"{r.score:.4f}", str(r.id), str(r.labels), str(r.subject), str(r.path))
    Console().print(table)
    if near is not None:
        click.echo("nearest classes: " + ", ".join(f"{c['class_id']} ({c['name']}, {c['score']:.3f})"
                                                   for c in near["nearest"]))
        if near.get("precision_at_k") is not None:
            click.echo(f"precision@{len(hits)} for {near['nearest'][0]['class_id']}: {near['precision_at_k']:.2f}")
    if sheet:
        click.echo(f"contact sheet: {sheet}")


def store_model(store_path: Path, cfg: dict, weights: str | None, arch: str | None, trust_checkpoint: bool,
                workspace=None):
    """The model that made a store: ``--weights``/``--arch`` when given, else those of its embed run,
    through the workspace's model resolver."""
    from clefctl.workspace import Workspace

    w = weights if weights is not None else cfg.get("weights")
    if w is None:
        raise ClefError("the store's model is unknown (it was not written by an embed run)", path=store_path,
                        hint="pass --weights (and --arch) of the model that made the store")
    a = arch or cfg.get("arch") or "ViT-B-16"
    return Workspace(workspace).resolve_model(w, arch=a).load(trust_checkpoint=trust_checkpoint, default_arch=a)


def _nearest_with_precision(model, cfg: dict, text: str, hits) -> dict:
    """Nearest prompt classes of ``text`` (the model's prompt set) and the share of hits labelled with
    the nearest one (precision@k), when the store carries labels of that class."""
    from clefctl.prompts import load_prompts

    weights = cfg.get("weights")
    run_prompts = Path(weights).parent / "prompts.yaml" if weights and weights != "random" else None
    name = str(run_prompts) if run_prompts is not None and run_prompts.is_file() else (
        model.meta.get("dataset") or cfg.get("dataset") or "bp4d")
    from clefctl.search import nearest_classes

    near = nearest_classes(model, load_prompts(name), text, k=3)
    records = near.to_dict(orient="records")
    best = records[0]["class_id"]
    labelled = [str(v) for v in hits["labels"]]
    precision = None
    if any(labelled):
        precision = sum(best in lab.replace("+", " ").split() for lab in labelled) / max(1, len(labelled))
    return {"nearest": records, "precision_at_k": precision}


@click.command("rescore")
@click.option("--prompts", "prompts_ref", required=True, help="Prompt set name or your edited YAML.")
@click.option("--mode", type=click.Choice(["names", "descriptions", "ensemble"]), default="names", show_default=True,
              help="Class vectors: label names, descriptions (one per class) or the template ensemble.")
@click.option("--store", default=None, type=click.Path(dir_okay=False), help="Store file (default: latest embed run).")
@click.option("--run", "run_ref", default=None, help="Embed run name or folder.")
@click.option("--weights", default=None, help="Model weights (default: those of the embed run; needed for a "
                                              "store written with --out).")
@click.option("--arch", default=None, help="Architecture (default: that of the embed run).")
@click.option("--trust-checkpoint", is_flag=True,
              help="Allow full unpickling of a trusted weights file (never taken from a config file).")
@click.option("--out", "out_csv", default=None, type=click.Path(dir_okay=False), help="Write per-image scores here.")
@click.option("--workspace", default=None, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True)
def rescore(prompts_ref, mode, store, run_ref, weights, arch, trust_checkpoint, out_csv, workspace,
            as_json) -> None:
    """Re-score cached image embeddings against (edited) prompt classes; the image encoder never runs.

    A class added to the YAML is scored zero-shot; renaming or re-describing a class changes its scores.

    \b
    Example: clefctl rescore --prompts my_prompts.yaml --out scores.csv
             clefctl rescore --store s.h5 --weights model.pt --prompts rafdb --json
    """
    from clefctl.paths import atomic_path
    from clefctl.prompts import load_prompts
    from clefctl.search import rescore as run_rescore
    from clefctl.store import EmbeddingStore
    from clefctl.workspace import Workspace

    ws = Workspace(workspace)
    store_path, cfg = resolve_store(store, run_ref, ws)
    model = store_model(store_path, cfg, weights, arch, trust_checkpoint, workspace)
    prompts = load_prompts(prompts_ref)
    with EmbeddingStore.open(store_path, fingerprint=model.fingerprint) as st:
        res = run_rescore(st, model, prompts, mode)
        agreement = res.agreement(st)
    if out_csv:
        with atomic_path(out_csv) as tmp:
            res.to_frame().to_csv(tmp, index=False)
    out = {"store": str(store_path), "prompts": str(prompts_ref), "prompt_hash": res.prompt_hash, "mode": mode,
           "images": len(res.ids), "classes": res.class_ids, "seconds": res.seconds, "agreement": agreement}
    if as_json:
        click.echo(json.dumps(out, indent=2, default=str))
        return
    click.echo(f"re-scored {len(res.ids)} cached images x {len(res.class_ids)} classes in {res.seconds:.2f} s "
               f"(image encoder not run)")
    click.echo(f"agreement with stored labels: {json.dumps(agreement, default=str)[:400]}")
    if out_csv:
        click.echo(f"scores: {out_csv}")
