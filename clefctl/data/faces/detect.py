"""Face detection behind one small interface.

:class:`Detector` is what the rest of clefctl calls (``detect(rgb) -> [Detection]``, largest
first, boxes in source pixels, a 0-1 confidence), so a stronger detector can be added later
without touching alignment, tracking, ``predict`` or ``embed``. :class:`HaarDetector` is the
offline default: OpenCV's bundled frontal-face Haar cascades (``cv2.data.haarcascades``), run on
a reduced grey copy of the image whose scale puts the smallest face wanted at about the
cascade's own window, with the boxes mapped back.
"""

from __future__ import annotations

import abc
import math
import os
from dataclasses import dataclass

import cv2
import numpy as np

from clefctl.data.faces.track import iou_matrix
from clefctl.errors import ClefError

_SMALL_SIDE = 128      # images with a shorter side below this are upscaled for detection
_SMALL_PAD = 0.25      # ... and padded (edge replicate) so tightly cropped faces fit the window
_MAX_SIDE = 1024       # larger images are always downscaled at least to this (boxes mapped back)
_WINDOW = 24           # the frontal-face cascade's window side in pixels


DARK_GAMMA = 0.45      # the dark-face search's gamma: grey levels v -> 255 * (v / 255) ** 0.45
_DARK_LUT = (np.linspace(0.0, 1.0, 256) ** DARK_GAMMA * 255.0).round().astype(np.uint8)


@dataclass
class Detection:
    """One face: ``box`` (x, y, w, h; float source pixels), ``confidence`` in [0, 1], the
    detector's own ``score`` (for the Haar cascades: the number of merged neighbour windows; for
    YuNet: its score) and, from a landmark detector, ``landmarks`` (5 x 2 source pixels: the
    subject's right eye, left eye, nose tip, right and left mouth corner; None from Haar)."""

    box: tuple[float, float, float, float]
    confidence: float
    score: float
    landmarks: np.ndarray | None = None

    def int_box(self, shape) -> tuple[int, int, int, int]:
        """The box rounded and clipped to an image of ``shape`` (H, W, ...)."""
        return clip_box(self.box, shape)


def clip_box(box, shape) -> tuple[int, int, int, int]:
    """``box`` (x, y, w, h) rounded to whole pixels and clipped to an image of ``shape``."""
    H, W = shape[:2]
    x0, y0 = max(0, round(box[0])), max(0, round(box[1]))
    x1, y1 = min(W, round(box[0] + box[2])), min(H, round(box[1] + box[3]))
    return x0, y0, max(1, x1 - x0), max(1, y1 - y0)


def neighbour_confidence(neighbours: float) -> float:
    """The Haar cascade's neighbour count mapped to [0, 1] (``1 - exp(-n / 8)``): a monotone
    heuristic, 0.3 at the 3 neighbours of a weak hit, 0.7 at 10, 0.99 at 40. It is not a
    calibrated probability and not comparable with OpenFace's landmark confidence."""
    return float(1.0 - math.exp(-max(0.0, float(neighbours)) / 8.0))


def load_cascade(name: str) -> cv2.CascadeClassifier:
    """One of OpenCV's bundled Haar cascades by file name."""
    path = os.path.join(cv2.data.haarcascades, name)
    clf = cv2.CascadeClassifier(path)
    if clf.empty():
        raise ClefError("cannot load the OpenCV Haar cascade", path=path,
                        hint="reinstall opencv-python-headless")
    return clf


class Detector(abc.ABC):
    """What finds faces. Implementations return every face, largest first, in source pixels."""

    name = "detector"
    min_confidence = 0.0      # faces scored below this are not faces

    @abc.abstractmethod
    def detect(self, rgb: np.ndarray, grey: np.ndarray | None = None) -> list[Detection]:
        """Faces in an HxWx3 uint8 RGB image (``grey``: its grey version, when the caller has it)."""

    def describe(self) -> dict:
        """A JSON-able description (reports, ``predict --json``)."""
        return {"name": self.name}


