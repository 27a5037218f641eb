"""Folder adapter: ``root/<class name>/*.jpg|png`` -> a FER set.

Classes are the sub-folder names in sorted order (empty sub-folders still count as
classes); each image is its own subject; there is no official split. The prompt set is
"" (the user passes --prompts).
"""

from __future__ import annotations

import os
from pathlib import Path

from clefctl.data.records import DatasetBundle, Sample
from clefctl.errors import ClefError

EXTENSIONS = (".jpg", ".jpeg", ".png")


def load(root: Path, *, name: str = "folder", prompts: str = "") -> DatasetBundle:
    """Read an image folder with one sub-folder per class."""
    if root is None:
        raise ClefError("the folder data set needs a folder: pass --dataset-root DIR holding "
                        "one sub-folder of images per class")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ClefError("image folder not found (expected DIR/<class name>/*.jpg|png; pass it "
                        "with --dataset-root DIR)", path=root)
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ClefError("no class sub-folders (expected DIR/<class name>/*.jpg|png)", path=root)
    samples: list[Sample] = []
    for label, cls in enumerate(classes):
        names = sorted(e.name for e in os.scandir(root / cls)
                       if e.is_file() and e.name.lower().endswith(EXTENSIONS)
                       and not e.name.startswith("."))
        for fname in names:
            sid = f"{cls}/{fname}"
            samples.append(Sample(id=sid, subject=sid, path=str(root / cls / fname), label=label))
    if not samples:
        raise ClefError("no .jpg or .png images in the class sub-folders", path=root)
    return DatasetBundle(name=name, task="fer", classes=classes, samples=samples, root=root,
                         prompts=prompts, activities=[], canonical_folds=None)
