"""YuNet: a CNN face detector with 5 landmarks, run by OpenCV's own ``cv2.FaceDetectorYN``.

YuNet (Wu et al. 2023, libfacedetection; OpenCV's model zoo, MIT licence) returns per face a box,
a score and 5 landmarks (the subject's right eye, left eye, nose tip, right and left mouth corner).
It was trained on faces of about 10 to 300 pixels, so :class:`YuNetDetector` searches a copy of
the image scaled to put the faces of its setting in that range and maps boxes and landmarks back
to source pixels:

* ``photos``: a coarse pass on a copy whose shorter side is at most 320 pixels (a face filling the
  photo stays under 300), and, for photos whose shorter side exceeds 480 pixels, a fine pass at up
  to 1600 pixels on the longer side for small faces in group photos; the passes' faces are merged
  (overlapping boxes: the higher score is kept).
* ``video``: one pass on a copy where a face of 1/8 of the shorter side spans 22 pixels (a 640x360
  frame is searched at 320x180): cheap key frames.
* ``frames``: recorded data-set frames with one large face (BP4D, DISFA): a face of 1/6 of the
  shorter side spans 24 pixels (~145x195 for a 1040x1392 frame decoded at half size).

Images with a shorter side below 64 pixels are upscaled to 128 (tight face crops, LFW-sized). A
face scoring below ``min_confidence`` (default :data:`DEFAULT_MIN_CONFIDENCE`) is not a face.

**Landmark refinement.** YuNet's landmarks lean towards an upright face: on a face rolled by 20
degrees its eye line comes out tilted by only 5-15, so a crop aligned on them stays tilted. Each
face's landmarks are therefore refined (:meth:`YuNetDetector.refine`): the face is cut out levelled
by the current landmarks (160 px, wide context), YuNet runs again on that near-upright cut, and its
landmarks, with the residual eye tilt it still sees doubled (the measured lean halves it), are mapped
back. On real faces rolled by 10-20 degrees the crops come out 2.9 degrees from level on average
(``benchmarks/detect_skin.py``, docs/performance.md); each round costs one YuNet run on 160x160 pixels.
"""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np

from clefctl.data.faces.detect import Detection, Detector
from clefctl.data.faces.template import align_matrix, eye_angle, map_points
from clefctl.data.faces.track import iou_matrix
from clefctl.errors import ClefError

#: The score below which YuNet's candidates are not faces (``--min-confidence``). 0.6 keeps the
#: faces YuNet scores lowest (small, blurred or turned real faces: ~0.7-0.9) and rejects the
#: face-like patterns of textures it scores up to 0.58 on scikit-image's face-free photos (a star
#: field, the moon, coffee); benchmarks/detect_skin.py measures both sides.
DEFAULT_MIN_CONFIDENCE = 0.6
_NMS = 0.3                  # YuNet's own non-maximum suppression within one pass (IoU)
_MERGE_IOU = 0.3            # faces of two passes overlapping more than this are one face
_TOP_K = 5000
_SMALL_SIDE, _SMALL_TO = 64, 128
_MAX_COPY_SIDE = 1600       # no detection copy is larger than this on its longer side
_REFINE_SIDE = 160          # the levelled cut that landmarks are refined on
_REFINE_MARGIN = 0.5        # ... with this context (alignment template's margin)
_REFINE_GAIN = 2.0          # YuNet sees about half of a residual tilt: the correction doubles it


SETTINGS = {
    # name: (passes as (kind, value)), smallest face kept as a fraction of the shorter side, refinement rounds
    "photos": ((("short", 320.0), ("long", float(_MAX_COPY_SIDE))), 0.0, 3),
    "video": ((("face", 22.0 * 8.0),), 1.0 / 16.0, 2),
    "frames": ((("face", 24.0 * 6.0),), 1.0 / 12.0, 3),
}


