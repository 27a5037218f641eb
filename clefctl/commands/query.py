"""``clefctl query`` and ``clefctl rescore``: search an embedding store, re-score it against prompts.

Thin wrappers over :mod:`clefctl.search`. Both read the store of the latest embed run (or
``--store`` / ``--run``: :meth:`Workspace.resolve_store <clefctl.workspace.Workspace.resolve_store>`)
with the model that made it (:meth:`Workspace.store_model <clefctl.workspace.Workspace.store_model>`);
``query`` embeds the latest fine-tuning run's data set first (:func:`clefctl.embed.run_embed`) when
there is no store yet.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from clefctl.commands.options import FACE, INDEX_CHOICES, json_option, shared_options
from clefctl.errors import ClefError


def _embed_first(workspace) -> None:
    """No store yet: run ``clefctl embed`` with its defaults, reporting on stderr (stdout is the query's)."""
    from clefctl.commands.embed import summary_lines
    from clefctl.embed.run import EmbedOptions, run_embed

    click.echo("no embedding store yet: embedding the latest fine-tuning run's data set first", err=True)
    res = run_embed(EmbedOptions(workspace=workspace))
    if res.main:
        for line in summary_lines(res):
            click.echo(line, err=True)


@click.command("query")
@click.argument("text", required=False)
@click.option("--image", default=None, help="Search by an image file or a store id instead of text.")
@click.option("--whole-image", is_flag=True,
              help="--image on a store of face crops: search with the whole image, not its largest face.")
@click.option("-k", "--k", "k", default=10, show_default=True, type=click.IntRange(min=1), help="Hits to show.")
@shared_options("store", "run", "store_weights", "store_arch", "trust_checkpoint")
@click.option("--index", "index_kind", default="auto", show_default=True, type=click.Choice(INDEX_CHOICES),
              help="Index to search: auto = the store's saved one (see `clefctl index build`).")
@click.option("--classes", "show_classes", is_flag=True,
              help="Also show which prompt classes the query text is nearest to, and precision@k of the hits.")
@click.option("--sheet", "--contact-sheet", "sheet", default=None, type=click.Path(dir_okay=False),
              help="Also draw the hits into this PNG.")
@shared_options("workspace", *FACE)
@json_option("Print the hits as JSON.")
def query(text, image, whole_image, k, store, run, weights, arch, trust_checkpoint, index_kind, show_classes,
          sheet, workspace, detector, min_confidence, as_json) -> None:
    """Find the stored images nearest to a text (or to an image / store id).

    Uses the latest store; when none exists it embeds the latest fine-tuning run's data set first.

    \b
    Example: clefctl query "lip corner pulled up"
             clefctl query "the lip corners are pulled up" -k 12 --classes --sheet hits.png
             clefctl query --image me.jpg     (a store of faces: searched with the photo's largest face)
    """
    from clefctl.search import contact_sheet_of_hits, nearest_with_precision, query_image, query_text
    from clefctl.workspace import Workspace

    if (text is None) == (image is None):
        raise ClefError("give a query text or --image (exactly one)",
                        hint='e.g. clefctl query "raised inner brows" or clefctl query --image face.jpg')
    ws = Workspace(workspace)
    if store is None and run is None and ws.latest("embed") is None:
        _embed_first(workspace)
    store_path, cfg = ws.resolve_store(store, run)
    if text is not None:  # the text tower only, built only when the query text is not cached already
        eager = weights is not None or show_classes   # an explicit model is checked against the store
        model = ws.store_model(store_path, cfg, weights=weights, arch=arch, trust_checkpoint=trust_checkpoint,
                               towers="text", lazy=not eager)
        hits = query_text(store_path, model, text, k=k, index=index_kind, progress=True)
    else:
        model = ws.store_model(store_path, cfg, weights=weights, arch=arch, trust_checkpoint=trust_checkpoint)
        hits = query_image(store_path, model, image, k=k, index=index_kind, progress=True,
                           face=False if whole_image else None, detector=detector, min_confidence=min_confidence)
        if hits.attrs.get("query_face") is not None and not as_json:
            x, y, w, h = hits.attrs["query_face"]
            click.echo(f"searching with the largest face of {image} (x {x}, y {y}, {w}x{h} px; --whole-image for "
                       f"all of it)", err=True)
    if sheet:
        contact_sheet_of_hits(hits, sheet, title=text or image)
    cols = ["rank", "score", "id", "labels", "subject", "path", "source", "frame", "timestamp", "face_id"]
    near = None
    if show_classes and text is not None:
        near = nearest_with_precision(model, text, hits, cfg)
    if as_json:
        records = hit_records(hits, cols)
        out = {"query": text or image, "store": str(store_path), "hits": records}
        if image is not None:
            face = hits.attrs.get("query_face")
            out["query_face"] = list(face) if face is not None else None
        if near is not None:
            out["classes"] = near
        click.echo(json.dumps(out, indent=2, default=lambda v: v.item() if hasattr(v, "item") else str(v)))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{text or image}  ({store_path.name}, top {len(hits)})")
    faces = "face_id" in hits and bool((hits["face_id"] >= 0).any())   # photos and videos: where each face is
    shown = ["rank", "score", "source", "frame", "timestamp", "face_id"] if faces else \
        ["rank", "score", "id", "labels", "subject", "path"]
    for c in shown:
        table.add_column(c, justify="right" if c in ("rank", "score", "frame", "timestamp", "face_id") else "left")
    for rec in hit_records(hits, shown):
        table.add_row(*(_cell(c, rec[c]) for c in shown))
    Console().print(table)
    if near is not None:
        click.echo("nearest classes: " + ", ".join(f"{c['class_id']} ({c['name']}, {c['score']:.3f})"
                                                   for c in near["nearest"]))
        if near.get("precision_at_k") is not None:
            click.echo(f"precision@{len(hits)} for {near['nearest'][0]['class_id']}: {near['precision_at_k']:.2f}")
    if sheet:
        click.echo(f"contact sheet: {sheet}")


def hit_records(hits, cols: list[str]) -> list[dict]:
    """Hits as JSON-able dicts of ``cols``: numpy scalars as Python numbers, and "none" (NaN, NA,
    face_id -1, an empty source) as None."""
    import math

    out = []
    for rec in hits.reindex(columns=cols).to_dict(orient="records"):
        row = {}
        for c, v in rec.items():
            v = v.item() if hasattr(v, "item") else v
            if v is None or (isinstance(v, float) and math.isnan(v)) or str(v) == "<NA>" or \
                    (c == "face_id" and v == -1) or (c == "source" and v == ""):
                v = None
            row[c] = v
        out.append(row)
    return out


def _cell(column: str, value) -> str:
    if value is None:
        return ""
    if column == "score":
        return f"{value:.4f}"
    if column == "timestamp":
        return f"{value:.2f} s"
    if column == "source":  # the file name; --json has the whole path
        return Path(str(value)).name
    return str(value)


@click.command("rescore")
@click.option("--prompts", "prompts_ref", required=True, help="Prompt set name or your edited YAML.")
@click.option("--mode", type=click.Choice(["names", "descriptions", "ensemble"]), default="names", show_default=True,
              help="Class vectors: label names, descriptions (one per class) or the template ensemble.")
@shared_options("store", "run", "store_weights", "store_arch", "trust_checkpoint")
@click.option("--out", "out_csv", default=None, type=click.Path(dir_okay=False), help="Write per-image scores here.")
@shared_options("workspace")
@json_option("Print the result as JSON.")
def rescore(prompts_ref, mode, store, run, weights, arch, trust_checkpoint, out_csv, workspace,
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
    store_path, cfg = ws.resolve_store(store, run)
    model = ws.store_model(store_path, cfg, weights=weights, arch=arch, trust_checkpoint=trust_checkpoint)
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
