"""``clefctl predict``: AUs and expressions of every face in photos and videos (OpenFace's CSV)."""

from __future__ import annotations

import json

import click

from clefctl.commands.options import face_options
from clefctl.commands.types import Finite


def _no_face_line(no_face: dict) -> str:
    parts = [f"{src} ({n} frame{'s' if n != 1 else ''})" if n > 1 else src for src, n in list(no_face.items())[:10]]
    more = f" and {len(no_face) - 10} more" if len(no_face) > 10 else ""
    total = sum(no_face.values())
    return f"no face on {total} frame{'s' if total != 1 else ''}: " + ", ".join(parts) + more


@click.command("predict")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", "out_csv", default="predictions.csv", show_default=True, type=click.Path(dir_okay=False),
              help="CSV to write: one row per face per image or sampled frame (docs/predict.md).")
@click.option("--au-checkpoint", default=None,
              help="Fine-tuned AU model: a model.pt, run, exported folder or hf-hub:ORG/NAME (default: newest AU run).")
@click.option("--fer-checkpoint", default=None,
              help="Fine-tuned expression model: a model.pt, run, exported folder or hf-hub:ORG/NAME "
                   "(default: newest FER run).")
@click.option("--weights", default=None,
              help="A fine-tuned model (run, model.pt, exported folder, hf-hub:ORG/NAME) scores with its own "
                   "head and classes; any other weights (registry name such as farl-ep64, file, open_clip tag, "
                   "'random') score zero-shot and need --prompts.")
@click.option("--arch", default=None, help="Zero-shot: architecture of --weights (default ViT-B-16; "
                                           "clef-tiny for --weights random).")
@click.option("--prompts", "prompts", multiple=True,
              help="Zero-shot: prompt set name or YAML; its task (au or fer) decides the columns. Repeat for both.")
@click.option("--prompt-mode", default="names", show_default=True,
              type=click.Choice(["names", "descriptions", "ensemble"]),
              help="Zero-shot class vectors: label names, descriptions or the template ensemble.")
@click.option("--every", type=click.IntRange(min=1), default=1, show_default=True, help="Video: keep every N-th frame.")
@click.option("--max-frames", type=click.IntRange(min=1), default=None, help="Video: at most this many frames.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Face crops per model call, gathered across frames (larger on a GPU).")
@click.option("--smooth", type=Finite(min=0, max=3600), default=0.0, show_default=True,
              help="Seconds of a centred moving average of the probabilities along each face track (0 = off).")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1 or auto.")
@click.option("--dtype", default="auto", show_default=True,
              type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
              help="Inference precision (auto: the bf16 copy on CPUs with native bf16, fp16 on CUDA).")
@click.option("--no-timeline", is_flag=True, help="Do not draw the AU timeline PNG of each video.")
@click.option("--workspace", default=None, envvar="CLEF_WORKSPACE")
@click.option("--trust-checkpoint", is_flag=True,
              help="Allow full unpickling of a trusted checkpoint file (only for files you trust).")
@face_options
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def predict(inputs, out_csv, au_checkpoint, fer_checkpoint, weights, arch, prompts, prompt_mode, every, max_frames,
            batch_size, smooth, device, dtype, no_timeline, workspace, trust_checkpoint, detector, min_confidence,
            as_json) -> None:
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

    summary = run_predict(PredictOptions(
        inputs=list(inputs), out=out_csv, au_checkpoint=au_checkpoint, fer_checkpoint=fer_checkpoint,
        weights=weights, arch=arch, prompts=tuple(prompts), prompt_mode=prompt_mode, workspace=workspace,
        every=every, max_frames=max_frames, batch_size=batch_size, smooth=smooth, device=device, dtype=dtype,
        timeline=not no_timeline, progress=not as_json, trust_checkpoint=trust_checkpoint, detector=detector,
        min_confidence=min_confidence))
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
