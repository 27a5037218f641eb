"""``clefctl embed``: fill an embedding store (a thin wrapper over :func:`clefctl.store.run_embed`).

``embed`` writes the store of (model, image set) into a workspace folder named after both,
``<workspace>/embed/<image set>--<arch>-<hash>/store.h5``, so running it again resumes the same
file. ``query`` and ``rescore`` (:mod:`clefctl.commands.query`) read the latest such folder.
"""

from __future__ import annotations

import json

import click

from clefctl.commands.options import face_options


def summary_lines(res) -> list[str]:
    """The lines ``embed`` prints for an :class:`~clefctl.store.EmbedResult`."""
    report = res.report
    if report.embedded_now == 0 and report.complete:
        now = "already complete"
    else:
        now = (f"{report.embedded_now} embedded now at {report.images_per_s:.1f} img/s"
               f"{', resumed after ' + str(report.resumed_from) if report.resumed_from else ''}")
    if "faces" in res.summary:  # photos and videos: one row per face
        now = now.replace("img/s", "faces/s")
        fps = f", {res.summary['fps']} frames/s" if res.summary.get("fps") else ""
        lines = [f"{report.rows} faces in {res.store_path} from {res.summary['frames']} frames of "
                 f"{res.summary['sources']} files ({res.summary['no_face_frames']} frames without a face, "
                 f"{report.skipped} unreadable files skipped; {now}{fps})"]
    else:
        lines = [f"{report.rows} images in {res.store_path} ({report.skipped} unreadable skipped; {now})"]
    if "index" in res.summary:
        lines.append(f"index: {res.summary['index']['kind']} over {res.summary['index']['rows']} rows")
    return lines


@click.command("embed")
@click.argument("paths", nargs=-1)
@click.option("--dataset", "dataset", default=None,
              help="Registered data set, e.g. rafdb, bp4d, synthetic-fer (default: the latest fine-tuning run's).")
@click.option("--dataset-root", default=None, type=click.Path(), help="The data set's own folder (or CSV).")
@click.option("--data-root", default=None, type=click.Path(file_okay=False), help="Folder holding the data sets.")
@click.option("--split", default="all", show_default=True, help="Official split to embed (train/val/test) or all.")
@click.option("--weights", default=None, help="Model weights (file, registry name such as farl-ep64, exported "
                                              "folder, hf-hub:ORG/NAME or open_clip tag; 'random' = untrained). "
                                              "Default: the latest finetune run's model.")
@click.option("--arch", default="ViT-B-16", show_default=True, help="Architecture (a clefctl checkpoint carries its own).")
@click.option("--trust-checkpoint", is_flag=True,
              help="Allow full unpickling of a trusted weights file (never taken from a config file).")
@click.option("--no-crop-cache", is_flag=True,
              help="--dataset: embed the full frames even when a face-crop cache is ready (clefctl data prepare).")
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
              type=click.Choice(["auto", "flat", "ivf", "ivf-sq8", "ivf-pq", "hnsw", "ivf-ondisk", "none"]),
              help="FAISS index to build after embedding (auto: docs/store.md; `clefctl index build` rebuilds it).")
@click.option("--every", default=1, show_default=True, type=click.IntRange(min=1),
              help="PATH...: keep every N-th video frame.")
@click.option("--max-frames", default=None, type=click.IntRange(min=1), help="PATH...: at most this many frames per video.")
@click.option("--overwrite", is_flag=True, help="Start the store again instead of resuming it.")
@click.option("--workspace", default=None, type=click.Path(file_okay=False), help="Run folder root.")
@face_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def embed(paths, dataset, dataset_root, data_root, split, weights, arch, trust_checkpoint, no_crop_cache, device, out,
          batch_size, chunk_size, dtype, workers, index_kind, every, max_frames, overwrite, workspace, detector,
          min_confidence, as_json) -> None:
    """Embed a data set's images, or every face of photos and videos, into a resumable HDF5 store
    (and build its FAISS index).

    PATH... (files, folders, globs, videos): one row per face per photo or sampled frame, with
    its source file, frame, timestamp, face id and box (the faces predict finds); `query` then
    shows where in which video each hit is.

    Killed runs continue from the last committed chunk when started again. Under torchrun each
    process embeds a shard and rank 0 merges them.

    With no options: the data set and checkpoint of the latest fine-tuning run.

    \b
    Example: clefctl embed
             clefctl embed --dataset synthetic-fer --weights random --arch clef-tiny
             clefctl embed interviews/ --every 5 --weights farl-ep64
    """
    from clefctl.store.embed import EmbedOptions, run_embed

    res = run_embed(EmbedOptions(
        dataset=dataset, dataset_root=dataset_root, data_root=data_root, split=split, weights=weights, arch=arch,
        trust_checkpoint=trust_checkpoint, crop_cache=not no_crop_cache, device=device, out=out, batch_size=batch_size, chunk_size=chunk_size,
        dtype=dtype, workers=workers, index=index_kind, overwrite=overwrite, workspace=workspace,
        progress=not as_json, paths=tuple(paths), every=every, max_frames=max_frames, detector=detector,
        min_confidence=min_confidence))
    if not res.main:
        return
    if as_json:
        click.echo(json.dumps(res.summary, indent=2, default=str))
    else:
        for line in summary_lines(res):
            click.echo(line)
