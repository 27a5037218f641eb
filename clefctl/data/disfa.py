"""DISFA adapter.

Layout::

    ActionUnit_Labels/{subject}/{subject}_au{k}.txt   one "frame,intensity" line per frame (0-5)
    {subject}/{frame}.png                              extracted frames (.jpg accepted too),
                                                       matched numerically

An AU is positive when its intensity is >= 2. A frame missing from one AU's file is
"not coded" for that AU (``au_mask`` 0). Frames listed in the labels but missing on disk
are skipped, counted in ``bundle.skipped`` and listed in ``bundle.missing``.

Canonical folds (datasets.md) follow the BP4D convention: fold 1 tests on part 3,
fold 2 on part 2, fold 3 on part 1; each fold trains on the other two parts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from clefctl.data.records import (DatasetBundle, Sample, list_frames, open_text, parse_aus,
                                  require_root)
from clefctl.errors import ClefError

DISFA_AUS = (1, 2, 4, 6, 9, 12, 25, 26)
POSITIVE_INTENSITY = 2

DISFA_PARTS = (
    ["SN001", "SN002", "SN009", "SN010", "SN016", "SN026", "SN027", "SN030", "SN032"],
    ["SN006", "SN011", "SN012", "SN013", "SN018", "SN021", "SN024", "SN028", "SN031"],
    ["SN003", "SN004", "SN005", "SN007", "SN008", "SN017", "SN023", "SN025", "SN029"],
)
DISFA_CANONICAL_FOLDS = [list(DISFA_PARTS[2]), list(DISFA_PARTS[1]), list(DISFA_PARTS[0])]

_LAYOUT = "ActionUnit_Labels/{subject}/{subject}_au{k}.txt and {subject}/{frame}.png"


def load(root: Path, *, aus: Sequence | str | None = None, name: str = "disfa",
         prompts: str = "disfa", use_canonical: bool = True) -> DatasetBundle:
    """Read a DISFA folder; ``aus`` selects AUs (default 1 2 4 6 9 12 25 26)."""
    root = require_root(root, "DISFA", "DISFA", _LAYOUT)
    au_list = parse_aus(aus, DISFA_AUS)
    labels = root / "ActionUnit_Labels"
    if not labels.is_dir():
        raise ClefError(f"DISFA label folder not found (expected {_LAYOUT})", path=labels)
    subjects = sorted(p.name for p in labels.iterdir()
                      if p.is_dir() and not p.name.startswith("."))
    if not subjects:
        raise ClefError("no subject folders (SN001, ...) in the DISFA label folder",
                        path=labels)
    samples: list[Sample] = []
    missing: list[str] = []
    for subject in subjects:
        per_au = [_read_au_file(labels / subject / f"{subject}_au{au}.txt") for au in au_list]
        frames_on_disk = list_frames(root / subject)
        all_frames = sorted(set().union(*(d.keys() for d in per_au)))
        for frame in all_frames:
            img = frames_on_disk.get(frame)
            if img is None:
                missing.append(f"{root / subject} frame {frame}")
                continue
            codes = np.zeros(len(au_list), dtype=np.float32)
            mask = np.zeros(len(au_list), dtype=np.float32)
            for c, d in enumerate(per_au):
                if frame in d:
                    mask[c] = 1.0
                    codes[c] = 1.0 if d[frame] >= POSITIVE_INTENSITY else 0.0
            samples.append(Sample(id=f"{subject}/{frame}", subject=subject, path=str(img),
                                  frame=frame, aus=codes, au_mask=mask))
    if not samples:
        raise ClefError(f"no DISFA frames found: the labels list {len(missing)} frames but none "
                        f"exists as {{subject}}/{{frame}}.png under the folder", path=root)
    return DatasetBundle(name=name, task="au", classes=[f"AU{a}" for a in au_list],
                         samples=samples, root=root, prompts=prompts, activities=[],
                         canonical_folds=([list(f) for f in DISFA_CANONICAL_FOLDS]
                                          if use_canonical else None),
                         skipped=len(missing), missing=missing)


def _read_au_file(path: Path) -> dict[int, int]:
    """frame -> intensity (0-5) from one ``{subject}_au{k}.txt``."""
    if not path.is_file():
        raise ClefError("DISFA AU label file not found (each subject needs one file per "
                        "chosen AU; choose other AUs with aus=...)", path=path)
    out: dict[int, int] = {}
    with open_text(path) as fh:
        for line_no, line in enumerate(fh, start=1):
            text = line.strip()
            if not text:
                continue
            parts = [p.strip() for p in text.split(",")]
            try:
                if len(parts) != 2:
                    raise ValueError
                frame, intensity = int(float(parts[0])), int(float(parts[1]))
            except ValueError:
                raise ClefError(f"malformed line {text[:60]!r}: expected 'frame,intensity'",
                                path=path, line=line_no)
            if not 0 <= intensity <= 5:
                raise ClefError(f"intensity {intensity} outside 0-5", path=path, line=line_no)
            out[frame] = intensity
    return out
