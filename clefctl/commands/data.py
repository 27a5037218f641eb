"""``clefctl data ...``: inspect, generate and prepare data sets."""

from __future__ import annotations

import click

from clefctl.commands.options import FACE, json_option, progress_option, shared_options

from clefctl.commands.types import Finite


@click.group("data")
def data() -> None:
    """Data sets: list adapters, write synthetic faces, contact sheets, crop faces.

    Example: clefctl data synth
    """


# Subcommands are added below, one section per library module, each calling into clefctl.data.


# --- prepare: face detection and cropping (clefctl.data.faces) ---------------------------

@data.command("prepare")
@click.argument("inputs", nargs=-1)
@click.option("--dataset", default=None,
              help="Build this data set's face-crop cache instead (bp4d, bp4dplus, disfa, manifest, folder).")
@shared_options("data_root", "dataset_root")
@click.option("--mode", type=click.Choice(["au", "pretrain"]), default=None,
              help="With --dataset (BP4D layouts): pretrain crops the frames pre-training reads.")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="With INPUTS: output folder for crops/ and faces.csv.")
@click.option("--size", default=None, type=click.IntRange(min=16, max=1024),
              help="Side of the square crops in pixels (default 224 for INPUTS, 256 for --dataset).")
@click.option("--workers", default=None, type=click.IntRange(min=1),
              help="With --dataset: processes (default every usable core).")
@click.option("--every", default=1, show_default=True, type=click.IntRange(min=1),
              help="Keep every N-th video frame.")
@click.option("--max-frames", default=None, type=click.IntRange(min=1),
              help="At most this many frames per video; with --dataset --mode pretrain, the frames "
                   "pre-training samples (as pretrain --max-frames).")
@click.option("--margin", default=0.25, show_default=True, type=Finite(min=0, max=4),
              help="Context around the face box on each side, as a fraction of the box.")
@click.option("--no-align", is_flag=True, help="Do not align crops (no landmark template, no eye levelling).")
@shared_options(*FACE)
@progress_option()
@json_option("Print the summary as JSON.")
def prepare_cmd(inputs, dataset, data_root, dataset_root, mode, out_dir, size, workers, every, max_frames,
                margin, no_align, detector, min_confidence, no_progress, as_json) -> None:
    """Crop faces: of your photos and videos (INPUTS --out DIR: crops + faces.csv), or of a whole-frame
    data set once, into the face-crop cache that training, evaluation and embedding then read
    (--dataset; resumable: run it again after a kill).

    \b
    Example: clefctl data prepare photos/ clip.mp4 --out faces --every 5
    Example: clefctl data prepare --dataset bp4d --data-root /datasets --workers 16
    """
    if bool(inputs) == bool(dataset):
        raise click.UsageError("give either INPUTS (with --out) or --dataset NAME")
    if dataset:
        if out_dir is not None or every != 1:
            raise click.UsageError("--out and --every go with INPUTS, not --dataset")
        _prepare_dataset(dataset, data_root, dataset_root, mode, size, workers, max_frames, margin, no_align,
                         not (no_progress or as_json), as_json, detector, min_confidence)
        return
    if out_dir is None:
        raise click.UsageError("INPUTS need --out DIR")
    if any(v is not None for v in (dataset_root, mode, workers)):
        raise click.UsageError("--dataset-root, --mode and --workers go with --dataset")
    _prepare_inputs(list(inputs), out_dir, size or 224, every, max_frames, margin, no_align,
                    not (no_progress or as_json), as_json, detector, min_confidence)


def _prepare_inputs(inputs, out_dir, size, every, max_frames, margin, no_align, progress, as_json,
                    detector, min_confidence) -> None:
    import json as _json

    from clefctl.data.faces import prepare
    from clefctl.data.faces.choice import resolve_detector

    report = prepare(inputs, out_dir, size=size, every=every, max_frames=max_frames,
                     margin=margin, align=not no_align, progress=progress,
                     detector=resolve_detector(detector, min_confidence))
    if as_json:
        click.echo(_json.dumps(report.to_dict(), indent=2))
        return
    click.echo(f"images: {report.images}  videos: {report.videos} ({report.frames} frames)  "
               f"faces found: {report.faces}/{report.processed}  "
               f"unreadable: {len(report.unreadable)}  detector: {report.detector.get('name')}")
    _listing("no face", report.no_face)
    _listing("unreadable, skipped", report.unreadable)
    click.echo(f"wrote {report.csv_path}")


def _listing(what: str, items: list[str], limit: int | None = None) -> None:
    if not items:
        return
    click.echo(f"{what} ({len(items)}):")
    for item in items[:limit]:
        click.echo(f"  {item}")
    if limit is not None and len(items) > limit:
        click.echo(f"  ... ({len(items) - limit} more)")


