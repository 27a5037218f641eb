"""``clefctl predict``: AUs and expressions of every face in photos and videos (OpenFace's CSV)."""

from __future__ import annotations

import json

import click

from clefctl.commands.options import build, json_option, options_command


def _no_face_line(no_face: dict) -> str:
    parts = [f"{src} ({n} frame{'s' if n != 1 else ''})" if n > 1 else src for src, n in list(no_face.items())[:10]]
    more = f" and {len(no_face) - 10} more" if len(no_face) > 10 else ""
    total = sum(no_face.values())
    return f"no face on {total} frame{'s' if total != 1 else ''}: " + ", ".join(parts) + more


@options_command("predict", "clefctl.predict:PredictOptions")
@click.argument("inputs", nargs=-1, required=True)
@json_option("Print the summary as JSON.")
def predict(inputs, as_json, **kw) -> None:
    """Find every face, follow it through videos, and write AU and expression probabilities.

    Inputs are image files, folders, globs or videos (.mp4 .avi .mov .mkv .webm ...). The CSV has
    OpenFace's columns: frame (1-based), face_id, timestamp, confidence (the detector's score),
    success, face_x/y/w/h, the 5 landmarks lmk_x_0..4 / lmk_y_0..4 (YuNet), AU01_c/AU01_p ... (_p is an occurrence probability, not a FACS intensity), one column per
    expression and expression. A frame without a face gets one row with success 0. A video also
    gets a timeline PNG. Files that cannot be decoded are skipped with a warning and listed in the
    summary ("skipped", "unreadable").

    Models: the newest fine-tuned AU and expression runs (or --au-checkpoint / --fer-checkpoint, or a
    fine-tuned model as --weights), or zero-shot with --weights and --prompts.

    \b
    Example: clefctl predict photos/ --out predictions.csv
             clefctl predict interview.mp4 --every 2 --smooth 0.5 --out interview.csv --json
             clefctl predict group.jpg --weights farl-ep64 --prompts bp4d --prompts rafdb
    """
    from clefctl.predict import PredictOptions, run_predict

    summary = run_predict(build(PredictOptions, kw, inputs=list(inputs), progress=not as_json))
    bad = summary["unreadable"]
    if bad:
        click.echo(f"warning: skipped {len(bad)} unreadable input{'s' if len(bad) != 1 else ''} (not a "
                   f"decodable image or video): " + ", ".join(bad[:10]) + (" ..." if len(bad) > 10 else ""),
                   err=True)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"wrote {summary['csv']}: {summary['rows']} rows, {summary['faces']} faces on {summary['frames']} "
               f"frames at {summary['fps']} fps ({100 * (summary['detection_share'] or 0):.0f}% of the time in "
               f"face detection, {summary['detector']['name']})")
    if summary["no_face"]:
        click.echo(_no_face_line(summary["no_face"]))
    for t in summary["timelines"]:
        click.echo(f"timeline: {t}")
