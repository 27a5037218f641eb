"""The predictions CSV: OpenFace's column names and order, and the streaming writer.

Columns, in order: ``source``, ``frame`` (1-based; 1 for a photo), ``face_id`` (0-based within
a source; -1 on a no-face row), ``timestamp`` (seconds; 0 for a photo), ``confidence`` (0-1),
``success`` (1 = a face, 0 = no face on that frame), ``face_x``, ``face_y``, ``face_w``,
``face_h`` (pixels of the source), the 5 landmarks ``lmk_x_0`` ... ``lmk_x_4``, ``lmk_y_0`` ...
``lmk_y_4`` (source pixels, in the order right eye, left eye, nose tip, right mouth corner, left
mouth corner, the subject's right; empty with the Haar detector and on no-face rows), then per AU ``AU01_c`` (0/1) and ``AU01_p`` (the occurrence
probability, not a FACS intensity), then one probability column per expression class and
``expression`` (the most likely). A no-face row has ``confidence`` 0 and the face columns empty.
The schema is documented in docs/predict.md; :func:`columns` gives the header and
:func:`row_values` one row.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from clefctl.data.landmarks import LANDMARK_COLUMNS
from clefctl.errors import ClefError

BASE_COLUMNS = ("source", "frame", "face_id", "timestamp", "confidence", "success",
                "face_x", "face_y", "face_w", "face_h") + LANDMARK_COLUMNS
AU_THRESHOLD = 0.5           # AU01_c = 1 when AU01_p > 0.5
_AU_ID = re.compile(r"^AU(\d+)(.*)$", re.IGNORECASE)


def au_column(class_id: str) -> str:
    """An AU id as OpenFace writes it: two-digit number (``AU1`` -> ``AU01``, ``AU12`` -> ``AU12``)."""
    m = _AU_ID.match(str(class_id))
    return f"AU{int(m.group(1)):02d}{m.group(2)}" if m else str(class_id)


def columns(au_classes: Sequence[str], fer_classes: Sequence[str]) -> list[str]:
    """The header for these AU ids and expression classes (either may be empty)."""
    cols = list(BASE_COLUMNS)
    for c in au_classes:
        cols += [f"{au_column(c)}_c", f"{au_column(c)}_p"]
    if fer_classes:
        cols += list(fer_classes) + ["expression"]
    clash = [c for c in fer_classes if c in BASE_COLUMNS or c == "expression" or c.endswith(("_c", "_p"))]
    if clash or len(set(cols)) != len(cols):
        raise ClefError(f"expression class names clash with the CSV's own columns: {clash or cols}",
                        hint="rename those classes in the prompt set")
    return cols


def _p(v: float) -> str:
    return f"{float(v):.4f}"


def landmark_values(landmarks) -> list:
    """The 10 landmark cells (x0..x4, y0..y4, one decimal) of a 5 x 2 array; empty cells for None."""
    if landmarks is None:
        return [""] * len(LANDMARK_COLUMNS)
    pts = np.asarray(landmarks, np.float64).reshape(5, 2)
    return [f"{v:.1f}" for v in pts[:, 0]] + [f"{v:.1f}" for v in pts[:, 1]]


def row_values(source: str, frame: int, face_id: int, timestamp: float, confidence: float,
               box, au: np.ndarray | None, fer: np.ndarray | None, fer_classes: Sequence[str],
               n_au: int, landmarks=None) -> list:
    """One CSV row: a face (``box`` set, ``landmarks`` when the detector gives them, ``au``/``fer``
    probabilities when scored) or, with ``box`` None, a no-face row."""
    row: list = [source, int(frame), int(face_id), f"{float(timestamp):.3f}"]
    if box is None:
        row += [f"{0.0:.3f}", 0, "", "", "", ""] + landmark_values(None)
        row += ["", ""] * n_au
        row += [""] * (len(fer_classes) + 1) if fer_classes else []
        return row
    row += [f"{float(confidence):.3f}", 1] + [int(v) for v in box] + landmark_values(landmarks)
    if n_au:
        for p in au:
            row += [int(p > AU_THRESHOLD), _p(p)]
    if fer_classes:
        row += [_p(p) for p in fer] + [fer_classes[int(np.argmax(fer))]]
    return row
