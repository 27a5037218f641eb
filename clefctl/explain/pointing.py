"""Pointing accuracy on synthetic faces: does the hottest patch of an AU's map fall on its region?

The synthetic-au generator records, per image, the AU intensities and the boxes of the face
parts it drew (:func:`clefctl.data.synthetic.au_regions` maps AUs to parts). :func:`pointing_accuracy`
explains images where an AU is active against the AU's label-name text and scores the map
against the AU's region; :func:`pointing_summary` averages over the AUs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from clefctl.errors import ClefError
from clefctl.explain.relevance import model_input, relevancy_pairs

#: The AUs the pointing check uses by default (one per face region: mouth corners, brows,
#: nose, jaw, plus eyes and lips).
POINTING_AUS: tuple[str, ...] = ("AU12", "AU4", "AU9", "AU26", "AU6", "AU1", "AU15", "AU24")
NAME_TEMPLATE = "a photo of a person with {name}."


def eval_geometry(width: int, height: int, size: int) -> tuple[float, float, int, int]:
    """(sx, sy, left, top) of the eval transform: resize the shorter side to ``size`` as
    torchvision's Resize does, then center crop ``size``; x_in = x * sx - left."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    left = int(round((new_w - size) / 2.0))
    top = int(round((new_h - size) / 2.0))
    return new_w / width, new_h / height, left, top


def region_mask(boxes: Sequence[Sequence[float]], width: int, height: int, size: int) -> np.ndarray:
    """(size, size) bool: pixels of the model input whose centre lies in any box
    ``[x0, y0, x1, y1]`` (given in pixels of the width x height image)."""
    sx, sy, left, top = eval_geometry(width, height, size)
    mask = np.zeros((size, size), dtype=bool)
    centres = np.arange(size) + 0.5
    for x0, y0, x1, y1 in boxes:
        bx0, bx1 = x0 * sx - left, x1 * sx - left
        by0, by1 = y0 * sy - top, y1 * sy - top
        cols = (centres >= bx0) & (centres < bx1)
        rows = (centres >= by0) & (centres < by1)
        mask |= rows[:, None] & cols[None, :]
    return mask


def _au_key(au: str) -> str:
    s = str(au).strip().upper()
    return s if s.startswith("AU") else f"AU{s}"


def pointing_texts(aus: Sequence[str], prompts=None, au_names: dict | None = None) -> dict[str, str]:
    """The label-name text of each AU: the prompt set's name template and name when it has the
    AU, else the generator's AU name in "a photo of a person with {name}."."""
    out = {}
    by_id = {c.id: c.name for c in prompts.classes} if prompts is not None else {}
    template = prompts.templates["name"][0] if prompts is not None and "name" in prompts.templates else NAME_TEMPLATE
    for au in aus:
        if au in by_id:
            out[au] = template.format(name=by_id[au])
        elif au_names and au in au_names:
            out[au] = NAME_TEMPLATE.format(name=au_names[au])
        else:
            raise ClefError(f"no label name for {au}", hint="use AUs the synthetic generator draws")
    return out



def _annotated_faces(root: Path, subjects: Sequence[str] | None):
    """(faces, the generator's AU names) of a synthetic-au set, through the synthetic package's
    annotated-faces iterator (the sidecar is read there, once)."""
    from clefctl.data.synthetic import annotated_faces, read_sidecar

    meta = read_sidecar(root)
    if meta.get("kind") != "synthetic-au":
        raise ClefError(f"pointing needs a synthetic-au set, this is {meta.get('kind')!r}", path=root,
                        hint="generate one with `clefctl data synth` or pass --dataset-root")
    return list(annotated_faces(root, subjects=subjects, meta=meta)), meta.get("au_names")


class _PatchGrid:
    """The patch grid of the model input (``size`` px square, ``grid`` (rows, columns) of patches)."""

    def __init__(self, size: int, grid: Sequence[int]):
        self.shape = (int(grid[0]), int(grid[1]))
        self.rows = np.linspace(0, size, self.shape[0] + 1).round().astype(int)
        self.cols = np.linspace(0, size, self.shape[1] + 1).round().astype(int)

    def overlap(self, mask: np.ndarray) -> np.ndarray:
        """(rows, columns) bool: does patch (r, c) touch the pixel mask."""
        rows, cols = self.rows, self.cols
        return np.array([[mask[rows[r]:rows[r + 1], cols[c]:cols[c + 1]].any() for c in range(self.shape[1])]
                         for r in range(self.shape[0])])


