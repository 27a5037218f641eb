"""``clefctl explain``: relevancy heatmaps of a face for texts (Fig. 4), and the pointing check."""

from __future__ import annotations

import json

import click

from clefctl.commands.options import face_options


def _aus(value: str | None):
    if not value:
        return None  # the default AUs of the pointing check
    return tuple(a.strip() for a in value.split(",") if a.strip())


def _pct(v) -> str:
    return "-" if v is None or v != v else f"{100 * v:.1f}%"


@click.command("explain")
@click.argument("image", required=False)
@click.option("--text", "texts", multiple=True, help="A text to explain the image against (repeatable).")
@click.option("--classes", is_flag=True,
              help="One panel per class name and per description of the model's prompt set (Fig. 4).")
@click.option("--max-descriptions", type=click.IntRange(min=0), default=None,
              help="With --classes: at most this many descriptions per class (default: all).")
@click.option("--prompts", default=None, help="Prompt set name or YAML (default: the checkpoint run's).")
@click.option("--checkpoint", default="latest", show_default=True,
              help="latest (the workspace's latest fine-tuning run), random, a model.pt, a run folder or name, "
                   "an exported folder, hf-hub:ORG/NAME or a registry name (clefctl weights list).")
@click.option("--arch", default=None,
              help="Architecture for random models (default clef-tiny) and non-clefctl weight files (ViT-B-16).")
@click.option("--out", default="explain.png", show_default=True, type=click.Path(dir_okay=False),
              help="The PNG to write.")
@click.option("--crop/--no-crop", default=None,
              help="Crop the largest face first (default: only for images over twice the model input).")
@click.option("--store", default=None, type=click.Path(dir_okay=False),
              help="An embedding store (.h5): IMAGE is then an image id from `query` results.")
@click.option("--start-layer", type=click.IntRange(min=0), default=0, show_default=True,
              help="Leave blocks before this one out of the relevance sum.")
@click.option("--pointing", is_flag=True,
              help="Pointing accuracy on synthetic-au faces instead of a figure: is the hottest patch of "
                   "the AU name's map inside the AU's region?")
@click.option("--n", "n_images", type=click.IntRange(min=1), default=50, show_default=True,
              help="With --pointing: images per AU.")
@click.option("--aus", default=None, help="With --pointing: comma-separated AUs (default AU12,AU4,AU9,AU26,...).")
@click.option("--dataset-root", default=None, help="With --pointing: the synthetic-au set (default: the run's).")
@click.option("--all-subjects", is_flag=True,
              help="With --pointing: use every subject, not only the run's held-out fold.")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available).")
@click.option("--workspace", default=None, envvar="CLEF_WORKSPACE", help="Run folders (default ./clef_runs).")
@click.option("--trust-checkpoint", is_flag=True, help="Allow full unpickling of a trusted weights file.")
@face_options
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def explain(image, texts, classes, max_descriptions, prompts, checkpoint, arch, out, crop, store, start_layer,
            pointing, n_images, aus, dataset_root, all_subjects, device, workspace, trust_checkpoint,
            detector, min_confidence, no_progress, as_json) -> None:
    """Show which face regions and which words drive the image-text similarity (Chefer et al. 2021).

    Writes a PNG with the face, one heatmap per text (jet: blue low, red high) and the text with
    each token shaded green by its relevance. IMAGE is a file (large photos are face-cropped
    first; without a face the whole photo is used, with a warning) or, with --store, an image id
    from `clefctl query` results. With --pointing, measures
    how often the hottest patch of an AU's label-name map falls on that AU's face region on
    synthetic-au faces, and the share of relevancy inside the region, each against its chance level.

    \b
    Example: clefctl explain face.jpg --text "a photo of a person with lip corner puller."
             clefctl explain face.jpg --classes --max-descriptions 2 --out fig4.png
             clefctl explain --pointing --n 50
    """
    from rich.console import Console

    from clefctl.explain import ExplainOptions, run_explain

    def warn(message: str) -> None:
        Console(stderr=True).print(f"[yellow]warning[/yellow]: {message}", highlight=False, soft_wrap=True)

    opts = ExplainOptions(image=image, texts=texts, classes=classes, max_descriptions=max_descriptions,
                          prompts=prompts, checkpoint=checkpoint, arch=arch, out=out, crop=crop, store=store,
                          start_layer=start_layer, pointing=pointing, n_images=n_images, aus=_aus(aus),
                          dataset_root=dataset_root, all_subjects=all_subjects, device=device,
                          workspace=workspace, trust_checkpoint=trust_checkpoint, detector=detector,
                          min_confidence=min_confidence, progress=not no_progress and not as_json, warn=warn)
    result = run_explain(opts)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    elif result.pointing:
        _print_pointing(Console(), result)
    else:
        _print_figure(Console(), result)


def _print_pointing(console, result) -> None:
    from rich.table import Table

    table = Table(title=f"pointing accuracy: {result.model}, {result.subjects}")
    for col in ("AU", "hit rate", "chance", "mass in region", "area", "n", "text"):
        table.add_column(col, justify="left" if col in ("AU", "text") else "right")
    for au, r in result.aus.items():
        table.add_row(au, _pct(r["hit_rate"]), _pct(r["chance_patches"]), _pct(r["mass"]), _pct(r["chance"]),
                      str(r["n"]), r["text"])
    summary = result.summary
    if summary["n"]:
        table.add_row("mean", _pct(summary["mean_hit_rate"]), _pct(summary["mean_chance_patches"]),
                      _pct(summary["mean_mass"]), _pct(summary["mean_chance"]), str(summary["n"]), "", style="bold")
    table.caption = ("hit: the hottest patch overlaps the AU's region; chance: share of patches that do; "
                     "mass in region: share of the map's relevancy inside the region; area: its share of "
                     "the image (the chance level of mass)")
    table.caption_justify = "left"
    console.print(table)
    console.print(f"data: {result.data}", highlight=False)


def _print_figure(console, result) -> None:
    from rich.table import Table

    table = Table(title=f"{result.face.source} - {result.model}")
    for col in ("panel", "cosine", "top tokens"):
        table.add_column(col, justify="right" if col == "cosine" else "left")
    for name, r in result.panels:
        table.add_row(name, f"{r.similarity:+.3f}", " ".join(f"{t}({s:.2f})" for t, s in r.top_tokens(4)))
    console.print(table)
    console.print(f"wrote {result.png}", highlight=False)