class YuNetDetector(Detector):
    """YuNet behind :class:`~clefctl.data.faces.detect.Detector`: every face with its 5
    ``landmarks`` (5 x 2, source pixels), largest first; ``confidence`` is YuNet's score.

    ``model``: the ONNX file (``clefctl weights get yunet``). ``setting``: ``photos``, ``video`` or
    ``frames`` (module docstring). ``min_confidence``: the score threshold."""

    name = "yunet"

    def __init__(self, model: str | Path, *, setting: str = "photos", min_confidence: float | None = None):
        if setting not in SETTINGS:
            raise ClefError(f"unknown detector setting {setting!r}", hint="use photos, video or frames")
        thr = DEFAULT_MIN_CONFIDENCE if min_confidence is None else float(min_confidence)
        if not 0.0 < thr < 1.0:
            raise ClefError(f"--min-confidence must be between 0 and 1 (exclusive), got {min_confidence}")
        self.model = str(model)
        self.setting = setting
        self.min_confidence = thr
        self._passes, self._min_face, self.rounds = SETTINGS[setting]
        self._lock = threading.Lock()   # one cv2 net per detector; serve may call from threads
        try:
            self._net = cv2.FaceDetectorYN.create(self.model, "", (320, 320), thr, _NMS, _TOP_K)
        except cv2.error as exc:
            raise ClefError("OpenCV cannot load the YuNet model", path=self.model,
                            hint="it is damaged or another file: run `clefctl weights get yunet --force`") from exc
        self._size = (320, 320)
        self._refiner = cv2.FaceDetectorYN.create(self.model, "", (_REFINE_SIDE, _REFINE_SIDE), 0.3, _NMS, 50)

    def describe(self) -> dict:
        return {"name": self.name, "model": Path(self.model).name, "setting": self.setting,
                "min_confidence": self.min_confidence}

    def scales(self, shape) -> list[float]:
        """The scale of each pass's copy for an image of ``shape`` (copy = source * scale)."""
        h, w = shape[:2]
        short, long_ = float(min(h, w)), float(max(h, w))
        cap = _MAX_COPY_SIDE / long_
        out = []
        for kind, value in self._passes:
            if kind == "short":
                s = min(1.0, value / short)
            elif kind == "long":
                if short <= 1.5 * 320 or len(out) and out[0] >= 1.0:
                    continue          # the coarse pass already saw it at (nearly) full resolution
                s = min(1.0, value / long_)
            else:                     # "face": the setting's smallest face spans `value / fraction` px
                s = value / short
                s = min(s, 300.0 / short) if s > 1.0 else s
            if short < _SMALL_SIDE:
                s = max(s, _SMALL_TO / short)
            out.append(min(s, cap))
        return out

    def _search(self, rgb: np.ndarray, scale: float) -> np.ndarray:
        """YuNet's rows (x, y, w, h, 5 landmark pairs, score) in source pixels, for one copy."""
        h, w = rgb.shape[:2]
        cw, ch = max(8, round(w * scale)), max(8, round(h * scale))
        if (cw, ch) != (w, h):
            interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
            copy = cv2.resize(rgb, (cw, ch), interpolation=interp)
        else:
            copy = rgb
        bgr = cv2.cvtColor(copy, cv2.COLOR_RGB2BGR)
        with self._lock:
            if self._size != (cw, ch):
                self._net.setInputSize((cw, ch))
                self._size = (cw, ch)
            _, rows = self._net.detect(bgr)
        if rows is None or not len(rows):
            return np.zeros((0, 15), np.float32)
        rows = np.asarray(rows, np.float64).copy()
        sx, sy = w / cw, h / ch
        rows[:, 0:14:2] *= sx
        rows[:, 1:14:2] *= sy
        return rows

    def detect(self, rgb: np.ndarray, grey: np.ndarray | None = None) -> list[Detection]:
        if rgb.ndim == 2:
            rgb = cv2.cvtColor(rgb, cv2.COLOR_GRAY2RGB)
        found = np.zeros((0, 15))
        for scale in self.scales(rgb.shape):
            rows = self._search(rgb, scale)
            if len(found) and len(rows):
                iou = iou_matrix(rows[:, :4], found[:, :4])
                keep_new = np.ones(len(rows), bool)
                drop_old = np.zeros(len(found), bool)
                for i, j in zip(*np.nonzero(iou > _MERGE_IOU)):
                    if rows[i, 14] > found[j, 14]:
                        drop_old[j] = True
                    else:
                        keep_new[i] = False
                found = np.concatenate([found[~drop_old], rows[keep_new]])
            elif len(rows):
                found = rows
        if self._min_face and len(found):
            found = found[np.maximum(found[:, 2], found[:, 3]) >= self._min_face * min(rgb.shape[:2])]
        order = np.argsort(-(found[:, 2] * found[:, 3]), kind="stable")
        return [Detection((float(r[0]), float(r[1]), float(r[2]), float(r[3])), float(r[14]), float(r[14]),
                          landmarks=self.refine(rgb, r[4:14].reshape(5, 2))) for r in found[order]]

    def refine(self, rgb: np.ndarray, landmarks: np.ndarray, rounds: int | None = None) -> np.ndarray:
        """``landmarks`` (5 x 2 source pixels) refined on levelled cuts of the face (module
        docstring); ``rounds`` defaults to the setting's. A round that finds no face stops."""
        lm = np.asarray(landmarks, np.float64).reshape(5, 2)
        for _ in range(self.rounds if rounds is None else rounds):
            m = align_matrix(lm, _REFINE_SIDE, _REFINE_MARGIN)
            cut = cv2.warpAffine(rgb, m, (_REFINE_SIDE, _REFINE_SIDE), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_REPLICATE)
            with self._lock:
                _, rows = self._refiner.detect(cv2.cvtColor(cut, cv2.COLOR_RGB2BGR))
            if rows is None or not len(rows):
                break
            centre = np.array([_REFINE_SIDE / 2.0, _REFINE_SIDE / 2.0])
            row = min(rows, key=lambda r: float(np.hypot(*(r[0:2] + r[2:4] / 2.0 - centre))))
            pts = np.asarray(row[4:14], np.float64).reshape(5, 2)
            turn = cv2.getRotationMatrix2D(tuple(pts.mean(0)), -(_REFINE_GAIN - 1.0) * eye_angle(pts), 1.0)
            lm = map_points(cv2.invertAffineTransform(m), map_points(turn, pts))
        return lm