class HaarDetector(Detector):
    """OpenCV's frontal-face Haar cascade ("default"; "alt2" as a fallback when it finds
    nothing and ``fallback`` is on) on a reduced, histogram-equalised grey copy.

    ``min_face``: the smallest face side as a fraction of the image's shorter side (or
    ``min_size`` pixels). ``window``: when set, the copy is scaled so that this smallest face
    spans ``window`` cascade windows (1.1: just above the 24-pixel window), which is what makes
    detection cheap on video; None keeps full resolution up to 1024 pixels. Images with a
    shorter side below 128 pixels are upscaled and padded so that tight face crops are found.
    ``equalise``: the contrast normalisation of the copy, ``"hist"`` (global histogram
    equalisation, what :class:`FaceCropper` uses) or ``"clahe"`` (contrast-limited, in 8 x 8
    tiles: it keeps faces against bright or uneven backgrounds, where the global one flattens them).
    ``dark``: a second search of a gamma-brightened copy (:data:`DARK_GAMMA`), for the darker-skinned
    faces the cascades miss most: ``"off"``, ``"fallback"`` (only when the first search finds no face)
    or ``"merge"`` (always; its faces that do not overlap the first search's are added).
    """

    name = "opencv-haar"

    def __init__(self, *, scale_factor: float = 1.1, min_neighbors: int = 5, min_face: float = 1 / 20,
                 min_size: int | None = None, window: float | None = None, fallback: bool = True,
                 equalise: str = "hist", dark: str = "off"):
        if scale_factor <= 1.0:
            raise ClefError(f"the detector's scale factor must be > 1, got {scale_factor}")
        if not 0 < min_face <= 1:
            raise ClefError(f"the smallest face must be a fraction in (0, 1], got {min_face}")
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.min_face = float(min_face)
        self.min_size = min_size
        self.window = window
        self.fallback = bool(fallback)
        if equalise not in ("hist", "clahe"):
            raise ClefError(f"unknown contrast normalisation {equalise!r}", hint="use hist or clahe")
        self.equalise = equalise
        self._clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)) if equalise == "clahe" else None
        self._cascades = [load_cascade("haarcascade_frontalface_default.xml")]
        if fallback:
            self._cascades.append(load_cascade("haarcascade_frontalface_alt2.xml"))
        if dark not in ("off", "fallback", "merge"):
            raise ClefError(f"unknown dark-face search {dark!r}", hint="use off, fallback or merge")
        self.dark = dark

    @classmethod
    def for_video(cls, dark: bool = True) -> "HaarDetector":
        """The video setting: scale factor 1.2, faces from 1/8 of the shorter side, on a copy
        reduced so that such a face spans 1.1 cascade windows; CLAHE; no fallback cascade; the
        dark-face search merged in (``dark=False``: without it)."""
        return cls(scale_factor=1.2, min_neighbors=4, min_face=1 / 8, window=1.1, fallback=False,
                   equalise="clahe", dark="merge" if dark else "off")

    @classmethod
    def for_photos(cls) -> "HaarDetector":
        """The photo setting: scale factor 1.1, faces from 1/20 of the shorter side, at full
        resolution (up to 1024 pixels), CLAHE, the fallback cascade when the first finds none, the
        dark-face search merged in."""
        return cls(equalise="clahe", dark="merge")

    @classmethod
    def for_frames(cls) -> "HaarDetector":
        """The recorded-frame setting (``clefctl data prepare --dataset``: BP4D, DISFA, one subject
        filling much of a camera frame): scale factor 1.1, faces from 1/6 of the shorter side, on a
        copy reduced so that such a face spans 1.25 cascade windows (~150x200 pixels for a
        1040x1392 frame), CLAHE, the fallback cascade when the first finds none, then the dark-face
        search when neither does."""
        return cls(scale_factor=1.1, min_neighbors=5, min_face=1 / 6, window=1.25, fallback=True,
                   equalise="clahe", dark="fallback")

    def describe(self) -> dict:
        return {"name": self.name, **({"min_confidence": self.min_confidence} if self.min_confidence else {}),
                "scale_factor": self.scale_factor, "min_neighbors": self.min_neighbors,
                "min_face": round(self.min_face, 4), "min_size": self.min_size, "window": self.window,
                "fallback": self.fallback, "equalise": self.equalise, "dark": self.dark}

    def _smallest_face(self, shape) -> float:
        return float(self.min_size) if self.min_size is not None else min(shape[:2]) * self.min_face

    def detection_image(self, grey: np.ndarray) -> tuple[np.ndarray, float, int]:
        """The equalised grey copy searched, its scale and padding (copy = source * scale + pad)."""
        h, w = grey.shape
        scale, pad = 1.0, 0
        if min(h, w) < _SMALL_SIDE:
            scale = _SMALL_SIDE / min(h, w)
            grey = cv2.resize(grey, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_CUBIC)
            pad = round(_SMALL_PAD * _SMALL_SIDE)
            grey = cv2.copyMakeBorder(grey, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        else:
            scale = min(1.0, _MAX_SIDE / max(h, w))
            if self.window is not None:
                scale = min(scale, self.window * _WINDOW / max(1.0, self._smallest_face(grey.shape)))
            if scale < 1.0:
                grey = cv2.resize(grey, (max(1, round(w * scale)), max(1, round(h * scale))),
                                  interpolation=cv2.INTER_AREA)
        return (self._clahe.apply(grey) if self._clahe is not None else cv2.equalizeHist(grey)), scale, pad

    def _search(self, work: np.ndarray, min_side: int) -> list:
        """[(rect in ``work``'s pixels, neighbours)] of the first cascade that finds any, largest first."""
        for k, clf in enumerate(self._cascades):
            neighbours = self.min_neighbors if k == 0 else max(1, self.min_neighbors - 2)
            rects, counts = clf.detectMultiScale2(work, scaleFactor=self.scale_factor, minNeighbors=neighbours,
                                                  minSize=(min_side, min_side))
            if len(rects):
                order = sorted(range(len(rects)), key=lambda i: -int(rects[i][2] * rects[i][3]))
                return [(rects[i], float(counts[i])) for i in order]
        return []

    def detect_raw(self, grey: np.ndarray):
        """``(copy, scale, pad, [(rect in copy pixels, neighbours)])``, largest first (the copy is the
        first search's; the dark-face search's copy has the same scale and padding)."""
        work, scale, pad = self.detection_image(grey)
        min_side = max(20, round(self._smallest_face(grey.shape) * scale))
        found = self._search(work, min_side)
        if self.dark == "merge" or (self.dark == "fallback" and not found):
            # brightened at full resolution, then reduced: brightening the reduced copy finds fewer faces
            bright, _, _ = self.detection_image(cv2.LUT(grey, _DARK_LUT))
            extra = self._search(bright, min_side)
            if extra and found:  # keep the second search's faces that the first did not find
                iou = iou_matrix(np.array([f[0] for f in extra]), np.array([g[0] for g in found]))
                extra = [f for f, row in zip(extra, iou) if row.max() < 0.3]
            if extra:
                found = sorted(found + extra, key=lambda f: -int(f[0][2] * f[0][3]))
        return work, scale, pad, found

    @staticmethod
    def to_source(rect, scale: float, pad: int) -> tuple[float, float, float, float]:
        x, y, w, h = (float(v) for v in rect)
        return (x - pad) / scale, (y - pad) / scale, w / scale, h / scale

    def detect(self, rgb: np.ndarray, grey: np.ndarray | None = None) -> list[Detection]:
        if grey is None:
            grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        _, scale, pad, found = self.detect_raw(grey)
        out = [Detection(self.to_source(rect, scale, pad), neighbour_confidence(n), n) for rect, n in found]
        return [d for d in out if d.confidence >= self.min_confidence]
