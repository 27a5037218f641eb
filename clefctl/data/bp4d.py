"""BP4D-Spontaneous and BP4D+ adapter (also used for the synthetic AU set).

Layout (both data sets)::

    AUCoding/AU_OCC/{subject}_{task}.csv   header row of AU numbers; column "0" = frame index;
                                           values 0/1, 9 = not coded
    {subject}/{task}/{frame}.jpg           frame number matched numerically (padding varies)

``mode="au"`` (default) gives one sample per coded frame with ``aus``/``au_mask`` for the
chosen AUs; a 9 (or an empty cell) sets ``au_mask`` to 0 for that AU, and a frame with
none of the chosen AUs coded is left out. Frames listed in a CSV but missing on disk are
skipped, counted in ``bundle.skipped`` and listed in ``bundle.missing``.

``mode="pretrain"`` lists every frame under ``{subject}/{task}/`` with only its task
(``task="activity"``, no labels); ``max_frames`` keeps at most that many, split equally
over the tasks (a task with fewer frames gives its share to the others) and spread
evenly over each task's frames in (subject, frame) order.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from clefctl.data.records import (DatasetBundle, Sample, list_frames, natural_task_key,
                                  open_text, parse_aus, require_root)
from clefctl.errors import ClefError

LITERATURE_AUS = (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)
BP4D_TASKS = tuple(f"T{i}" for i in range(1, 9))
BP4DPLUS_TASKS = tuple(f"T{i}" for i in range(1, 11))

# datasets.md: identical in the public JAA-Net and ME-GraphAU lists.
BP4D_PARTS = (
    ["F001", "F002", "F008", "F009", "F010", "F016", "F018", "F023",
     "M001", "M004", "M007", "M008", "M012", "M014"],
    ["F003", "F005", "F011", "F013", "F020", "F022",
     "M002", "M005", "M010", "M011", "M013", "M016", "M017", "M018"],
    ["F004", "F006", "F007", "F012", "F014", "F015", "F017", "F019", "F021",
     "M003", "M006", "M009", "M015"],
)
# Fold 1 tests on part 3, fold 2 on part 2, fold 3 on part 1.
BP4D_CANONICAL_FOLDS = [list(BP4D_PARTS[2]), list(BP4D_PARTS[1]), list(BP4D_PARTS[0])]

_NOT_CODED = 9
_TASK_DIR = re.compile(r"^T\d+$")
_LAYOUT = "AUCoding/AU_OCC/{subject}_{task}.csv and {subject}/{task}/{frame}.jpg"


def load(root: Path, *, aus: Sequence | str | None = None, mode: str = "au",
         max_frames: int | None = None, tasks: Sequence[str] | None = BP4D_TASKS,
         name: str = "bp4d", prompts: str = "bp4d", label: str = "BP4D",
         folder: str = "BP4D", canonical_folds: list[list[str]] | None = None,
         use_canonical: bool = True) -> DatasetBundle:
    """Read a BP4D-layout folder.

    ``aus`` selects AU columns (default the 12 literature AUs); ``tasks`` restricts the
    task ids (None = every ``T<n>`` present); ``name``/``prompts``/``label``/``folder``
    name the data set; the BP4D canonical folds are attached unless ``use_canonical`` is
    False or ``canonical_folds`` gives others.
    """
    root = require_root(root, label, folder, _LAYOUT)
    if canonical_folds is None and use_canonical and name == "bp4d":
        canonical_folds = [list(f) for f in BP4D_CANONICAL_FOLDS]
    if not use_canonical:
        canonical_folds = None
    task_filter = None if tasks is None else {str(t) for t in tasks}
    if mode == "au":
        return _load_au(root, parse_aus(aus, LITERATURE_AUS), task_filter, name, prompts,
                        label, canonical_folds)
    if mode == "pretrain":
        return _load_pretrain(root, task_filter, max_frames, name, prompts, label,
                              canonical_folds)
    raise ClefError(f"unknown {label} mode {mode!r}: use 'au' or 'pretrain'")


def load_plus(root: Path, **opts) -> DatasetBundle:
    """BP4D+ (tasks T1-T10, no canonical folds): :func:`load` with BP4D+ defaults."""
    opts.setdefault("tasks", BP4DPLUS_TASKS)
    opts.setdefault("name", "bp4dplus")
    opts.setdefault("prompts", "bp4dplus")
    opts.setdefault("label", "BP4D+")
    opts.setdefault("folder", "BP4D+")
    return load(root, **opts)


def _load_au(root: Path, aus: list[int], task_filter: set[str] | None, name: str,
             prompts: str, label: str, canonical_folds) -> DatasetBundle:
    occ = root / "AUCoding" / "AU_OCC"
    if not occ.is_dir():
        raise ClefError(f"{label} AU label folder not found (expected {_LAYOUT}; "
                        f"use mode='pretrain' for frames without AU codes)", path=occ)
    csv_files = sorted(p for p in occ.iterdir() if p.suffix.lower() == ".csv")
    if not csv_files:
        raise ClefError(f"no {{subject}}_{{task}}.csv label files in the {label} AU folder",
                        path=occ)
    samples: list[Sample] = []
    missing: list[str] = []
    tasks_seen: set[str] = set()
    for path in csv_files:
        if "_" not in path.stem:
            raise ClefError(f"{label} label file name is not {{subject}}_{{task}}.csv",
                            path=path)
        subject, task = path.stem.rsplit("_", 1)
        if task_filter is not None and task not in task_filter:
            continue
        frames = list_frames(root / subject / task)
        rows = _read_occ_csv(path, aus)
        for frame, codes, mask in rows:
            img = frames.get(frame)
            if img is None:
                missing.append(f"{root / subject / task} frame {frame}")
                continue
            samples.append(Sample(id=f"{subject}/{task}/{frame}", subject=subject,
                                  path=str(img), activity=task, frame=frame,
                                  aus=codes, au_mask=mask))
            tasks_seen.add(task)
    if not samples:
        raise ClefError(f"no {label} frames found: the label files list {len(missing)} frames but "
                        f"none exists as {{subject}}/{{task}}/{{frame}}.jpg under the folder",
                        path=root)
    return DatasetBundle(name=name, task="au", classes=[f"AU{a}" for a in aus],
                         samples=samples, root=root, prompts=prompts,
                         activities=sorted(tasks_seen, key=natural_task_key),
                         canonical_folds=canonical_folds, skipped=len(missing),
                         missing=missing)


def _read_occ_csv(path: Path, aus: list[int]) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Parse one AU_OCC file -> [(frame, aus float32 (C,), mask float32 (C,))]."""
    with open_text(path) as fh:
        reader = csv.reader(fh)
        try:
            header = _trim(next(reader))
        except StopIteration:
            raise ClefError("empty AU label file (expected a header row of AU numbers)",
                            path=path, line=1)
        try:
            numbers = [int(float(h)) for h in header]
        except ValueError:
            raise ClefError(f"header is not a row of AU numbers: {','.join(header)[:80]}",
                            path=path, line=1)
        if 0 not in numbers:
            raise ClefError("no frame-index column '0' in the header", path=path, line=1)
        frame_col = numbers.index(0)
        cols = []
        for au in aus:
            if au not in numbers:
                raise ClefError(f"AU {au} column missing (the header has AUs "
                                f"{sorted(n for n in numbers if n)}); choose AUs the file "
                                f"codes", path=path, line=1)
            cols.append(numbers.index(au))
        out = []
        width = len(header)
        for line_no, row in enumerate(reader, start=2):
            row = _trim(row)
            if not row:
                continue
            if len(row) != width:
                raise ClefError(f"malformed line: {len(row)} values, the header has {width}",
                                path=path, line=line_no)
            try:
                frame = int(float(row[frame_col]))
                values = [_code(row[c]) for c in cols]
            except ValueError:
                raise ClefError(f"malformed line: expected a frame number and AU codes "
                                f"0, 1 or 9, got {','.join(row)[:80]}", path=path, line=line_no)
            mask = np.array([v != _NOT_CODED for v in values], dtype=np.float32)
            if not mask.any():
                continue
            codes = np.array([1.0 if v == 1 else 0.0 for v in values], dtype=np.float32)
            out.append((frame, codes, mask))
    return out


