"""AffectNet adapter (AffectNet-7 and AffectNet-8).

Layout::

    Manually_Annotated_file_lists/training.csv     train split
    Manually_Annotated_file_lists/validation.csv   test split (the official evaluation set)
    Manually_Annotated_Images/{subDirectory_filePath}

CSV columns: subDirectory_filePath, face_x, face_y, face_width, face_height,
facial_landmarks, expression, valence, arousal. Each sample carries the face box and is
cropped by it when opened. Expression codes: 0 neutral, 1 happy, 2 sad, 3 surprise,
4 fear, 5 disgust, 6 anger, 7 contempt (a class only with ``classes=8``); codes 8-10
(none, uncertain, no face) are never classes. Class index = code; class names are the
ids of the shipped prompt sets (neutral, happiness, sadness, surprise, fear, disgust,
anger, contempt). Left-out rows are counted in ``bundle.dropped``; images missing on
disk are counted in ``bundle.skipped`` and listed in ``bundle.missing``.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from clefctl.data.records import DatasetBundle, Sample, csv_header, open_text, require_file, require_root
from clefctl.errors import ClefError

AFFECTNET_CLASSES = ["neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger",
                     "contempt"]
LIST_DIR = "Manually_Annotated_file_lists"
IMAGE_DIR = "Manually_Annotated_Images"
REQUIRED_COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
                    "expression")
_LAYOUT = (f"{LIST_DIR}/training.csv, {LIST_DIR}/validation.csv and "
           f"{IMAGE_DIR}/{{subDirectory_filePath}}")


def load(root: Path, *, classes: int = 7, name: str | None = None,
         prompts: str | None = None) -> DatasetBundle:
    """Read AffectNet with 7 (no contempt) or 8 classes."""
    classes = int(classes)
    if classes not in (7, 8):
        raise ClefError(f"AffectNet has 7 or 8 expression classes, not {classes}")
    name = name or f"affectnet{classes}"
    prompts = prompts if prompts is not None else f"affectnet{classes}"
    root = require_root(root, "AffectNet", "AffectNet", _LAYOUT)
    image_dir = root / IMAGE_DIR
    if not image_dir.is_dir():
        raise ClefError(f"AffectNet image folder not found (expected {_LAYOUT})", path=image_dir)
    listing: dict[str, set[str]] = {}
    samples: list[Sample] = []
    missing: list[str] = []
    dropped = 0
    for file_name, split in (("training.csv", "train"), ("validation.csv", "test")):
        path = require_file(root / LIST_DIR / file_name, "AffectNet", "label list")
        s, k, d = _read_list(path, split, classes, image_dir, listing)
        samples += s
        missing += k
        dropped += d
    if not samples:
        raise ClefError(f"no AffectNet images found under {IMAGE_DIR}/ ({len(missing)} listed "
                        f"images missing)", path=root)
    return DatasetBundle(name=name, task="fer", classes=AFFECTNET_CLASSES[:classes],
                         samples=samples, root=root, prompts=prompts, activities=[],
                         canonical_folds=None, skipped=len(missing), dropped=dropped,
                         missing=missing)


def _exists(image_dir: Path, rel: str, listing: dict[str, set[str]]) -> bool:
    """File existence with one directory listing per sub-folder (fast on 440 k images)."""
    folder, _, name = rel.rpartition("/")
    names = listing.get(folder)
    if names is None:
        try:
            names = set(os.listdir(image_dir / folder)) if folder else set(os.listdir(image_dir))
        except (FileNotFoundError, NotADirectoryError):
            names = set()
        listing[folder] = names
    return name in names


def _read_list(path: Path, split: str, classes: int, image_dir: Path,
               listing: dict[str, set[str]]) -> tuple[list[Sample], list[str], int]:
    """(samples, paths listed but missing on disk, rows dropped by the class rule)."""
    samples: list[Sample] = []
    missing: list[str] = []
    dropped = 0
    with open_text(path) as fh:
        reader = csv.reader(fh)
        header = csv_header(reader, path, "an AffectNet list's header row")
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ClefError(f"column(s) {', '.join(missing)} missing from the header",
                            path=path, line=1)
        col = {c: header.index(c) for c in REQUIRED_COLUMNS}
        for line_no, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            try:
                rel = row[col["subDirectory_filePath"]].strip().replace("\\", "/")
                code = int(float(row[col["expression"]]))
                box = tuple(int(round(float(row[col[c]]))) for c in
                            ("face_x", "face_y", "face_width", "face_height"))
            except (ValueError, IndexError):
                raise ClefError(f"malformed line: expected {', '.join(REQUIRED_COLUMNS)}",
                                path=path, line=line_no)
            if not rel or not 0 <= code <= 10:
                raise ClefError(f"malformed line: empty path or expression code {code} "
                                f"outside 0-10", path=path, line=line_no)
            if code >= classes:  # 8-10 always; 7 (contempt) for AffectNet-7
                dropped += 1
                continue
            if not _exists(image_dir, rel, listing):
                missing.append(str(image_dir / rel))
                continue
            samples.append(Sample(id=rel, subject=rel, path=str(image_dir / rel), split=split,
                                  label=code, box=box))
    return samples, missing, dropped
