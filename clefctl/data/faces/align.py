"""Square face crops: by the landmark template (:mod:`~clefctl.data.faces.template`) or, for the
Haar detector's faces, by eye-cascade levelling (:class:`EyeAligner`, :func:`crop_square`);
:func:`face_crop` picks; :class:`FaceCropper` crops the largest face of one image (``clefctl data
prepare IMAGES``, ``explain``).

Angles follow OpenCV: positive = counter-clockwise rotation of the image (as displayed) about
the face centre, applied so that the eye centres end up level.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image

from clefctl.data.faces.choice import DetectorChoice, resolve_detector
from clefctl.data.faces.detect import Detection, HaarDetector, clip_box, load_cascade, neighbour_confidence
from clefctl.data.faces.inputs import to_rgb_uint8
from clefctl.data.faces.template import aligned_crop, eye_angle
from clefctl.errors import ClefError

_MAX_EYE_TILT = 30.0   # degrees; a steeper eye line is taken as a wrong eye pair


class EyeAligner:
    """The eye cascade on the upper part of a face box: the angle that levels the two eyes.

    ``width``: the face box is rescaled to this many pixels wide before the search (96: small
    faces are enlarged, large ones reduced, so the cost per face is fixed); None searches the
    image as given (already a detection copy)."""

    def __init__(self, width: int | None = 96):
        self.width = width
        self._eyes = load_cascade("haarcascade_eye.xml")

    def find(self, grey: np.ndarray, box: Sequence[float], equalise: bool = True):
        """``(angle, ((lx, ly), (rx, ry)))`` in ``grey``'s pixels, or None when two plausible
        eyes are not found. ``box`` is (x, y, w, h) in ``grey``'s pixels."""
        x, y, w, h = (int(round(v)) for v in box[:4])
        H, W = grey.shape
        x0, y0, x1, y1 = max(0, x), max(0, y), min(W, x + w), min(H, y + h // 2 + h // 10)
        roi = grey[y0:y1, x0:x1]
        if roi.size == 0 or w < 2:
            return None
        s = 1.0 if self.width is None else self.width / float(w)
        if s != 1.0:
            roi = cv2.resize(roi, (max(1, round(roi.shape[1] * s)), max(1, round(roi.shape[0] * s))),
                             interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        if equalise:
            roi = cv2.equalizeHist(roi)
        ws = max(2, round(w * s))
        min_eye = max(8, ws // 10)
        eyes = self._eyes.detectMultiScale(roi, scaleFactor=1.1, minNeighbors=3,
                                           minSize=(min_eye, min_eye), maxSize=(ws // 2, ws // 2))
        centre_x = x + w / 2.0
        left, right = [], []
        for ex, ey, ew, eh in eyes:
            cx, cy = x0 + (ex + ew / 2.0) / s, y0 + (ey + eh / 2.0) / s
            if cy > y + h / 2.0:
                continue
            (left if cx < centre_x else right).append((ew * eh, cx, cy))
        if not left or not right:
            return None
        _, lx, ly = max(left)
        _, rx, ry = max(right)
        angle = math.degrees(math.atan2(ry - ly, rx - lx))
        if abs(angle) > _MAX_EYE_TILT or rx - lx < w / 6.0:
            return None
        return angle, ((lx, ly), (rx, ry))


def crop_square(rgb: np.ndarray, box: Sequence[float], angle: float = 0.0, *, margin: float = 0.25,
                size: int = 224) -> np.ndarray:
    """A ``size`` square uint8 crop around ``box`` (x, y, w, h) with ``margin`` of the box added
    on each side, rotated by ``angle`` degrees about the box centre.

    Unrotated crops are shifted to stay inside the image when they fit; what still lies outside
    the image (and the corners of rotated crops) is padded black."""
    H, W = rgb.shape[:2]
    x, y, w, h = (float(v) for v in box[:4])
    cx, cy = x + w / 2.0, y + h / 2.0
    side = max(1, round(max(w, h) * (1.0 + 2.0 * margin)))
    if angle:
        m = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)
        m[0, 2] -= cx - side / 2.0
        m[1, 2] -= cy - side / 2.0
        patch = cv2.warpAffine(rgb, m, (side, side), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    else:
        left, top = round(cx - side / 2.0), round(cy - side / 2.0)
        if side <= W:
            left = min(max(left, 0), W - side)
        if side <= H:
            top = min(max(top, 0), H - side)
        sx0, sy0 = max(left, 0), max(top, 0)
        sx1, sy1 = min(left + side, W), min(top + side, H)
        if (sx0, sy0, sx1, sy1) == (left, top, left + side, top + side):
            patch = rgb[sy0:sy1, sx0:sx1]
        else:
            patch = np.zeros((side, side, 3), np.uint8)
            if sx1 > sx0 and sy1 > sy0:
                patch[sy0 - top:sy1 - top, sx0 - left:sx1 - left] = rgb[sy0:sy1, sx0:sx1]
    if side == size:
        return np.ascontiguousarray(patch)
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(patch, (size, size), interpolation=interp)


def face_crop(rgb: np.ndarray, detection: Detection, angle: float, size: int, margin: float,
              align: bool = True) -> np.ndarray:
    """The square crop of one face: by the alignment template when it has landmarks (and ``align``),
    else the box with ``margin`` rotated by ``angle`` (Haar's eye levelling)."""
    if align and detection.landmarks is not None:
        return aligned_crop(rgb, detection.landmarks, size, margin)
    return crop_square(rgb, detection.box, angle, margin=margin, size=size)


class Box(NamedTuple):
    """A detected face in original image pixels; ``score`` is the cascade's neighbour count."""

    x: int
    y: int
    w: int
    h: int
    score: float


@dataclass
class CropResult:
    """The crop of the largest face; ``image`` and ``box`` are None when no face was found.

    ``aligned`` is True when the crop was levelled: by the landmark template (``landmarks``: the
    5 points in source pixels), or, with the Haar detector, because two eyes were found in the
    upper half of the box and the crop was rotated by ``angle`` degrees; False: an unrotated crop.
    """

    image: Image.Image | None
    box: tuple[int, int, int, int] | None
    angle: float
    found: bool
    aligned: bool = False
    eyes: tuple[tuple[float, float], tuple[float, float]] | None = None
    landmarks: np.ndarray | None = None
    confidence: float = 0.0


class FaceCropper:
    """Detect the largest face, level it, cut a square crop.

    ``detector``: the ``--detector`` choice (``auto``, ``yunet``, ``haar`` or a resolved
    :class:`DetectorChoice`), in its photo setting; with YuNet the crop follows the landmark
    template, with Haar the eye cascade levels it (``min_size``, ``scale_factor`` and
    ``min_neighbors`` tune Haar only; ``min_size``: the smallest face side in original pixels,
    None: 1/20 of the image's shorter side). ``margin``: context around the face (the template's,
    or added on each side of a Haar box: 0.25 makes the crop 1.5x the box); ``size``: the output
    side in pixels.
    """

    def __init__(self, margin: float = 0.25, size: int = 224, align: bool = True,
                 min_size: int | None = None, scale_factor: float = 1.1, min_neighbors: int = 5,
                 detector: DetectorChoice | str = "auto", min_confidence: float | None = None):
        if not math.isfinite(margin) or margin < 0:
            raise ClefError(f"margin must be a finite number >= 0, got {margin}")
        if size <= 0:
            raise ClefError(f"crop size must be positive, got {size}")
        self.margin = float(margin)
        self.size = int(size)
        self.align = bool(align)
        choice = detector if isinstance(detector, DetectorChoice) else resolve_detector(detector, min_confidence)
        self.choice = choice
        if choice.kind == "haar":
            self.detector = HaarDetector(scale_factor=scale_factor, min_neighbors=min_neighbors, min_size=min_size)
            self.detector.min_confidence = float(choice.min_confidence or 0.0)
        else:
            self.detector = choice.make("photos")
        self.aligner = EyeAligner(width=None) if align else None

    def detect(self, rgb: np.ndarray) -> list[Box]:
        """Faces in an RGB (or grey) image, largest first, in original pixel coordinates."""
        rgb = to_rgb_uint8(rgb)
        return [Box(*clip_box(d.box, rgb.shape), d.score) for d in self.detector.detect(rgb)]

    def crop_box(self, rgb: np.ndarray, box: Sequence[float], angle: float = 0.0) -> Image.Image:
        """Square crop around ``box`` (x, y, w, h) with the margin, rotated by ``angle``."""
        out = crop_square(to_rgb_uint8(rgb), box, angle, margin=self.margin, size=self.size)
        return Image.fromarray(out, mode="RGB")

    def crop(self, rgb: np.ndarray) -> CropResult:
        """Crop the largest face; ``found=False`` (image None) when there is none."""
        rgb = to_rgb_uint8(rgb)
        if not isinstance(self.detector, HaarDetector):
            dets = self.detector.detect(rgb)
            if not dets:
                return CropResult(image=None, box=None, angle=0.0, found=False)
            d = dets[0]
            crop = face_crop(rgb, d, 0.0, self.size, self.margin, self.align)
            return CropResult(image=Image.fromarray(crop, mode="RGB"), box=clip_box(d.box, rgb.shape),
                              angle=round(eye_angle(d.landmarks), 2) if self.align else 0.0, found=True,
                              aligned=self.align, eyes=(tuple(d.landmarks[0]), tuple(d.landmarks[1])),
                              landmarks=d.landmarks, confidence=round(d.confidence, 4))
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        work, scale, pad, found = self.detector.detect_raw(grey)
        found = [f for f in found if neighbour_confidence(f[1]) >= self.detector.min_confidence]
        if not found:
            return CropResult(image=None, box=None, angle=0.0, found=False)
        rect, neighbours = found[0]
        box = self.detector.to_source(rect, scale, pad)
        angle, eyes, aligned = 0.0, None, False
        if self.aligner is not None:
            level = self.aligner.find(work, rect, equalise=False)
            if level is not None:
                angle = level[0]
                eyes = tuple(((ex - pad) / scale, (ey - pad) / scale) for ex, ey in level[1])
                aligned = True
        image = self.crop_box(rgb, box, angle)
        return CropResult(image=image, box=clip_box(box, rgb.shape), angle=round(angle, 2),
                          found=True, aligned=aligned, eyes=eyes,
                          confidence=round(neighbour_confidence(neighbours), 4))