def _trim(row: list[str]) -> list[str]:
    row = [c.strip() for c in row]
    while row and row[-1] == "":
        row.pop()
    return row


def _code(text: str) -> int:
    if text == "":
        return _NOT_CODED
    v = float(text)
    if v not in (0.0, 1.0, 9.0):
        raise ValueError(text)
    return int(v)


def _load_pretrain(root: Path, task_filter: set[str] | None, max_frames: int | None,
                   name: str, prompts: str, label: str, canonical_folds) -> DatasetBundle:
    # (subject, frame, path) tuples first: BP4D+ has ~1.5 M frames and only the sampled
    # ones become Sample records.
    per_task: dict[str, list[tuple[str, int, Path]]] = {}
    with os.scandir(root) as it:
        subjects = sorted(e.name for e in it if e.is_dir() and e.name != "AUCoding"
                          and not e.name.startswith("."))
    for subject in subjects:
        sdir = root / subject
        with os.scandir(sdir) as it:
            task_dirs = sorted(e.name for e in it if e.is_dir() and _TASK_DIR.match(e.name))
        for task in task_dirs:
            if task_filter is not None and task not in task_filter:
                continue
            frames = list_frames(sdir / task)
            per_task.setdefault(task, []).extend((subject, f, frames[f]) for f in sorted(frames))
    per_task = {t: items for t, items in per_task.items() if items}
    if not per_task:
        raise ClefError(f"no {label} frames found under {{subject}}/{{task}}/ "
                        f"(task folders T1, T2, ...)", path=root)
    activities = sorted(per_task, key=natural_task_key)
    if max_frames is not None:
        quotas = even_quotas({t: len(per_task[t]) for t in activities}, int(max_frames))
        per_task = {t: _spread(per_task[t], quotas[t]) for t in activities}
    samples = [Sample(id=f"{subject}/{t}/{frame}", subject=subject, path=str(path),
                      activity=t, frame=frame)
               for t in activities for subject, frame, path in per_task[t]]
    return DatasetBundle(name=name, task="activity", classes=[], samples=samples, root=root,
                         prompts=prompts, activities=activities,
                         canonical_folds=canonical_folds)


def even_quotas(sizes: dict[str, int], total: int) -> dict[str, int]:
    """Split ``total`` equally over groups; a group smaller than its share gives the rest
    to the others (water filling). Remainders go to the first groups in order."""
    if total < 0:
        raise ClefError(f"max_frames must be positive, got {total}")
    quotas = {k: 0 for k in sizes}
    open_groups = [k for k in sizes if sizes[k] > 0]
    budget = total
    while budget > 0 and open_groups:
        share, extra = divmod(budget, len(open_groups))
        if share == 0:
            for k in open_groups[:extra]:
                quotas[k] += 1
            break
        still_open = []
        for k in open_groups:
            take = min(share, sizes[k] - quotas[k])
            quotas[k] += take
            budget -= take
            if quotas[k] < sizes[k]:
                still_open.append(k)
        open_groups = still_open
    return quotas


def _spread(items: list, n: int) -> list:
    """``n`` items evenly spaced over ``items`` (all of them when n >= len)."""
    if n >= len(items):
        return items
    if n <= 0:
        return []
    idx = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in idx]
