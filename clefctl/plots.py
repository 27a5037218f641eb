"""Report plots as PNG files: per-AU F1 bars, confusion matrix, t-SNE of features, training curves,
and the one captioned thumbnail grid (contact sheets of data sets and of search hits).

Rendering uses matplotlib's Agg backend through ``matplotlib.figure.Figure`` (no pyplot, so no
display, no global figure registry and no change to the caller's backend). Every function writes its
PNG atomically and returns the path.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import matplotlib

if "matplotlib.pyplot" not in sys.modules:  # headless by default; never switch a live pyplot session
    matplotlib.use("Agg")
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from clefctl.paths import atomic_path

OURS_COLOR = "#1f77b4"
REF_COLOR = "#ff7f0e"
NONE_COLOR = "#c8c8c8"


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out) -> Path:
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return out


def _finite(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def f1_bars(per_au: dict, out, reference: dict | None = None, *, label: str = "ours",
            reference_label: str = "CLEF (published)", baseline: dict | None = None,
            baseline_label: str = "all-positive baseline", title: str | None = None) -> Path:
    """Bar chart of F1 (%) per AU; published ``reference`` bars beside ours when given.

    ``per_au``, ``reference`` and ``baseline``: AU id -> F1 (%), NaN/None = undefined (drawn as
    "n/a"). The baseline is drawn as a black tick on each AU. Means go in the legend.
    """
    aus = list(per_au)
    x = np.arange(len(aus))
    ref = {k: v for k, v in (reference or {}).items() if k in per_au}
    width = 0.4 if ref else 0.7
    fig = _figure(max(6.0, 0.65 * len(aus) + 2.5), 4.5)
    ax = fig.add_subplot(1, 1, 1)

    def mean_of(d):
        vals = [v for v in d.values() if _finite(v)]
        return float(np.mean(vals)) if vals else float("nan")

    ours = np.array([per_au[a] if _finite(per_au[a]) else np.nan for a in aus], dtype=float)
    shift = -width / 2 if ref else 0.0
    bars = ax.bar(x + shift, np.nan_to_num(ours), width, color=OURS_COLOR,
                  label=f"{label} (mean {mean_of(per_au):.1f})")
    for rect, v in zip(bars, ours):
        text = "n/a" if np.isnan(v) else f"{v:.1f}"
        ax.annotate(text, (rect.get_x() + rect.get_width() / 2, 0 if np.isnan(v) else v),
                    xytext=(0, 2), textcoords="offset points", ha="center", va="bottom", fontsize=7)
    if ref:
        rv = np.array([ref[a] if a in ref and _finite(ref[a]) else np.nan for a in aus], dtype=float)
        ax.bar(x + width / 2, np.nan_to_num(rv), width, color=REF_COLOR,
               label=f"{reference_label} (mean {mean_of(ref):.1f})")
    if baseline:
        bv = np.array([baseline.get(a, np.nan) if _finite(baseline.get(a)) else np.nan for a in aus],
                      dtype=float)
        ax.scatter(x, bv, marker="_", s=400, color="black", linewidths=2, zorder=3,
                   label=f"{baseline_label} (mean {mean_of(baseline):.1f})")
    ax.set_xticks(x)
    ax.set_xticklabels(aus, rotation=45 if len(aus) > 12 else 0)
    ax.set_ylim(0, 105)
    ax.set_ylabel("F1 (%)")
    ax.set_xlabel("action unit")
    ax.set_title(title or "F1 per action unit")
    ax.grid(axis="y", alpha=0.3)
    n_entries = 1 + bool(ref) + bool(baseline)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14 if len(aus) <= 12 else -0.2), fontsize=8,
              ncol=n_entries if len(aus) >= 8 else 1, frameon=False)
    return _save(fig, out)


def confusion_matrix(cm, class_names: Sequence[str], out, normalize: bool = True, *,
                     title: str | None = None) -> Path:
    """Heat map of a confusion matrix (rows = truth, columns = prediction).

    ``normalize``: colours and the first number in each cell are row percentages (recall per
    class); the count follows in parentheses.
    """
    cm = np.asarray(cm, dtype=float)
    names = [str(c) for c in class_names]
    row = cm.sum(1, keepdims=True)
    shown = np.divide(100.0 * cm, row, out=np.zeros_like(cm), where=row > 0) if normalize else cm
    k = len(names)
    size = max(4.5, 0.8 * k + 2.0)
    fig = _figure(size + 1.0, size)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=100 if normalize else max(1.0, shown.max()))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04,
                 label="% of true class" if normalize else "count")
    threshold = (100 if normalize else max(1.0, shown.max())) / 2
    for i in range(k):
        for j in range(k):
            text = f"{shown[i, j]:.0f}%\n({int(cm[i, j])})" if normalize else f"{int(cm[i, j])}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7 if k > 6 else 9,
                    color="white" if shown[i, j] > threshold else "black")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(names, rotation=45, ha="right")
    ax.set_yticklabels(names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    total = cm.sum()
    acc = 100.0 * np.trace(cm) / total if total else float("nan")
    ax.set_title(title or f"Confusion matrix (accuracy {acc:.2f}%, n={int(total)})")
    return _save(fig, out)


def tsne(features, labels, label_names: Sequence[str], out, *, max_points: int = 2000,
         random_state: int = 0, title: str | None = None) -> Path:
    """2-D t-SNE of image features, one colour per label (the paper's Fig. 5).

    ``labels`` (N,) indices into ``label_names``; a name ``"none"`` is drawn grey. At most
    ``max_points`` points, drawn at random with ``random_state``; features wider than 50 are first
    reduced to 50 dimensions with PCA; t-SNE uses ``init="pca"`` and the same ``random_state``.
    Needs at least 5 points (ValueError otherwise).
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    if x.ndim != 2 or x.shape[0] != y.size:
        raise ValueError(f"features {x.shape} and labels ({y.size},) do not match")
    if x.shape[0] < 5:
        raise ValueError("t-SNE needs at least 5 points")
    n_total = x.shape[0]
    if n_total > max_points:
        idx = np.sort(np.random.default_rng(random_state).choice(n_total, max_points, replace=False))
        x, y = x[idx], y[idx]
    if x.shape[1] > 50 and x.shape[0] > 50:
        x = PCA(n_components=50, random_state=random_state).fit_transform(x)
    perplexity = float(min(30.0, max(2.0, (x.shape[0] - 1) / 3.0)))
    from threadpoolctl import threadpool_limits

    # Small sets: one OpenMP thread (thread start-up costs more than it saves, most of all on a
    # busy machine); large sets use every core.
    with threadpool_limits(limits=1 if x.shape[0] <= 1000 else None, user_api="openmp"):
        emb = TSNE(n_components=2, init="pca", random_state=random_state, perplexity=perplexity,
                   learning_rate="auto").fit_transform(x)
    names = [str(n) for n in label_names]
    fig = _figure(7.5, 6.0)
    ax = fig.add_subplot(1, 1, 1)
    if len(names) <= 10:
        palette = [matplotlib.colormaps["tab10"](i) for i in range(10)]
    else:  # tab20's dark shades first, then the light ones, so neighbours differ in hue
        tab20 = matplotlib.colormaps["tab20"]
        palette = [tab20(i) for i in range(0, 20, 2)] + [tab20(i) for i in range(1, 20, 2)]
    colour_index = 0
    for k, name in enumerate(names):
        sel = y == k
        if name == "none":
            color = NONE_COLOR
        else:
            color = palette[colour_index % len(palette)]
            colour_index += 1
        if not sel.any():
            continue
        ax.scatter(emb[sel, 0], emb[sel, 1], s=8, color=color, label=f"{name} ({int(sel.sum())})",
                   alpha=0.8, linewidths=0, zorder=1 if name == "none" else 2)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    shown = f"{x.shape[0]} of {n_total}" if n_total > x.shape[0] else f"{n_total}"
    ax.set_title(title or f"t-SNE of image features ({shown} images)")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, markerscale=2, frameon=False)
    return _save(fig, out)


