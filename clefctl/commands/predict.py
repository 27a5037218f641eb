"""``clefctl predict``: AU and expression predictions on photos and videos."""

from __future__ import annotations

import json

import click


@click.command("predict")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", "out_csv", default="predictions.csv", show_default=True, type=click.Path(dir_okay=False),
              help="CSV to write (one row per image or sampled frame).")
@click.option("--au-checkpoint", default=None,
              help="Fine-tuned AU model: a model.pt, run, exported folder or hf-hub:ORG/NAME (default: newest AU run).")
@click.option("--fer-checkpoint", default=None,
              help="Fine-tuned expression model: a model.pt, run, exported folder or hf-hub:ORG/NAME "
                   "(default: newest FER run).")
@click.option("--every", type=int, default=1, show_default=True, help="Video: keep every N-th frame.")
@click.option("--max-frames", type=int, default=None, help="Video: at most this many frames.")
@click.option("--workspace", default=None, envvar="CLEF_WORKSPACE")
@click.option("--device", default=None)
@click.option("--trust-checkpoint", is_flag=True,
              help="Allow full unpickling of a trusted checkpoint file (only for files you trust).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def predict(inputs, out_csv, au_checkpoint, fer_checkpoint, every, max_frames, workspace, device, trust_checkpoint,
            as_json) -> None:
    """Detect, align and crop faces, then write AU (AU12_c, AU12_p) and expression probabilities.

    Inputs are image files, folders, globs or videos (.mp4 .avi .mov .mkv .webm); images without a
    face get a row with no_face=1. A video also gets a timeline PNG of the AU probabilities. Files
    that cannot be decoded (a broken image, a corrupt video) are skipped with a warning on stderr
    and listed in the summary ("skipped", "unreadable").

    \b
    Example: clefctl predict photos/ --out predictions.csv
             clefctl predict interview.mp4 --every 5 --out interview.csv
    """
    from clefctl.predict import predict as run

    summary = run(list(inputs), out_csv, au_checkpoint, fer_checkpoint, workspace, every, max_frames,
                  device=device, progress=not as_json, trust_checkpoint=trust_checkpoint)
    bad = summary["unreadable"]
    if bad:
        click.echo(f"warning: skipped {len(bad)} unreadable input{'s' if len(bad) != 1 else ''} (not a "
                   f"decodable image or video): " + ", ".join(bad[:10]) + (" ..." if len(bad) > 10 else ""),
                   err=True)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"wrote {summary['csv']}: {summary['rows']} rows, {summary['faces']} with a face")
    if summary["no_face"]:
        click.echo(f"no face found in {len(summary['no_face'])}: " + ", ".join(summary["no_face"][:10]))
    for t in summary["timelines"]:
        click.echo(f"timeline: {t}")