def _prepare_dataset(dataset, data_root, dataset_root, mode, size, workers, max_frames, margin, no_align,
                     progress, as_json, detector="auto", min_confidence=None) -> None:
    import json as _json

    from clefctl.data.crops import CropSettings, prepare_dataset
    from clefctl.data.faces.choice import resolve_detector

    choice = resolve_detector(detector, min_confidence)
    settings = CropSettings(size=size or 256, margin=margin, align=not no_align, detector=choice.kind,
                            model=choice.model, min_confidence=choice.min_confidence)
    report = prepare_dataset(dataset, root=dataset_root, data_root=data_root, settings=settings, workers=workers,
                             mode=mode, max_frames=max_frames, progress=progress)
    if as_json:
        click.echo(_json.dumps(report.to_dict(), indent=2))
        return
    c = report.counts
    click.echo(f"{report.dataset}: {report.frames} frames, {report.reused} cropped before, {report.cropped_now} now "
               f"({report.frames_per_s:.1f} frames/s with {report.workers} worker{'s' if report.workers != 1 else ''})")
    click.echo(f"  face found: {c.get('face', 0)}  box of a neighbouring frame: {c.get('neighbour', 0)}  "
               f"no face: {c.get('no_face', 0)}  unreadable: {c.get('unreadable', 0)}")
    _listing("no face, left out", report.no_face, limit=20)
    _listing("unreadable, left out", report.unreadable, limit=20)
    click.echo(f"cache: {report.cache} (detector: {settings.detector})")


# --- list, folds: registry and subject folds (clefctl.data, clefctl.data.folds) ----------

