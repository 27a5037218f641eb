"""BP4D-Spontaneous and BP4D+ adapter (also used for the synthetic AU set).

Layout (both data sets)::

    AUCoding/AU_OCC/{subject}_{task}.csv   header row of AU numbers; column "0" = frame index;
                                           values 0/1, 9 = not coded
    {subject}/{task}/{frame}.jpg           frame number matched numerically (padding varies)

``mode="au"`` (default) gives one sample per coded frame with ``aus``/``au_mask`` for the
chosen AUs; a 9 (or an empty cell) sets ``au_mask`` to 0 for that AU, and a frame with
none of the chosen AUs coded is left out. Frames listed in a CSV but missing on disk are
skipped, counted in ``bundle.skipped`` and listed in ``bundle.missing``.

At BP4D+'s scale (1.5M labelled frames) the label files are parsed column-wise (pandas' C
reader; a file it cannot vouch for is read again row by row, which names the bad line), frame
folders are listed once each, frames with the same AU codes share one read-only ``aus`` /
``au_mask`` array, and the result is kept in the index cache (:mod:`clefctl.data.sample_index`)
while the label files and frame folders are unchanged.

``mode="pretrain"`` lists every frame under ``{subject}/{task}/`` with only its task
(``task="activity"``, no labels); ``max_frames`` keeps at most that many, split equally
over the tasks (a task with fewer frames gives its share to the others) and spread
evenly over each task's frames in (subject, frame) order.
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from clefctl.data.sample_index import cached_bundle
from clefctl.data.records import (DatasetBundle, Sample, frame_names, natural_task_key,
                                  open_text, parse_aus, require_root)
from clefctl.data.table import no_gc
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
    key = {"adapter": "bp4d", "root": str(root.resolve()), "mode": mode, "name": name, "prompts": prompts,
           "label": label, "tasks": None if task_filter is None else sorted(task_filter),
           "canonical_folds": canonical_folds}
    if mode == "au":
        aus = parse_aus(aus, LITERATURE_AUS)
        csv_files = _label_files(root, label, task_filter)
        folders = [root / subject / task for subject, task, _ in csv_files]
        return cached_bundle(dict(key, aus=aus), [p for _, _, p in csv_files] + folders, lambda: _load_au(
            root, aus, csv_files, name, prompts, label, canonical_folds))
    if mode == "pretrain":
        folders = _task_folders(root, task_filter)
        inputs = [root] + sorted({root / s for s, _ in folders}) + [root / s / t for s, t in folders]
        return cached_bundle(dict(key, max_frames=max_frames), inputs, lambda: _load_pretrain(
            root, folders, max_frames, name, prompts, label, canonical_folds))
    raise ClefError(f"unknown {label} mode {mode!r}: use 'au' or 'pretrain'")


def load_plus(root: Path, **opts) -> DatasetBundle:
    """BP4D+ (tasks T1-T10, no canonical folds): :func:`load` with BP4D+ defaults."""
    opts.setdefault("tasks", BP4DPLUS_TASKS)
    opts.setdefault("name", "bp4dplus")
    opts.setdefault("prompts", "bp4dplus")
    opts.setdefault("label", "BP4D+")
    opts.setdefault("folder", "BP4D+")
    return load(root, **opts)


def _label_files(root: Path, label: str, task_filter: set[str] | None) -> list[tuple[str, str, Path]]:
    """(subject, task, path) of each ``AUCoding/AU_OCC/{subject}_{task}.csv`` of the chosen tasks."""
    occ = root / "AUCoding" / "AU_OCC"
    if not occ.is_dir():
        raise ClefError(f"{label} AU label folder not found (expected {_LAYOUT}; "
                        f"use mode='pretrain' for frames without AU codes)", path=occ)
    csv_files = sorted(p for p in occ.iterdir() if p.suffix.lower() == ".csv")
    if not csv_files:
        raise ClefError(f"no {{subject}}_{{task}}.csv label files in the {label} AU folder",
                        path=occ)
    out = []
    for path in csv_files:
        if "_" not in path.stem:
            raise ClefError(f"{label} label file name is not {{subject}}_{{task}}.csv",
                            path=path)
        subject, task = path.stem.rsplit("_", 1)
        if task_filter is None or task in task_filter:
            out.append((subject, task, path))
    return out


def _load_au(root: Path, aus: list[int], csv_files: list[tuple[str, str, Path]], name: str,
             prompts: str, label: str, canonical_folds) -> DatasetBundle:
    samples: list[Sample] = []
    missing: list[str] = []
    tasks_seen: set[str] = set()
    shared: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}  # one array pair per AU code pattern
    with no_gc():
        for subject, task, path in csv_files:
            folder = root / subject / task
            names = _frame_names(folder)
            frames, codes, mask = _read_occ_csv(path, aus)
            if not len(frames):
                continue
            patterns = np.concatenate([codes, mask], axis=1).astype(np.uint8)
            prefix, where = f"{subject}/{task}/", f"{folder}{os.sep}"
            for frame, pattern in zip(frames.tolist(), patterns):
                name_on_disk = names.get(frame)
                if name_on_disk is None:
                    missing.append(f"{folder} frame {frame}")
                    continue
                pair = shared.get(pattern.tobytes())
                if pair is None:
                    pair = shared[pattern.tobytes()] = _frozen_pair(pattern, len(aus))
                samples.append(Sample(id=f"{prefix}{frame}", subject=subject, path=where + name_on_disk,
                                      activity=task, frame=frame, aus=pair[0], au_mask=pair[1]))
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


def _frame_names(folder: Path) -> dict[int, str]:
    """Frame number -> file name in ``folder`` (one listing; the benchmark replaces it)."""
    return frame_names(folder)


def _frozen_pair(pattern: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    codes, mask = pattern[:c].astype(np.float32), pattern[c:].astype(np.float32)
    codes.flags.writeable = mask.flags.writeable = False  # shared by every frame with this pattern
    return codes, mask


def _read_occ_csv(path: Path, aus: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse one AU_OCC file -> (frames int64 (n,), aus float32 (n, C), mask float32 (n, C)), the
    frames with at least one chosen AU coded. Column-wise when the file is regular; otherwise (or
    when anything is off) row by row, which raises ClefError naming the bad line."""
    fast = _read_occ_columns(path, aus)
    if fast is not None:
        return fast
    rows = _read_occ_rows(path, aus)
    if not rows:
        c = len(aus)
        return np.zeros(0, np.int64), np.zeros((0, c), np.float32), np.zeros((0, c), np.float32)
    return (np.array([r[0] for r in rows], dtype=np.int64), np.stack([r[1] for r in rows]),
            np.stack([r[2] for r in rows]))