def _series(records: Iterable[dict], kind: str, key: str, x_key: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of ``key`` over ``x_key`` for records of ``kind``; a repeated x keeps the last value
    (a resumed run re-logs the steps after its checkpoint)."""
    points: dict[float, float] = {}
    for r in records:
        if r.get("kind") != kind or key not in r or x_key not in r:
            continue
        try:
            points[float(r[x_key])] = float(r[key])
        except (TypeError, ValueError):
            continue
    xs = np.array(sorted(points), dtype=float)
    return xs, np.array([points[v] for v in xs], dtype=float)


EVAL_KEYS = ("test_f1", "test_acc", "val_f1", "val_acc")


def training_curves(runs: Sequence[tuple[str, list[dict]]], out, *, title: str | None = None) -> Path:
    """Loss and learning rate over steps, one line per run/fold; a third panel with the evaluation
    metric per epoch (``test_f1`` / ``test_acc`` / ``val_*`` in ``kind: epoch`` records) when logged.

    ``runs``: (name, records of metrics.jsonl). Without step records the loss panel shows the
    per-epoch loss.
    """
    runs = list(runs)
    eval_keys = [k for k in EVAL_KEYS if any(k in r for _, recs in runs for r in recs
                                              if r.get("kind") == "epoch")]
    n_panels = 2 + (1 if eval_keys else 0)
    fig = _figure(5.0 * n_panels, 4.0)
    axes = [fig.add_subplot(1, n_panels, i + 1) for i in range(n_panels)]
    cmap = matplotlib.colormaps["tab10"]
    any_step = False
    for i, (name, recs) in enumerate(runs):
        color = cmap(i % 10)
        xs, ys = _series(recs, "step", "loss", "step")
        if xs.size:
            any_step = True
            if xs.size > 50:  # raw losses faint, a running mean on top
                w = max(2, xs.size // 25)
                axes[0].plot(xs, ys, color=color, lw=0.6, alpha=0.3)
                smooth = np.convolve(ys, np.ones(w) / w, mode="valid")
                axes[0].plot(xs[w - 1:], smooth, color=color, lw=1.4, label=f"{name} (mean of {w})")
            else:
                axes[0].plot(xs, ys, color=color, lw=1, label=name)
        else:
            xs, ys = _series(recs, "epoch", "loss", "epoch")
            axes[0].plot(xs + 1, ys, color=color, marker="o", lw=1, label=f"{name} (epoch mean)")
        xs, ys = _series(recs, "step", "lr", "step")
        if xs.size:
            axes[1].plot(xs, ys, color=color, lw=1, label=name)
        for j, key in enumerate(eval_keys):
            xs, ys = _series(recs, "epoch", key, "epoch")
            if xs.size:
                axes[2].plot(xs + 1, ys, color=color, marker="o", ls=["-", "--", ":", "-."][j % 4],
                             lw=1, label=f"{name} {key}")
    axes[0].set_title("training loss")
    axes[0].set_xlabel("step" if any_step else "epoch")
    axes[0].set_ylabel("loss")
    axes[1].set_title("learning rate")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("lr")
    axes[1].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    from matplotlib.ticker import MaxNLocator

    if not any_step:
        axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    if eval_keys:
        axes[2].xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[2].set_title("evaluation per epoch")
        axes[2].set_xlabel("epoch")
        axes[2].set_ylabel("%")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "nothing logged", ha="center", va="center", transform=ax.transAxes)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, out)


# ----------------------------------------------------------------------------------------------
# thumbnail grid (Pillow, no matplotlib: pixel-sized tiles and text)


@dataclass(frozen=True)
class Tile:
    """One cell of :func:`thumbnail_grid`: an image (None: a grey placeholder showing ``note``)
    and its caption lines (the first in black, the others grey)."""

    image: object | None
    caption: Sequence[str] = ()
    note: str = "unreadable"


def _font(px: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=px)
    except TypeError:  # pragma: no cover - Pillow without FreeType sizes
        return ImageFont.load_default()


def _wrap(draw, text: str, font, width: int) -> list[str]:
    """``text`` in lines of at most ``width`` pixels, broken at spaces and after ``+``."""
    lines, cur = [], ""
    for word in text.replace("+", "+ ").split(" "):
        trial = (cur + word) if cur.endswith("+ ") or not cur else cur + " " + word
        trial = trial.replace("+ ", "+") if draw.textlength(trial.replace("+ ", "+"), font=font) \
            <= width else None
        if trial is None and cur:
            lines.append(cur.replace("+ ", "+"))
            cur = word
        else:
            cur = (cur + word) if trial is None else trial
    if cur:
        lines.append(cur.replace("+ ", "+"))
    return lines


def _clip(draw, text: str, font, width: int) -> str:
    """``text`` cut to at most ``width`` pixels."""
    while text and draw.textlength(text, font=font) > width:
        text = text[:-1]
    return text


def thumbnail_grid(sections: Sequence[tuple[str | None, Sequence[Tile]]], out, *, cols: int,
                   tile_px: int, pad: int = 0, font_px: int = 10, wrap: bool = False) -> Path:
    """Write a PNG grid of captioned square thumbnails; return its path (written atomically).

    ``sections``: (title, tiles) blocks drawn one below the other, each starting a new row under
    its title line (no title line when the title is None), ``cols`` tiles per row. Images are
    fitted into ``tile_px`` squares (aspect kept, dark bars); ``pad`` pixels separate the tiles.
    Caption lines longer than a tile are wrapped (``wrap``, breaking at spaces and after ``+``) or
    cut; every caption gets the height of the longest. Text uses Pillow's font at ``font_px``.
    """
    from PIL import Image, ImageDraw, ImageOps

    cols = max(1, int(cols))
    font = _font(font_px)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    fit = (lambda t: _wrap(probe, t, font, tile_px - 4)) if wrap else \
        (lambda t: [_clip(probe, t, font, tile_px - 4)])
    captions = [[ln for line in tile.caption for ln in fit(str(line))] for _, tiles in sections
                for tile in tiles]
    line_h = font_px + 5
    n_lines = max((len(c) for c in captions), default=0)
    cap_h = 4 + n_lines * line_h if n_lines else 0
    head_h = 3 + line_h
    rows = [max(1, -(-len(tiles) // cols)) for _, tiles in sections]
    width = pad + cols * (tile_px + pad)
    height = pad + sum((head_h if title is not None else 0) + r * (tile_px + cap_h + pad)
                       for (title, _), r in zip(sections, rows))
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    y0, k = pad, 0
    for (title, tiles), n_rows in zip(sections, rows):
        if title is not None:
            draw.text((pad + 4, y0 + 3), _clip(probe, str(title), font, width - 8), fill=(0, 0, 0),
                      font=font)
            y0 += head_h
        for i, tile in enumerate(tiles):
            x = pad + (i % cols) * (tile_px + pad)
            y = y0 + (i // cols) * (tile_px + cap_h + pad)
            if tile.image is None:
                draw.rectangle([x, y, x + tile_px - 1, y + tile_px - 1], fill=(160, 160, 160))
                draw.text((x + 4, y + tile_px // 2 - 6), tile.note, fill=(0, 0, 0), font=font)
            else:
                sheet.paste(ImageOps.pad(tile.image.convert("RGB"), (tile_px, tile_px),
                                         method=Image.LANCZOS, color=(30, 30, 30)), (x, y))
            for j, line in enumerate(captions[k]):
                draw.text((x + 2, y + tile_px + 2 + j * line_h), line,
                          fill=(0, 0, 0) if j == 0 else (90, 90, 90), font=font)
            k += 1
        y0 += n_rows * (tile_px + cap_h + pad)
    out = Path(out)
    with atomic_path(out) as tmp:
        sheet.save(tmp, "PNG")
    return out