class _AUPointing:
    """Hits, chance levels and relevancy mass of one AU's images, explained in batches."""

    def __init__(self, model, text: str, grid: _PatchGrid, bar, start_layer: int, batch_size: int):
        self.model, self.text, self.grid, self.bar = model, text, grid, bar
        self.start_layer, self.batch_size = start_layer, batch_size
        self.hits, self.n = 0, 0
        self.chance: list[float] = []
        self.chance_patches: list[float] = []
        self.mass: list[float] = []
        self.pending: list[tuple[torch.Tensor, np.ndarray]] = []

    def add(self, img, boxes: list) -> None:
        """One image (PIL RGB) and the boxes of the AU's region in its pixels."""
        mask = region_mask(boxes, img.width, img.height, self.model.image_size)
        self.chance.append(float(mask.mean()))
        self.chance_patches.append(float(self.grid.overlap(mask).mean()))
        self.pending.append((model_input(self.model, img), mask))
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        rels = relevancy_pairs(self.model, torch.stack([p for p, _ in self.pending]),
                               [self.text] * len(self.pending), start_layer=self.start_layer,
                               batch_size=self.batch_size)
        for rel, (_, mask) in zip(rels, self.pending):
            r, c = rel.hottest_patch()
            self.hits += bool(self.grid.overlap(mask)[r, c])
            total = float(rel.image_map.sum())
            self.mass.append(float((rel.image_map * mask).sum()) / total if total > 0 else float(mask.mean()))
            self.n += 1
        self.bar.advance(len(self.pending))
        self.pending.clear()

    def result(self) -> dict:
        def mean(values: list[float]) -> float:
            return float(np.mean(values)) if values else float("nan")

        return {"hit_rate": self.hits / self.n if self.n else float("nan"), "chance": mean(self.chance),
                "chance_patches": mean(self.chance_patches), "mass": mean(self.mass),
                "hits": self.hits, "n": self.n, "text": self.text}


def _draw_images(faces: list, aus: Sequence[str], n_images: int, seed: int) -> list[tuple[str, list]]:
    """Per AU, up to ``n_images`` of the faces where it is active (intensity >= the set's threshold)."""
    rng = np.random.default_rng(seed)
    plan = []
    for au in aus:
        cand = [f for f in faces if f.au_labels.get(au, 0)]
        if len(cand) > n_images:
            cand = [cand[i] for i in sorted(rng.choice(len(cand), n_images, replace=False))]
        plan.append((au, cand))
    return plan


def pointing_accuracy(model, root: str | os.PathLike, aus: Sequence[str] = POINTING_AUS,
                      n_images: int = 50, *, prompts=None, subjects: Sequence[str] | None = None,
                      seed: int = 0, start_layer: int = 0, batch_size: int = 16,
                      progress: bool = False) -> dict[str, dict]:
    """Does the hottest patch of the AU's label-name map fall on the AU's face region?

    ``root``: a synthetic-au set (its ``synthetic.json`` sidecar gives the AU intensities and the
    face-part boxes of every image; :func:`clefctl.data.synthetic.au_regions` maps AUs to parts).
    For each AU, up to ``n_images`` images where it is active (intensity >= the occurrence
    threshold; only ``subjects`` when given, e.g. a fold's test subjects) are drawn with ``seed``;
    the text is the AU's label name (``prompts``' name template, default "a photo of a person with
    {name}."). The region is the union of the AU's part boxes, mapped into the model's input
    (resize shorter side + center crop).

    A hit (the pointing game of Zhang et al., ECCV 2016, whose tolerance is here one patch): the
    hottest patch overlaps the region. The map has one value per patch, so this is the finest
    answer it can give; on a coarse grid (clef-tiny: 4x4 patches of 16 px) a small region such as
    the nose may contain no patch centre at all. ``chance_patches``: the mean fraction of patches
    that overlap the region (what a uniformly random patch would score); ``chance``: the mean
    fraction of the input the region covers. ``mass``: the mean share of the upsampled map's
    relevancy that lies inside the region, to compare with ``chance``.

    Returns ``{AU: {"hit_rate", "chance_patches", "chance", "mass", "hits", "n", "text"}}``;
    unreadable images are skipped and counted in ``"skipped"``.
    """
    from clefctl.data.images import read_rgb
    from clefctl.data.synthetic import au_regions
    from clefctl.ui import progress_bar

    root = Path(root)
    faces, au_names = _annotated_faces(root, subjects)
    regions = au_regions()
    aus = [_au_key(a) for a in aus]
    unknown = [a for a in aus if a not in regions]
    if unknown:
        raise ClefError(f"the synthetic generator does not draw {', '.join(unknown)}",
                        hint=f"use some of {', '.join(regions)}")
    texts = pointing_texts(aus, prompts, au_names)
    grid = _PatchGrid(model.image_size, model.clip.visual.grid_size)
    plan = _draw_images(faces, aus, n_images, seed)
    total = sum(len(c) for _, c in plan)
    results: dict[str, dict] = {}
    skipped = 0
    with progress_bar("pointing", total, enabled=progress and total > 0, transient=True) as bar:
        for au, cand in plan:
            point = _AUPointing(model, texts[au], grid, bar, start_layer, batch_size)
            for face in cand:
                try:
                    img = read_rgb(face.path)
                except (OSError, ValueError):
                    skipped += 1
                    bar.advance(1)
                    continue
                point.add(img, face.au_boxes(au))
            point.flush()
            results[au] = point.result()
    if skipped:
        for r in results.values():
            r["skipped"] = skipped
    return results


def pointing_summary(results: dict[str, dict]) -> dict:
    """Means over the AUs with images of hit rate, its chance (patches), mass and its chance (area)."""
    rows = [r for r in results.values() if r["n"]]
    keys = {"mean_hit_rate": "hit_rate", "mean_chance_patches": "chance_patches", "mean_mass": "mass",
            "mean_chance": "chance"}
    if not rows:
        return {**{k: float("nan") for k in keys}, "n": 0}
    return {**{k: float(np.mean([r.get(v, float("nan")) for r in rows])) for k, v in keys.items()},
            "n": int(sum(r["n"] for r in rows))}
