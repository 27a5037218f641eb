"""The figure of CLEF's Fig. 4: the face, one relevancy heatmap per text, each text's tokens shaded.

Example::

    >>> from clefctl.model import create
    >>> from clefctl.explain import relevancy, render
    >>> m = create("clef-tiny")
    >>> rel = relevancy(m, face, "a photo of a person with lip corner puller.")  # doctest: +SKIP
    >>> rel.image_map.shape, rel.tokens[:3]                                        # doctest: +SKIP
    ((64, 64), ['a', 'photo', 'of'])
    >>> render(face, [("AU12", rel)], "explain.png")                              # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from clefctl.errors import ClefError
from clefctl.explain.relevance import Relevance

TITLE_CHARS = 34  # longer panel titles are shortened (the full text is printed under the map)


def display_image(image, size: int, mean: Sequence[float] | None = None,
                  std: Sequence[float] | None = None) -> np.ndarray:
    """The face as the model saw it, (size, size, 3) uint8: a PIL image or array is resized
    (shorter side) and center-cropped like the eval transform; a normalised tensor is
    de-normalised (CLIP statistics unless ``mean``/``std`` are given)."""
    from PIL import Image

    if isinstance(image, torch.Tensor):
        from clefctl.data.transforms import CLIP_MEAN, CLIP_STD

        x = image.detach().float().cpu()
        if x.ndim == 4:
            x = x[0]
        m = torch.tensor(mean or CLIP_MEAN).view(3, 1, 1)
        s = torch.tensor(std or CLIP_STD).view(3, 1, 1)
        arr = ((x * s + m).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        if arr.shape[0] != size or arr.shape[1] != size:
            arr = np.asarray(Image.fromarray(arr).resize((size, size), Image.BICUBIC))
        return arr
    if isinstance(image, np.ndarray):
        from clefctl.data.faces import to_rgb_uint8

        image = Image.fromarray(to_rgb_uint8(image))
    from torchvision.transforms import CenterCrop, InterpolationMode, Resize

    img = image.convert("RGB")
    img = CenterCrop(size)(Resize(size, interpolation=InterpolationMode.BICUBIC)(img))
    return np.asarray(img)


def _draw_tokens(ax, renderer, rel: Relevance, fontsize: float) -> None:
    """The text with each token shaded green by its relevance, wrapped by words to the axes width."""
    ax.set_axis_off()
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    if not rel.tokens:
        return
    inv = ax.transAxes.inverted()

    def width(artist) -> tuple[float, float]:
        box = inv.transform(artist.get_window_extent(renderer=renderer))
        return box[1, 0] - box[0, 0], box[1, 1] - box[0, 1]

    probe = ax.text(0, 0, "a a", fontsize=fontsize)
    two = width(probe)[0]
    probe.set_text("aa")
    space = max(0.0, two - width(probe)[0])
    probe.remove()
    ends = rel.word_end or [True] * len(rel.tokens)
    artists = []
    for tok, score in zip(rel.tokens, rel.token_scores):
        face = (0.0, 0.62, 0.0, 0.85 * float(np.clip(score, 0.0, 1.0)))
        artists.append(ax.text(0, 0, tok, fontsize=fontsize, va="top", ha="left",
                               bbox=dict(boxstyle="square,pad=0.08", facecolor=face, edgecolor="none")))
    sizes = [width(a) for a in artists]
    line_h = max(h for _, h in sizes) * 1.35
    # words: runs of pieces up to one that ends a word; punctuation sticks to the word before it
    words, cur = [], []
    for i, tok in enumerate(rel.tokens):
        cur.append(i)
        nxt = rel.tokens[i + 1] if i + 1 < len(rel.tokens) else ""
        if ends[i] and not (nxt and not any(ch.isalnum() for ch in nxt)):
            words.append(cur)
            cur = []
    if cur:
        words.append(cur)
    x, y = 0.0, 0.95
    for word in words:
        w = sum(sizes[i][0] for i in word)
        if x > 0 and x + w > 1.0:
            x, y = 0.0, y - line_h
        for i in word:
            artists[i].set_position((x, y))
            x += sizes[i][0]
        x += space


def render(image, relevances: Sequence[tuple[str, Relevance]], out_png: str | os.PathLike, *,
           cols: int | None = None, title: str | None = None, mean=None, std=None) -> Path:
    """Write the Fig. 4-style figure: the face, then per text its heatmap (jet, blue = low, red =
    high) over the face, titled with the given title and the cosine, and the text below with each
    token shaded green by its relevance. Written atomically as PNG; returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from clefctl.paths import atomic_path

    if not relevances:
        raise ClefError("nothing to render: no texts were explained")
    size = relevances[0][1].image_map.shape[0]
    # PIL images are shown at >= 224 px (same crop as the model's view); the map is stretched over it.
    face = display_image(image, size if isinstance(image, torch.Tensor) else max(size, 224), mean, std)
    n = len(relevances) + 1
    cols = max(1, min(cols or 6, n))
    rows = math.ceil(n / cols)
    cell_w, img_h, txt_h = 2.1, 2.1, 0.8
    if title:  # wrapped to the figure's width (10 pt: about 11 characters per inch)
        import textwrap

        title = "\n".join(textwrap.wrap(title, width=max(20, int(cols * cell_w * 11)), break_long_words=True))
    title_h = 0.45 + 0.22 * title.count("\n") if title else 0.0
    fig = Figure(figsize=(cols * cell_w, rows * (img_h + txt_h) + title_h), dpi=100)
    canvas = FigureCanvasAgg(fig)
    grid = fig.add_gridspec(rows * 2, cols, height_ratios=[img_h, txt_h] * rows,
                            hspace=0.12, wspace=0.08, left=0.02, right=0.98, bottom=0.01,
                            top=1 - (title_h / (rows * (img_h + txt_h) + title_h) if title else 0.0) - 0.03)
    if title:
        fig.suptitle(title, fontsize=10)
    renderer = canvas.get_renderer()
    ax = fig.add_subplot(grid[0, 0])
    ax.imshow(face)
    ax.set_title("input\n", fontsize=7.5, linespacing=1.1)
    ax.set_axis_off()
    fig.add_subplot(grid[1, 0]).set_axis_off()
    for k, (name, rel) in enumerate(relevances, start=1):
        r, c = divmod(k, cols)
        ax = fig.add_subplot(grid[2 * r, c])
        ax.imshow(face)
        ax.imshow(rel.image_map, cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0,
                  extent=(-0.5, face.shape[1] - 0.5, face.shape[0] - 0.5, -0.5))
        short = name if len(name) <= TITLE_CHARS else name[:TITLE_CHARS - 3].rstrip() + "..."
        ax.set_title(f"{short}\ncos {rel.similarity:+.3f}", fontsize=7.5, linespacing=1.1)
        ax.set_axis_off()
        _draw_tokens(fig.add_subplot(grid[2 * r + 1, c]), renderer, rel, fontsize=7)
    out = Path(out_png)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    return out
