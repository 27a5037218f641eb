"""Cheap face finding along a video: full detection on key frames, template following between.

On a key frame the :class:`~clefctl.data.faces.detect.Detector` searches the whole frame; a
landmark detector (YuNet) gives each face its 5 landmarks, smoothed against the same face's
landmarks on the previous key frame (:func:`smooth_landmarks`) so that a steady face does not
jitter, and the Haar detector's faces get their eye-levelling angle from the eye cascade. In between,
each face is followed by normalised cross-correlation of a small grey template of its key-frame
appearance over a window around its last box (a fraction of a millisecond per face). A face
whose match falls below ``min_match`` is dropped and the next frame becomes a key frame, so a
face that left or turned away is searched for again at once; a new face is found at the next
key frame (at most ``every - 1`` frames late). A followed face's landmarks move with its box, so
no frame is left unaligned.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np

from clefctl.data.faces.align import EyeAligner
from clefctl.data.faces.detect import Detection, Detector
from clefctl.data.faces.template import eye_angle

_TEMPLATE = 24          # template side in pixels
_SEARCH = 0.6           # search window margin on each side, as a fraction of the box
_STEADY = 0.04          # landmark motion (fraction of the eye distance) below which it is mostly jitter


def smooth_landmarks(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """The key frame's landmarks ``new`` blended with the same face's previous ones ``old``
    (5 x 2 each): a change small against the eye distance (jitter of a steady face) moves the
    landmarks by a third of it; a change of ``_STEADY`` x 3 the eye distance or more is followed
    at once (a real movement is never lagged)."""
    d = max(float(np.hypot(*(new[1] - new[0]))), 1.0)
    move = float(np.abs(new - old).max()) / d
    w = min(1.0, max(1.0 / 3.0, move / (3.0 * _STEADY)))
    return old + w * (new - old)


@dataclass
class Found:
    """A face on one frame: the detection, the eye-levelling angle and whether the detector
    itself found it on this frame (``keyed``) or it was followed from the last key frame."""

    detection: Detection
    angle: float
    keyed: bool


@dataclass
class _Followed:
    found: Found
    template: np.ndarray          # grey patch of the key frame, its longer side _TEMPLATE pixels
    key_confidence: float         # the detector's confidence on the key frame
    missed_keys: int = 0          # key frames in a row on which the detector missed it


def _iou(a, b) -> float:
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw, ih = min(ax1, bx1) - max(a[0], b[0]), min(ay1, by1) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _subpixel(line: np.ndarray, at: int) -> float:
    """The offset (-0.5 .. 0.5) of a correlation peak from its whole-pixel position ``at``, from the
    parabola through the peak and its two neighbours in ``line`` (0 at an edge of the search)."""
    if at == 0 or len(line) < 3:
        return 0.0
    left, mid, right = (float(v) for v in line[:3])
    den = left - 2.0 * mid + right
    return float(np.clip(0.5 * (left - right) / den, -0.5, 0.5)) if den < 0 else 0.0


def _template(grey: np.ndarray, box) -> np.ndarray | None:
    x, y, w, h = (int(round(v)) for v in box)
    H, W = grey.shape
    x0, y0, x1, y1 = max(0, x), max(0, y), min(W, x + w), min(H, y + h)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return None
    s = _TEMPLATE / max(w, h)  # the scale the search window gets in _follow: no squashing of a tall box
    return cv2.resize(grey[y0:y1, x0:x1], (max(4, round((x1 - x0) * s)), max(4, round((y1 - y0) * s))),
                      interpolation=cv2.INTER_AREA)


class KeyframeDetector:
    """Faces of consecutive video frames: :meth:`__call__` per frame, :meth:`reset` per video.

    ``every``: frames from one key frame to the next (1: detect on every frame). ``align``:
    find the eyes on key frames. ``min_match``: the correlation below which a followed face is
    lost. A face the detector misses on one key frame is still followed when its template
    matches at least ``keep_match`` (a face is not dropped for one missed detection); missed on
    two key frames in a row, it is dropped. ``seconds`` holds the time spent in detection and
    alignment (``detect``, ``align``, ``follow``)."""

    def __init__(self, detector: Detector, *, every: int = 5, aligner: EyeAligner | None = None,
                 min_match: float = 0.55, keep_match: float = 0.75):
        self.detector = detector
        self.every = max(1, int(every))
        self.aligner = aligner
        self.min_match = float(min_match)
        self.keep_match = float(keep_match)
        self.seconds = {"detect": 0.0, "align": 0.0, "follow": 0.0}
        self.key_frames = 0
        self.reset()

    def reset(self) -> None:
        self._faces: list[_Followed] = []
        self._since_key = 0
        self._force_key = True

    def __call__(self, rgb: np.ndarray, grey: np.ndarray | None = None) -> list[Found]:
        if grey is None:
            grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        if self._force_key or self._since_key >= self.every:
            faces = self._key_frame(rgb, grey)
        else:
            faces = self._follow_all(grey)
        return [f.found for f in faces]

    # -- key frames -------------------------------------------------------------------------

    def _key_frame(self, rgb: np.ndarray, grey: np.ndarray) -> list[_Followed]:
        t0 = time.perf_counter()
        dets = self.detector.detect(rgb, grey)
        t1 = time.perf_counter()
        self.seconds["detect"] += t1 - t0
        self.key_frames += 1
        kept: list[_Followed] = []
        for det in dets:
            angle = 0.0
            if det.landmarks is not None:
                prev = self._previous(det.box)
                if prev is not None and prev.found.detection.landmarks is not None:
                    det.landmarks = smooth_landmarks(det.landmarks, prev.found.detection.landmarks)
                angle = eye_angle(det.landmarks)
            elif self.aligner is not None:
                level = self.aligner.find(grey, det.box)
                prev = self._previous(det.box)
                angle = level[0] if level is not None else (prev.found.angle if prev is not None else 0.0)
            tpl = _template(grey, det.box)
            if tpl is not None:
                kept.append(_Followed(Found(det, angle, True), tpl, det.confidence))
        t2 = time.perf_counter()
        self.seconds["align"] += t2 - t1
        for old in self._faces:  # missed by the detector this time: follow it once more if it matches well
            if old.missed_keys >= 1 or any(_iou(old.found.detection.box, k.found.detection.box) > 0.3
                                           for k in kept):
                continue
            moved = self._follow(grey, old, self.keep_match)
            if moved is not None:
                moved.missed_keys = old.missed_keys + 1
                kept.append(moved)
        self.seconds["follow"] += time.perf_counter() - t2
        self._faces = kept
        self._since_key = 1
        self._force_key = False
        return kept

    def _previous(self, box) -> _Followed | None:
        """The face followed up to this key frame that ``box`` is (overlap > 0.3), or None."""
        best = max(self._faces, key=lambda f: _iou(f.found.detection.box, box), default=None)
        if best is not None and _iou(best.found.detection.box, box) > 0.3:
            return best
        return None

    # -- between key frames -----------------------------------------------------------------

    def _follow_all(self, grey: np.ndarray) -> list[_Followed]:
        t0 = time.perf_counter()
        kept = []
        for face in self._faces:
            moved = self._follow(grey, face, self.min_match)
            if moved is None:
                self._force_key = True       # lost: search the whole next frame
            else:
                kept.append(moved)
        self.seconds["follow"] += time.perf_counter() - t0
        self._faces = kept
        self._since_key += 1
        return kept

    def _follow(self, grey: np.ndarray, face: _Followed, threshold: float) -> _Followed | None:
        x, y, w, h = face.found.detection.box
        s = _TEMPLATE / max(w, h)
        H, W = grey.shape
        mx, my = _SEARCH * w, _SEARCH * h
        x0, y0 = max(0, int(x - mx)), max(0, int(y - my))
        x1, y1 = min(W, int(np.ceil(x + w + mx))), min(H, int(np.ceil(y + h + my)))
        if x1 - x0 < w * 0.5 or y1 - y0 < h * 0.5:
            return None
        roi = cv2.resize(grey[y0:y1, x0:x1], (max(_TEMPLATE, round((x1 - x0) * s)),
                                                max(_TEMPLATE, round((y1 - y0) * s))),
                         interpolation=cv2.INTER_AREA)
        score = cv2.matchTemplate(roi, face.template, cv2.TM_CCOEFF_NORMED)
        _, best, _, (bx, by) = cv2.minMaxLoc(score)
        if not np.isfinite(best) or best < threshold:
            return None
        # the peak to a fraction of a pixel (a parabola through it and its neighbours): one pixel of
        # the reduced search is max(w, h) / 24 source pixels, too coarse for the landmarks that follow
        bx, by = bx + _subpixel(score[by, max(bx - 1, 0):bx + 2], bx), by + _subpixel(score[max(by - 1, 0):by + 2, bx], by)
        box = (x0 + bx / s, y0 + by / s, w, h)
        if box[0] + w <= 0 or box[1] + h <= 0 or box[0] >= W or box[1] >= H:
            return None
        lm = face.found.detection.landmarks
        if lm is not None:
            lm = lm + np.array([box[0] - x, box[1] - y])
        moved = Detection(box, float(face.key_confidence * min(1.0, max(0.0, best))),
                          face.found.detection.score, lm)
        return _Followed(Found(moved, face.found.angle, False), face.template, face.key_confidence,
                         face.missed_keys)
