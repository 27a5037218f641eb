"""``clefctl data ...``: inspect, generate and prepare data sets."""

from __future__ import annotations

import click


@click.group("data")
def data() -> None:
    """Data sets: list adapters, write synthetic faces, contact sheets, crop faces.

    Example: clefctl data synth
    """


# Subcommands are added below, one section per library module, each calling into clefctl.data.


# --- prepare: face detection and cropping (clefctl.data.faces) ---------------------------

@data.command("prepare")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder for crops/ and faces.csv.")
@click.option("--size", default=224, show_default=True, type=click.IntRange(min=1),
              help="Side of the square crops in pixels.")
@click.option("--every", default=1, show_default=True, type=click.IntRange(min=1),
              help="Keep every N-th video frame.")
@click.option("--max-frames", default=None, type=click.IntRange(min=1),
              help="At most this many frames per video.")
@click.option("--margin", default=0.25, show_default=True, type=click.FloatRange(min=0),
              help="Context around the face box on each side, as a fraction of the box.")
@click.option("--no-align", is_flag=True, help="Do not rotate crops to level the eyes.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def prepare_cmd(inputs, out_dir, size, every, max_frames, margin, no_align, as_json) -> None:
    """Detect, align and crop faces in photos, folders, globs or videos; write faces.csv.

    Example: clefctl data prepare photos/ clip.mp4 --out faces --every 5
    """
    import json as _json

    from clefctl.data.faces import prepare

    report = prepare(list(inputs), out_dir, size=size, every=every, max_frames=max_frames,
                     margin=margin, align=not no_align, progress=not as_json)
    if as_json:
        click.echo(_json.dumps(report.to_dict(), indent=2))
        return
    click.echo(f"images: {report.images}  videos: {report.videos} ({report.frames} frames)  "
               f"faces found: {report.faces}/{report.processed}  "
               f"unreadable: {len(report.unreadable)}")
    if report.no_face:
        click.echo(f"no face ({len(report.no_face)}):")
        for item in report.no_face:
            click.echo(f"  {item}")
    if report.unreadable:
        click.echo(f"unreadable, skipped ({len(report.unreadable)}):")
        for item in report.unreadable:
            click.echo(f"  {item}")
    click.echo(f"wrote {report.csv_path}")


# --- list, folds: registry and subject folds (clefctl.data, clefctl.data.folds) ----------

@data.command("list")
@click.option("--data-root", default=None, type=click.Path(file_okay=False),
              help="Folder holding BP4D/, DISFA/, RAF-DB/, ... (default $CLEF_DATA_ROOT or ./data).")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
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


def _subject_text(subjects: list[str], limit: int = 40) -> str:
    if len(subjects) <= limit:
        return " ".join(subjects)
    return " ".join(subjects[:limit]) + f" ... ({len(subjects) - limit} more)"


@data.command("folds")
@click.argument("dataset")
@click.option("--folds", "k", required=True, type=click.IntRange(min=2),
              help="Number of subject-exclusive folds.")
@click.option("--data-root", default=None, type=click.Path(file_okay=False),
              help="Folder holding the data sets (default $CLEF_DATA_ROOT or ./data).")
@click.option("--dataset-root", default=None, type=click.Path(),
              help="The data set's own folder (or CSV for manifest), overriding the data root.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed for generated folds (ties in frame count).")
@click.option("--allow-generated", is_flag=True,
              help="Generate folds even when K differs from the canonical fold count.")
@click.option("--out", "out_file", default=None, type=click.Path(dir_okay=False),
              help="Write the folds as JSON for a run to reuse.")
@click.option("--json", "as_json", is_flag=True, help="Print the folds as JSON.")
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