def _read_occ_columns(path: Path, aus: list[int]):
    """The fast reader of :func:`_read_occ_csv`, or None when the file needs the row reader: the
    header, widths, frame numbers and codes are checked here, and anything the row reader would
    read differently or refuse sends the file there."""
    with open_text(path) as fh:  # decoding and NUL checks as for every list file
        text = "".join(fh)
    head, _, body = text.partition("\n")
    try:
        header = _trim(next(csv.reader([head.rstrip("\r")])))
        numbers = [int(float(h)) for h in header]
        frame_col, cols = numbers.index(0), [numbers.index(a) for a in aus]
    except (StopIteration, ValueError):
        return None
    c = len(aus)
    if not body.strip():
        return np.zeros(0, np.int64), np.zeros((0, c), np.float32), np.zeros((0, c), np.float32)
    import pandas as pd

    try:
        values = pd.read_csv(io.StringIO(body), header=None, dtype=np.float64, engine="c").to_numpy()
    except (ValueError, pd.errors.ParserError):
        return None
    if values.shape[1] != len(header) or np.isnan(values[:, -1]).any() or np.isnan(values[:, frame_col]).any():
        return None  # ragged or blank-ended rows: the row reader says which line
    codes = np.nan_to_num(values[:, cols], nan=_NOT_CODED)
    if not np.isin(codes, (0.0, 1.0, float(_NOT_CODED))).all():
        return None
    mask = codes != _NOT_CODED
    keep = mask.any(axis=1)
    return (np.trunc(values[keep, frame_col]).astype(np.int64), (codes[keep] == 1).astype(np.float32),
            mask[keep].astype(np.float32))


def _read_occ_rows(path: Path, aus: list[int]) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Parse one AU_OCC file row by row -> [(frame, aus float32 (C,), mask float32 (C,))]."""
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


def _task_folders(root: Path, task_filter: set[str] | None) -> list[tuple[str, str]]:
    """(subject, task) of every ``{subject}/T<n>/`` folder of the chosen tasks, in name order."""
    with os.scandir(root) as it:
        subjects = sorted(e.name for e in it if e.is_dir() and e.name != "AUCoding"
                          and not e.name.startswith("."))
    out = []
    for subject in subjects:
        with os.scandir(root / subject) as it:
            task_dirs = sorted(e.name for e in it if e.is_dir() and _TASK_DIR.match(e.name))
        out += [(subject, task) for task in task_dirs if task_filter is None or task in task_filter]
    return out


def _load_pretrain(root: Path, folders: list[tuple[str, str]], max_frames: int | None,
                   name: str, prompts: str, label: str, canonical_folds) -> DatasetBundle:
    # (subject, frame, file name) tuples first: BP4D+ has ~1.5 M frames and only the sampled
    # ones become Sample records.
    per_task: dict[str, list[tuple[str, int, str]]] = {}
    for subject, task in folders:
        frames = _frame_names(root / subject / task)
        per_task.setdefault(task, []).extend((subject, f, frames[f]) for f in sorted(frames))
    per_task = {t: items for t, items in per_task.items() if items}
    if not per_task:
        raise ClefError(f"no {label} frames found under {{subject}}/{{task}}/ "
                        f"(task folders T1, T2, ...)", path=root)
    activities = sorted(per_task, key=natural_task_key)
    if max_frames is not None:
        quotas = even_quotas({t: len(per_task[t]) for t in activities}, int(max_frames))
        per_task = {t: _spread(per_task[t], quotas[t]) for t in activities}
    with no_gc():
        samples = [Sample(id=f"{subject}/{t}/{frame}", subject=subject,
                          path=f"{root / subject / t}{os.sep}{file}", activity=t, frame=frame)
                   for t in activities for subject, frame, file in per_task[t]]
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
