"""Contact sheets of a synthetic set (or any DatasetBundle): sample faces with their captions,
drawn by :func:`clefctl.plots.thumbnail_grid`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from clefctl.data.synthetic.sidecar import read_sidecar, umask
from clefctl.errors import ClefError


def _au_caption(active: Sequence[str]) -> str:
    if not len(active):
        return "no AU"
    return "AU " + "+".join(str(a).upper().removeprefix("AU") for a in active)


def _bundle_items(bundle) -> list[tuple[Path, str, str, str]]:
    root = Path(getattr(bundle, "root", "."))
    items = []
    for smp in bundle.samples:
        if not smp.path:
            continue
        path = Path(smp.path)
        path = path if path.is_absolute() else root / path
        if bundle.task == "fer" and smp.label is not None:
            cls = bundle.classes[smp.label]
            items.append((path, cls, cls, smp.id))
        else:
            on = [c for c, v in zip(bundle.classes, smp.aus if smp.aus is not None else [])
                  if v >= 0.5]
            items.append((path, smp.activity or "", smp.id, _au_caption(on)))
    return items


def _sheet_items(source) -> tuple[list[tuple[Path, str, str, str]], str]:
    """(image path, group key, caption line 1, caption line 2) for every image, and the task."""
    if hasattr(source, "samples"):  # a DatasetBundle
        return _bundle_items(source), source.task
    root = Path(source)
    meta = read_sidecar(root)
    items = []
    if meta.get("kind") == "synthetic-fer":
        for e in meta["images"]:
            items.append((root / e["path"], e["expression"], e["expression"],
                          f"{e['name'].rsplit('.', 1)[0]} {e['identity']}"))
        return items, "fer"
    for e in meta["images"]:
        on = [k for k, v in e["au_intensity"].items() if v >= meta["occurrence_threshold"]]
        items.append((root / e["path"], e["task"], f"{e['subject']} {e['task']} {e['frame']}",
                      _au_caption(on)))
    return items, "au"


def _pick(items: list, task: str, n: int, seed: int) -> tuple[list[int], int | None]:
    """Which items to show: FER classes in turn (one column per class), AU items at random."""
    rng = np.random.default_rng(seed)
    if task != "fer":
        return sorted(int(i) for i in rng.choice(len(items), n, replace=False)), None
    groups: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(it[1], []).append(i)
    queues = [list(rng.permutation(g)) for g in groups.values()]
    picked: list[int] = []
    while len(picked) < n:
        for q in queues:
            if q and len(picked) < n:
                picked.append(int(q.pop()))
    return picked, len(queues)


def contact_sheet(root_or_bundle, out_png: str | os.PathLike, n: int = 24, seed: int = 0,
                  cols: int | None = None, scale: int = 2) -> Path:
    """Write a PNG grid of ``n`` sample faces, enlarged ``scale`` x, with captions.

    ``root_or_bundle``: the root of a generated synthetic set (read through its synthetic.json)
    or a DatasetBundle. AU sets are captioned with subject, task, frame and the active AUs; FER
    sets with the expression, image name and identity (classes drawn in turn, one column per
    class unless ``cols`` says otherwise; AU sets default to 6 columns).
    """
    from clefctl.data.images import read_rgb
    from clefctl.plots import Tile, thumbnail_grid

    items, task = _sheet_items(root_or_bundle)
    if not items:
        raise ClefError("no images to show in the contact sheet")
    n = max(1, min(int(n), len(items)))
    picked, class_cols = _pick(items, task, n, seed)
    cols = cols or class_cols
    thumbs = []
    for i in picked:
        try:
            thumbs.append(read_rgb(items[i][0]))
        except (OSError, ValueError):
            thumbs.append(None)
    side = max((t.size[0] for t in thumbs if t is not None), default=100) * scale
    tiles = [Tile(thumb, (items[i][2], items[i][3])) for i, thumb in zip(picked, thumbs)]
    out = thumbnail_grid([(None, tiles)], out_png, cols=max(1, min(cols or 6, n)), tile_px=side,
                         pad=6, font_px=max(11, side // 16), wrap=True)
    os.chmod(out, 0o666 & ~umask())
    return out
