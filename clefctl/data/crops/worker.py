"""One unit of ``clefctl data prepare``'s work: crop the face of a run of frames of one folder.

Runs in worker processes (spawned: this module imports no torch). Per frame: the JPEG is decoded
reduced in the DCT (PIL ``draft``) so that its shorter side keeps at least twice the crop size
(1/2 for a 1040x1392 BP4D frame and 256 px crops); the detector in the frame setting (a manifest's
photos: the photo setting) searches a copy reduced further. With YuNet the largest face's 5 landmarks
place it on the alignment template (:func:`~clefctl.data.faces.template.aligned_crop`); with the Haar
cascades the eye cascade levels it (:class:`~clefctl.data.faces.align.EyeAligner`,
:func:`~clefctl.data.faces.align.crop_square`). The crop is cut from the reduced frame, or from the
full one when the face is too small there for the crop size; box and landmarks are kept in
full-resolution pixels. A frame without a detected face takes the box, angle and landmarks of the
nearest frame of the same run that has one, within :data:`~clefctl.data.crops.layout.NEIGHBOUR_GAP`
frames (status ``neighbour``); a photo (the photo setting) never does.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from clefctl.data.crops.layout import (NEIGHBOUR_GAP, STATUS_FACE, STATUS_NEIGHBOUR, STATUS_NO_FACE,
                                       STATUS_UNREADABLE, CropSettings, Entries, crop_rel)
from clefctl.data.faces.align import face_crop
from clefctl.data.faces.detect import Detection
from clefctl.data.faces.template import eye_angle
from clefctl.data.images import check_size, read_reduced

_STATE: dict = {}


def init(settings: dict) -> None:
    """Build the detector and aligner once per process; one OpenCV thread (the pool is the parallelism)."""
    from clefctl.data.faces.align import EyeAligner

    cv2.setNumThreads(1)
    s = CropSettings(**settings)
    _STATE.update(settings=s, detector=s.make_detector(), aligner=EyeAligner(width=96) if s.align else None)


def _decode(path: str, min_side: int | None):
    img, scale = read_reduced(path, min_side)
    check_size(round(img.width / scale), round(img.height / scale))   # the detector's bounds: counted unreadable
    return np.asarray(img), scale


def _find(rgb: np.ndarray):
    """(box in ``rgb``'s pixels, angle, landmarks in ``rgb``'s pixels or None) of the largest face, or None."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    found = _STATE["detector"].detect(rgb, grey)
    if not found:
        return None
    box, landmarks = found[0].box, found[0].landmarks
    angle = 0.0
    if landmarks is not None:
        angle = eye_angle(landmarks) if _STATE["settings"].align else 0.0
    elif _STATE["aligner"] is not None:
        level = _STATE["aligner"].find(grey, box)
        if level is not None:
            angle = float(level[0])
    return box, angle, landmarks


def _write(rgb: np.ndarray, scale: float, path: str, box_full, angle: float, target: Path,
           landmarks_full=None) -> None:
    """Cut the crop for ``box_full`` and ``landmarks_full`` (full-resolution pixels) from ``rgb`` (the
    frame at ``scale``), decoding the frame in full first when the face has fewer pixels there than
    the crop."""
    s: CropSettings = _STATE["settings"]
    side = max(box_full[2], box_full[3]) * (1 + 2 * s.margin) * scale
    if side < s.size and scale < 1.0:
        rgb, scale = _decode(path, None)
    box = tuple(v * scale for v in box_full)
    lm = None if landmarks_full is None else np.asarray(landmarks_full, np.float64) * scale
    crop = face_crop(rgb, Detection(box, 1.0, 1.0, lm), angle, s.size, s.margin, s.align)
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(crop).save(target, format="JPEG", quality=95)


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
        return int(st.st_size), int(st.st_mtime_ns)
    except OSError:
        return -1, -1


def crop_run(job: dict) -> Entries:
    """Crop ``job["items"]`` (``(rel, path)`` pairs, frames of one folder in order) into
    ``job["out"]/crops``; the entries, one per item, in order."""
    s: CropSettings = _STATE["settings"]
    out = Path(job["out"]) / "crops"
    rows, pending = [], []
    for rel, path in job["items"]:
        size, mtime = _stat(path)
        try:
            rgb, scale = _decode(path, 2 * s.size)
        except Exception:  # noqa: BLE001 - any unreadable or undecodable file is counted and listed
            rows.append([rel, size, mtime, STATUS_UNREADABLE, (0, 0, 0, 0), 0.0, None])
            continue
        hit = _find(rgb)
        if hit is None:
            rows.append([rel, size, mtime, STATUS_NO_FACE, (0, 0, 0, 0), 0.0, None])
            pending.append(len(rows) - 1)
            continue
        box_full = tuple(v / scale for v in hit[0])
        lm_full = None if hit[2] is None else hit[2] / scale
        _write(rgb, scale, path, box_full, hit[1], out / crop_rel(rel), lm_full)
        rows.append([rel, size, mtime, STATUS_FACE, tuple(int(round(v)) for v in box_full), round(hit[1], 2),
                     lm_full])
    if s.setting == "frames":  # a recording's neighbouring frame shows the same face; a folder of photos does not
        _fill_from_neighbours(rows, pending, dict(job["items"]), out)
    return Entries.from_rows([tuple(r) for r in rows])


def _fill_from_neighbours(rows: list[list], pending: list[int], paths: dict, out: Path) -> None:
    """Give each frame without a detected face the box and angle of the nearest detected frame of the
    run within NEIGHBOUR_GAP positions (the earlier one on a tie)."""
    detected = [i for i, r in enumerate(rows) if r[3] == STATUS_FACE]
    if not pending or not detected:
        return
    s: CropSettings = _STATE["settings"]
    marks = np.asarray(detected)
    for i in pending:
        j = int(marks[np.argmin(np.abs(marks - i))])
        if abs(j - i) > NEIGHBOUR_GAP:
            continue
        rel = rows[i][0]
        try:
            rgb, scale = _decode(paths[rel], 2 * s.size)
        except Exception:  # noqa: BLE001 - it decoded a moment ago; a vanished file stays without a crop
            continue
        box, angle, lm = rows[j][4], rows[j][5], rows[j][6]
        _write(rgb, scale, paths[rel], box, angle, out / crop_rel(rel), lm)
        rows[i][3:7] = [STATUS_NEIGHBOUR, box, angle, lm]
