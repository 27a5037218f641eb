"""RAF-DB (basic) adapter (also used for the synthetic FER set).

Layout::

    EmoLabel/list_patition_label.txt   "name label" lines, e.g. "train_00001.jpg 5"
    Image/aligned/{stem}_aligned.jpg   aligned 100x100 faces

Labels 1-7 are surprise, fear, disgust, happiness, sadness, anger, neutral; the class
index is label - 1. The split comes from the name prefix (``train_`` / ``test_``). Each
image is its own subject. Images missing on disk are skipped, counted in ``bundle.skipped``
and listed in ``bundle.missing``.
"""

from __future__ import annotations

from pathlib import Path

from clefctl.data.records import DatasetBundle, Sample, open_text, require_file, require_root
from clefctl.errors import ClefError

RAFDB_CLASSES = ["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"]
LABEL_FILE = "EmoLabel/list_patition_label.txt"
_LAYOUT = f"{LABEL_FILE} and Image/aligned/{{stem}}_aligned.jpg"


def load(root: Path, *, name: str = "rafdb", prompts: str = "rafdb",
         label: str = "RAF-DB", folder: str = "RAF-DB") -> DatasetBundle:
    """Read a RAF-DB basic folder."""
    root = require_root(root, label, folder, _LAYOUT)
    label_file = require_file(root / LABEL_FILE, label, "label list")
    image_dir = root / "Image" / "aligned"
    if not image_dir.is_dir():
        raise ClefError(f"{label} aligned image folder not found (expected {_LAYOUT})",
                        path=image_dir)
    present = {p.name for p in image_dir.iterdir()}
    samples: list[Sample] = []
    missing: list[str] = []
    seen: set[str] = set()
    with open_text(label_file) as fh:
        for line_no, line in enumerate(fh, start=1):
            text = line.strip()
            if not text:
                continue
            parts = text.split()
            if len(parts) != 2:
                raise ClefError(f"malformed line {text[:60]!r}: expected 'name label'",
                                path=label_file, line=line_no)
            fname, code = parts
            try:
                value = int(code)
            except ValueError:
                value = 0
            if not 1 <= value <= len(RAFDB_CLASSES):
                raise ClefError(f"label {code!r} is not a RAF-DB code 1-7", path=label_file,
                                line=line_no)
            if fname.startswith("train_"):
                split = "train"
            elif fname.startswith("test_"):
                split = "test"
            else:
                raise ClefError(f"image name {fname!r} starts with neither train_ nor test_",
                                path=label_file, line=line_no)
            stem = fname.rsplit(".", 1)[0]
            if stem in seen:
                raise ClefError(f"image {fname!r} listed twice", path=label_file, line=line_no)
            seen.add(stem)
            img_name = f"{stem}_aligned.jpg"
            if img_name not in present:
                missing.append(str(image_dir / img_name))
                continue
            samples.append(Sample(id=stem, subject=stem, path=str(image_dir / img_name),
                                  split=split, label=value - 1))
    if not samples:
        raise ClefError(f"no {label} images found: the label list names {len(missing)} images but "
                        f"none exists as Image/aligned/{{stem}}_aligned.jpg", path=root)
    return DatasetBundle(name=name, task="fer", classes=list(RAFDB_CLASSES), samples=samples,
                         root=root, prompts=prompts, activities=[], canonical_folds=None,
                         skipped=len(missing), missing=missing)