@data.command("list")
@shared_options("data_root")
@json_option("Print the list as JSON.")
def list_cmd(data_root, as_json) -> None:
    """List registered data sets, their folders and whether present.

    Example: clefctl data list --data-root /datasets
    """
    import json as _json

    from clefctl.data import describe_datasets

    rows = describe_datasets(data_root)
    if as_json:
        click.echo(_json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        where = r["folder"] or ("(made in the cache on first use)" if r["status"] == "generated"
                                else "(pass --dataset-root)")
        click.echo(f"{r['name']:<{width}}  {r['status']:<10}  {where}")
        click.echo(f"{'':<{width}}  {r['description']}")
        for c in r["crop_caches"]:
            state = "ready" if c["complete"] else "incomplete (run data prepare again)"
            click.echo(f"{'':<{width}}  face crops {c['size']} px: {state}, {c['folder']}")


def _subject_text(subjects: list[str], limit: int = 40) -> str:
    if len(subjects) <= limit:
        return " ".join(subjects)
    return " ".join(subjects[:limit]) + f" ... ({len(subjects) - limit} more)"


@data.command("folds")
@click.argument("dataset")
@click.option("--folds", "k", required=True, type=click.IntRange(min=2),
              help="Number of subject-exclusive folds.")
@shared_options("data_root", "dataset_root")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed for generated folds (ties in frame count).")
@click.option("--allow-generated", is_flag=True,
              help="Generate folds even when K differs from the canonical fold count.")
@click.option("--out", "out_file", default=None, type=click.Path(dir_okay=False),
              help="Write the folds as JSON for a run to reuse.")
@json_option("Print the folds as JSON.")
def folds_cmd(dataset, k, data_root, dataset_root, seed, allow_generated, out_file,
              as_json) -> None:
    """Show a data set's subject-exclusive folds: subjects, frames.

    Example: clefctl data folds bp4d --folds 3 --data-root /datasets --out folds.json
    """
    import json as _json

    from rich.console import Console

    from clefctl.data import load_dataset
    from clefctl.data.folds import describe_folds, make_folds, save_folds

    with Console(stderr=True).status(f"reading {dataset} ..."):
        bundle = load_dataset(dataset, root=dataset_root, data_root=data_root)
    folds = make_folds(bundle, k, seed=seed, allow_generated=allow_generated)
    rows = describe_folds(bundle, folds)
    canonical = bool(bundle.canonical_folds) and len(bundle.canonical_folds) == k
    doc = {"dataset": bundle.name, "k": k, "seed": seed, "canonical": canonical,
           "samples": len(bundle.samples), "subjects": len(bundle.subjects),
           "skipped": bundle.skipped, "folds": rows}
    if out_file:
        save_folds(folds, out_file, dataset=bundle.name, k=k, seed=seed, canonical=canonical)
    if as_json:
        click.echo(_json.dumps(doc, indent=2))
        return
    kind = "canonical" if canonical else f"generated, seed {seed}"
    click.echo(f"{bundle.name}: {len(bundle.samples)} samples, {len(bundle.subjects)} subjects, "
               f"{k} folds ({kind}); {bundle.skipped} skipped")
    for r in rows:
        click.echo(f"fold {r['index']}: test {len(r['test_subjects'])} subjects "
                   f"{r['test_frames']} frames | train {len(r['train_subjects'])} subjects "
                   f"{r['train_frames']} frames")
        click.echo(f"  test: {_subject_text(r['test_subjects'])}")
    if out_file:
        click.echo(f"wrote {out_file}")


# --- synth, sheet: procedural synthetic faces (clefctl.data.synthetic) --------------------

_SYNTH_KINDS = ("synthetic-au", "synthetic-fer")


@data.command("synth")
@click.option("--kind", type=click.Choice([*_SYNTH_KINDS, "all"]), default="all",
              show_default=True, help="Which synthetic set to write.")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Parent folder: each set goes to OUT/<kind> (default: the cache, $CLEF_CACHE).")
@click.option("--subjects", default=None, type=click.IntRange(min=2),
              help="Subjects (AU set) / identities (FER set); default 12 / 40.")
@click.option("--frames", default=None, type=click.IntRange(min=1),
              help="Frames per task (AU set) / images per class (FER set); default 24 / 200.")
@click.option("--size", default=None, type=click.IntRange(min=32, max=1024),
              help="Image side in pixels; default 128 (AU) / 100 (FER).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--force", is_flag=True, help="Regenerate even when the set is up to date.")
@json_option("Print the summary as JSON.")
def synth_cmd(kind, out_dir, subjects, frames, size, seed, force, as_json) -> None:
    """Write the procedural synthetic faces: BP4D layout (AU) and RAF-DB layout (FER).

    Same seed and sizes give byte-identical files; an up-to-date set is reused.

    Example: clefctl data synth --kind synthetic-au --subjects 6 --frames 12 --out data
    """
    import json as _json
    import time as _time
    from pathlib import Path

    from clefctl.data import synthetic

    kinds = _SYNTH_KINDS if kind == "all" else (kind,)
    rows = []
    for k in kinds:
        opts = {"subjects": subjects, "size": size, "seed": seed,
                ("frames_per_task" if k == "synthetic-au" else "images_per_class"): frames}
        root = None if out_dir is None else Path(out_dir) / k
        t0 = _time.perf_counter()
        root, made = synthetic.generate(k, root, force=force,
                                        progress=None if not as_json else False, **opts)
        meta = synthetic.read_sidecar(root)
        rows.append({"kind": k, "root": str(root), "images": len(meta["images"]),
                     "generated": made, "seconds": round(_time.perf_counter() - t0, 2),
                     "params": meta["params"]})
    if as_json:
        click.echo(_json.dumps({"datasets": rows}, indent=2))
        return
    for r in rows:
        state = f"generated in {r['seconds']:.1f} s" if r["generated"] else "up to date"
        click.echo(f"{r['kind']}: {r['images']} images in {r['root']} ({state})")


@data.command("sheet")
@click.option("--dataset", type=click.Choice(_SYNTH_KINDS), default="synthetic-au",
              show_default=True, help="Synthetic set to show.")
@click.option("--root", default=None, type=click.Path(file_okay=False),
              help="The set's folder (default: the cache; generated with default sizes if absent).")
@click.option("--out", "out_png", default="sheet.png", show_default=True,
              type=click.Path(dir_okay=False), help="PNG file to write.")
@click.option("--n", default=24, show_default=True, type=click.IntRange(min=1),
              help="Number of faces.")
@click.option("--seed", default=0, show_default=True, type=int, help="Which faces are picked.")
@json_option()
def sheet_cmd(dataset, root, out_png, n, seed, as_json) -> None:
    """Write a contact sheet: sample faces captioned with their active AUs or expression.

    Example: clefctl data sheet --dataset synthetic-fer --out fer.png --n 28
    """
    import json as _json
    from pathlib import Path

    from clefctl.data import synthetic
    from clefctl.paths import cache_dir

    folder = Path(root) if root else cache_dir() / dataset
    if not (folder / synthetic.SIDECAR).is_file():
        folder = synthetic.ensure(dataset, folder)
    out = synthetic.contact_sheet(folder, out_png, n=n, seed=seed)
    if as_json:
        click.echo(_json.dumps({"dataset": dataset, "root": str(folder), "out": str(out),
                                "n": n}, indent=2))
        return
    click.echo(f"wrote {out}")
