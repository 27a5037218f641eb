"""Face ids along a video: detections associated frame to frame by box overlap and appearance,
tracks kept through short gaps, and a face that leaves and comes back given its old id when its
appearance says so.

Per frame (:meth:`Tracker.update`):

1. **Overlap.** Tracks seen within ``max_gap`` seconds are matched to the detections by the
   Hungarian method on ``IoU + 0.5 * appearance agreement`` over pairs with ``IoU >= iou_min``.
2. **Appearance.** Detections left over are matched to the tracks left over (not seen for a while,
   or that moved too far to overlap) by appearance alone, when the cosine similarity of the
   detection's feature and the track's mean feature reaches the re-identification threshold.
3. **New ids** for the rest, numbered from 0 in order of first appearance (left to right within a
   frame).

A track's feature is the mean of all its faces' features (renormalised), so that it stands for
the person across expressions rather than for the last frame. The threshold calibrates itself
within a video: a face and the track of *another* face on the same frame are two people (the
"different" sample), a face and its own track after an overlap match of ``IoU >= 0.5`` one person
(the "same" sample); once both samples hold 3 values the threshold is their midpoint. Before,
``reid_threshold`` applies. Features are unit vectors (the face pipeline's appearance: colour
histograms of the crop, joined with the model's image embedding when a model runs).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np

_BIG = 1e6


@dataclass
class Track:
    """One face id: its last box and time, the mean of its appearance features, its hits."""

    id: int
    box: tuple[float, float, float, float]
    last_seen: float
    feature: np.ndarray | None = None
    hits: int = 1
    total: np.ndarray | None = None      # the sum of its features (feature = total, renormalised)


@dataclass
class _Running:
    n: int = 0
    mean: float = 0.0

    def add(self, values) -> None:
        for v in np.atleast_1d(values).tolist():
            self.n += 1
            self.mean += (float(v) - self.mean) / self.n


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (n, 4: x, y, w, h) with every box of ``b`` (m, 4)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    ax1, ay1 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    bx1, by1 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax1[:, None], bx1[None]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(ay1[:, None], by1[None]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _assign(score: np.ndarray) -> list[tuple[int, int]]:
    """Pairs (row, col) maximising the total of ``score`` over entries > -_BIG / 2."""
    if score.size == 0:
        return []
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(-score)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if score[r, c] > -_BIG / 2]


class Tracker:
    """Assigns face ids within one video; :meth:`reset` starts the next video at id 0.

    ``max_gap``: seconds a track keeps matching by overlap after its face was last seen;
    ``iou_min``: the least overlap for such a match; ``reid_threshold``: the cosine similarity
    from which a face is taken for a track seen before, until the video has calibrated its own;
    ``momentum``: weight of a track's mean feature against each new one."""

    def __init__(self, *, max_gap: float = 1.0, iou_min: float = 0.2, reid_threshold: float = 0.6,
                 momentum: float = 0.9, max_tracks: int = 1024):
        self.max_gap = float(max_gap)
        self.iou_min = float(iou_min)
        self.reid_threshold = float(reid_threshold)
        self.momentum = float(momentum)
        self.max_tracks = int(max_tracks)
        importlib.import_module("scipy.optimize")   # loaded now, not on the first frame with two faces

        self.reset()

    def reset(self) -> None:
        self.tracks: list[Track] = []
        self._next_id = 0
        self._same = _Running()
        self._diff = _Running()
        self.reidentified = 0          # tracks resumed by appearance after a gap

    @property
    def threshold(self) -> float:
        """The re-identification threshold in force (calibrated or the default)."""
        if self._same.n >= 3 and self._diff.n >= 3 and self._same.mean > self._diff.mean + 0.02:
            return 0.5 * (self._same.mean + self._diff.mean)
        return self.reid_threshold

    def _agreement(self, sim: np.ndarray) -> np.ndarray:
        """Similarities mapped to 0 (a typical other face) .. 1 (a typical same face)."""
        if self._same.n >= 3 and self._diff.n >= 3 and self._same.mean > self._diff.mean + 0.02:
            return np.clip((sim - self._diff.mean) / (self._same.mean - self._diff.mean), 0.0, 1.0)
        return np.zeros_like(sim)

    def update(self, boxes, features=None, t: float = 0.0) -> list[int]:
        """Face ids for this frame's ``boxes`` (x, y, w, h) with their unit ``features`` (or
        None), seen at ``t`` seconds. Returns one id per box, in the order given."""
        n = len(boxes)
        if n == 0:
            return []
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        feats = None
        if features is not None and all(f is not None for f in features):
            feats = np.stack([np.asarray(f, np.float32) for f in features])
        ids: list[int | None] = [None] * n
        taken: set[int] = set()
        recent = [k for k, tr in enumerate(self.tracks) if t - tr.last_seen <= self.max_gap]
        sims = None
        if feats is not None:
            known = [tr.feature for tr in self.tracks]
            if self.tracks and all(f is not None for f in known):
                sims = np.stack(known) @ feats.T                       # (tracks, dets)
        # 1. overlap (plus appearance agreement) with the recent tracks
        if recent:
            iou = iou_matrix(np.array([self.tracks[k].box for k in recent]), boxes)
            score = iou.copy()
            if sims is not None:
                score += 0.5 * self._agreement(sims[recent])
            score[iou < self.iou_min] = -_BIG
            for r, c in _assign(score):
                k = recent[r]
                ids[c] = k
                taken.add(k)
                if sims is not None and iou[r, c] >= 0.5:
                    self._same.add(sims[k, c])
        # 2. appearance alone: the detections left over against the tracks left over
        rest = [j for j in range(n) if ids[j] is None]
        spare = [k for k in range(len(self.tracks)) if k not in taken]
        if rest and spare and sims is not None:
            score = sims[np.ix_(spare, rest)].astype(np.float64)
            score[score < self.threshold] = -_BIG
            for r, c in _assign(score):
                ids[rest[c]] = spare[r]
                if t - self.tracks[spare[r]].last_seen > self.max_gap:
                    self.reidentified += 1
        if sims is not None:  # calibration: faces against the tracks of the other faces on this frame
            matched = [(j, k) for j, k in enumerate(ids) if k is not None]
            self._diff.add([sims[k, j] for j, _ in matched for _, k in matched if ids[j] != k])
        # 3. new tracks, left to right
        for j in sorted((j for j in range(n) if ids[j] is None), key=lambda j: (boxes[j, 0], boxes[j, 1])):
            self.tracks.append(Track(self._next_id, tuple(boxes[j]), t, None, 0))
            self._next_id += 1
            ids[j] = len(self.tracks) - 1
        out = []
        for j, k in enumerate(ids):
            tr = self.tracks[k]
            tr.box, tr.last_seen, tr.hits = tuple(boxes[j]), t, tr.hits + 1
            if feats is not None:
                tr.total = feats[j].astype(np.float64) if tr.total is None else tr.total + feats[j]
                tr.feature = (tr.total / max(float(np.linalg.norm(tr.total)), 1e-12)).astype(np.float32)
            out.append(tr.id)
        if len(self.tracks) > self.max_tracks:  # forget the longest unseen
            self.tracks.sort(key=lambda tr: -tr.last_seen)
            del self.tracks[self.max_tracks:]
        return out
