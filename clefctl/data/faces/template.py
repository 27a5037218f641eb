"""The one alignment template: 5 facial landmarks -> a level, centred square face crop.

Every landmark-aligned crop clefctl makes (``predict``, ``embed PATH...``, ``query --image``, the
face-crop cache, the explorer's thumbnails) is the similarity transform (rotation, uniform scale,
translation; least squares, Umeyama 1991) that carries the detector's 5 landmarks onto
:data:`TEMPLATE`, applied to the image. The landmarks are, in order, the subject's right eye, left
eye, nose tip, right mouth corner and left mouth corner (YuNet's order; the subject's right eye is
on the image's left; their names and table columns: :mod:`clefctl.data.landmarks`).

The template is written in units of the crop side for the default context (``margin`` 0.25): the
eyes 0.25 of the side apart at 0.38 from the top, the nose tip at 0.52, the mouth corners at 0.67
(the relative positions of the 5-point template used by ArcFace-style aligners, scaled into a
looser square). The inter-ocular distance ``d`` is a quarter of the side, so the crop keeps about
1.5 ``d`` above the eyes (the brows at ~0.4 ``d`` above them and the forehead up to the hairline:
AU 1, 2 and 4 live there) and about 2.3 ``d`` below them (the chin at ~2 ``d``, with room for a
dropped jaw: AU 17, 24, 26, 27). A larger ``margin`` shrinks the face in the crop, keeping its
centre: ``d = 0.25 * 1.5 / (1 + 2 * margin)``. ``docs/img/align_template.png`` draws it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

#: (x, y) of right eye, left eye, nose tip, right and left mouth corner, in units of the crop side
#: at the default margin (0.25).
TEMPLATE = np.array([[0.375, 0.380],
                     [0.625, 0.380],
                     [0.500, 0.522],
                     [0.396, 0.670],
                     [0.604, 0.670]], np.float64)
TEMPLATE_NAME = "clef-5pt-v1"     # recorded in the crop cache's key and reports
_CENTRE = 0.5                     # a margin other than 0.25 scales the template about the crop's centre
_BASE_MARGIN = 0.25


def template_points(size: int, margin: float = _BASE_MARGIN) -> np.ndarray:
    """The template's 5 points in the pixels of a ``size`` crop with ``margin`` context."""
    k = (1.0 + 2.0 * _BASE_MARGIN) / (1.0 + 2.0 * float(margin))
    return ((TEMPLATE - _CENTRE) * k + _CENTRE) * float(size)


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 similarity transform (rotation, uniform scale, translation) that carries ``src``
    (N x 2) onto ``dst`` (N x 2) with the least squared error (Umeyama 1991, no reflection)."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    ms, md = src.mean(0), dst.mean(0)
    s0, d0 = src - ms, dst - md
    var = (s0 ** 2).sum() / len(src)
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    fix = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        fix[1, 1] = -1.0
    rot = u @ fix @ vt
    scale = float((sig * np.diag(fix)).sum() / var) if var > 0 else 1.0
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = md - scale * rot @ ms
    return m


def eye_angle(landmarks: np.ndarray) -> float:
    """Degrees of the eye line from level (positive: the subject's left eye, on the image's right,
    is lower), the rotation the alignment removes."""
    (rx, ry), (lx, ly) = landmarks[0], landmarks[1]
    return math.degrees(math.atan2(ly - ry, lx - rx))


def align_matrix(landmarks: np.ndarray, size: int, margin: float = _BASE_MARGIN) -> np.ndarray:
    """The 2x3 matrix from source pixels to the ``size`` crop for these 5 landmarks."""
    return similarity(np.asarray(landmarks, np.float64).reshape(5, 2), template_points(size, margin))


def aligned_crop(rgb: np.ndarray, landmarks: Sequence, size: int, margin: float = _BASE_MARGIN) -> np.ndarray:
    """The ``size`` x ``size`` uint8 crop of ``rgb`` whose 5 landmarks fall on the template.

    What lies outside the image is black, as in :func:`clefctl.data.faces.align.crop_square`.
    A face much larger than the crop is first reduced with area averaging (a plain warp would
    alias), then warped."""
    m = align_matrix(np.asarray(landmarks, np.float64), size, margin)
    scale = math.sqrt(abs(np.linalg.det(m[:, :2])))
    src = rgb
    if scale < 0.5:
        # the source region the crop covers, reduced to about twice the crop's resolution first
        inv = cv2.invertAffineTransform(m)
        corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], np.float64) @ inv.T
        H, W = rgb.shape[:2]
        x0, y0 = max(0, int(math.floor(corners[:, 0].min()))), max(0, int(math.floor(corners[:, 1].min())))
        x1, y1 = min(W, int(math.ceil(corners[:, 0].max()))), min(H, int(math.ceil(corners[:, 1].max())))
        if x1 - x0 >= 2 and y1 - y0 >= 2:
            f = min(1.0, 2.0 * scale)
            w, h = max(1, round((x1 - x0) * f)), max(1, round((y1 - y0) * f))
            src = cv2.resize(rgb[y0:y1, x0:x1], (w, h), interpolation=cv2.INTER_AREA)
            fx, fy = w / (x1 - x0), h / (y1 - y0)
            shrink = np.array([[fx, 0, -x0 * fx], [0, fy, -y0 * fy], [0, 0, 1]])
            m = m @ np.linalg.inv(shrink)
    out = cv2.warpAffine(src, m, (int(size), int(size)), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    return np.ascontiguousarray(out)


def map_points(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``points`` (N x 2) under the 2x3 matrix ``m``."""
    p = np.asarray(points, np.float64).reshape(-1, 2)
    return p @ m[:, :2].T + m[:, 2]
