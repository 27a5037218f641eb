"""Manifest adapter: any images listed in a CSV.

Columns: ``path`` (relative to the CSV's folder, or absolute), ``subject``, optional
``activity`` and ``split`` (train/val/test), and either

* ``label`` -> a FER set: class names (classes sorted alphabetically) or integers
  (classes "0".."max", label = the integer); ``classes=[...]`` fixes names and order; or
* AU columns ``AU1``, ``AU12``, ... -> an AU set (columns in AU-number order); a cell
  is 0/1, and 9 or empty means not coded (``au_mask`` 0).

Without label or AU columns but with ``activity`` the set is an activity (pre-training)
set. An empty subject makes the image its own subject. Images missing on disk are
skipped, counted in ``bundle.skipped`` and listed in ``bundle.missing``. The CSV is UTF-8
(or UTF-16 with a byte-order mark; see :func:`clefctl.data.records.open_text`). The prompt
set is "" (the user passes --prompts).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from clefctl.data.records import DatasetBundle, Sample, natural_task_key, open_text
from clefctl.errors import ClefError

_AU_COLUMN = re.compile(r"^AU(\d+)$", re.IGNORECASE)
_SPLITS = ("train", "val", "test")


def load(root: Path, *, classes: Sequence[str] | None = None, name: str = "manifest",
         prompts: str = "") -> DatasetBundle:
    """Read the manifest CSV at ``root``."""
    if root is None:
        raise ClefError("the manifest data set needs the CSV path: pass --dataset-root "
                        "FILE.csv (columns path, subject, [activity], [split], label or AU1..)")
    csv_path = Path(root).expanduser()
    if not csv_path.is_file():
        raise ClefError("manifest CSV not found (pass --dataset-root FILE.csv with columns "
                        "path, subject, [activity], [split], label or AU1, AU2, ...)",
                        path=csv_path)
    base = csv_path.parent
    with open_text(csv_path) as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise ClefError("empty manifest (expected a header row)", path=csv_path, line=1)
    header = [h.strip() for h in rows[0]]
    for required in ("path", "subject"):
        if required not in header:
            raise ClefError(f"column {required!r} missing from the header", path=csv_path,
                            line=1)
    col = {h: i for i, h in enumerate(header)}
    au_cols = sorted(((int(m.group(1)), i) for i, h in enumerate(header)
                      if (m := _AU_COLUMN.match(h))), key=lambda t: t[0])
    task = _task_of(col, au_cols, csv_path)

    samples: list[Sample] = []
    raw_labels: list[tuple[int, str]] = []
    missing: list[str] = []
    seen: set[str] = set()
    for line_no, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) < len(header):
            row = row + [""] * (len(header) - len(row))

        def cell(name: str) -> str:
            return row[col[name]].strip() if name in col else ""

        rel = cell("path")
        if not rel:
            raise ClefError("empty path", path=csv_path, line=line_no)
        if rel in seen:
            raise ClefError(f"image {rel!r} listed twice", path=csv_path, line=line_no)
        seen.add(rel)
        split = cell("split").lower() or None
        if split is not None and split not in _SPLITS:
            raise ClefError(f"split {split!r} is not train, val or test", path=csv_path,
                            line=line_no)
        sample = Sample(id=rel, subject=cell("subject") or rel, activity=cell("activity") or None,
                        split=split)
        if task == "au":
            codes = np.zeros(len(au_cols), dtype=np.float32)
            mask = np.zeros(len(au_cols), dtype=np.float32)
            for c, (au, i) in enumerate(au_cols):
                v = row[i].strip()
                if v in ("", "9"):
                    continue
                if v not in ("0", "1"):
                    raise ClefError(f"AU{au} value {v!r} is not 0, 1, 9 or empty",
                                    path=csv_path, line=line_no)
                mask[c] = 1.0
                codes[c] = float(v)
            sample.aus, sample.au_mask = codes, mask
        elif task == "fer":
            value = cell("label")
            if not value:
                raise ClefError("empty label", path=csv_path, line=line_no)
            raw_labels.append((line_no, value))
        path = Path(rel).expanduser()
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            missing.append(str(path))
            if task == "fer":
                raw_labels.pop()
            continue
        sample.path = str(path)
        samples.append(sample)

    class_names: list[str] = []
    if task == "fer":
        class_names = _assign_labels(samples, raw_labels, classes, csv_path)
    elif task == "au":
        class_names = [f"AU{au}" for au, _ in au_cols]
    if not samples:
        raise ClefError(f"none of the images listed in the manifest exists ({len(missing)} missing, "
                        f"first: {missing[0] if missing else '-'}; "
                        f"relative paths are read from {base})", path=csv_path)
    activities = sorted({s.activity for s in samples if s.activity}, key=natural_task_key)
    return DatasetBundle(name=name, task=task, classes=class_names, samples=samples,
                         root=csv_path, prompts=prompts, activities=activities,
                         canonical_folds=None, skipped=len(missing), missing=missing)


def _task_of(col: dict[str, int], au_cols: list, csv_path: Path) -> str:
    """fer (a label column), au (AU columns) or activity (only an activity column)."""
    if "label" in col and au_cols:
        raise ClefError("the manifest has both a label column and AU columns; keep one",
                        path=csv_path, line=1)
    if "label" in col:
        return "fer"
    if au_cols:
        return "au"
    if "activity" in col:
        return "activity"
    raise ClefError("no label column, AU columns (AU1, AU12, ...) or activity column",
                    path=csv_path, line=1)


def _assign_labels(samples: list[Sample], raw: list[tuple[int, str]],
                   classes: Sequence[str] | None, csv_path: Path) -> list[str]:
    values = [v for _, v in raw]
    if classes is not None:
        names = [str(c) for c in classes]
        index = {n: i for i, n in enumerate(names)}
        for s, (line_no, v) in zip(samples, raw):
            if v in index:
                s.label = index[v]
            elif v.isdigit() and int(v) < len(names):
                s.label = int(v)
            else:
                raise ClefError(f"label {v!r} is not one of the given classes {names}",
                                path=csv_path, line=line_no)
        return names
    if values and all(v.isdigit() for v in values):
        top = max(int(v) for v in values)
        for s, v in zip(samples, values):
            s.label = int(v)
        return [str(i) for i in range(top + 1)]
    for line_no, v in raw:
        if v.isdigit():
            raise ClefError(f"label {v!r} is a number but other labels are class names; use "
                            f"one kind", path=csv_path, line=line_no)
    names = sorted(set(values))
    index = {n: i for i, n in enumerate(names)}
    for s, v in zip(samples, values):
        s.label = index[v]
    return names
