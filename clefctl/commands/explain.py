"""``clefctl explain``: relevancy heatmaps of a face for texts (Fig. 4), and the pointing check."""

from __future__ import annotations

import json

import click

from clefctl.commands.options import build, json_option, options_command, progress_option


def _pct(v) -> str:
    return "-" if v is None or v != v else f"{100 * v:.1f}%"


@options_command("explain", "clefctl.explain:ExplainOptions")
@click.argument("image", required=False)
@progress_option()
@json_option("Print the results as JSON.")
def explain(image, no_progress, as_json, **kw) -> None:
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

    opts = build(ExplainOptions, kw, image=image, progress=not no_progress and not as_json, warn=warn)
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
