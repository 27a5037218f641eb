"""Subject-exclusive cross-validation folds and official splits.

:func:`make_folds` uses a bundle's canonical test lists (BP4D, DISFA) when their count
matches ``k``; otherwise it generates a deterministic, seeded, subject-exclusive split
balanced by frame count. :func:`save_folds` / :func:`load_folds` keep the folds of a run
as JSON. :func:`official_split` gives the train/test split of FER sets that have one.
"""

from __future__ import annotations

import heapq
import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from clefctl.data.records import DatasetBundle, Sample, subject_of
from clefctl.errors import ClefError
from clefctl.paths import write_json_atomic

FOLDS_FORMAT = "clefctl-folds"
FOLDS_VERSION = 1


@dataclass
class Fold:
    index: int                     # 1-based
    train_subjects: list[str]
    test_subjects: list[str]


def subject_frame_counts(samples: Sequence[Sample]) -> dict[str, int]:
    """Frames per subject (a sample without a subject is its own subject)."""
    return dict(Counter(subject_of(s) for s in samples))


def make_folds(bundle: DatasetBundle, k: int, seed: int = 0,
               allow_generated: bool = False) -> list[Fold]:
    """``k`` subject-exclusive folds; fold i tests on part i and trains on the rest.

    Canonical lists (``bundle.canonical_folds``) are used exactly, restricted to the
    subjects present, when ``k`` equals their count; a different ``k`` is an error unless
    ``allow_generated``. Generated folds: subjects sorted by frame count, largest first
    (ties in an order drawn from ``seed``), each put into the part with the fewest frames
    so far (ties: fewer subjects, then lower part number). The same bundle, ``k`` and
    ``seed`` always give the same folds; the seed only matters where counts tie.
    """
    k = int(k)
    counts = subject_frame_counts(bundle.samples)
    subjects = list(counts)
    if k < 2:
        raise ClefError(f"need at least 2 folds, got {k}")
    canonical = bundle.canonical_folds
    if canonical and len(canonical) != k and not allow_generated:
        raise ClefError(f"{bundle.name} has {len(canonical)} canonical folds but {k} were "
                        f"asked for; use --folds {len(canonical)} or allow generated folds")
    if canonical and len(canonical) == k:
        return _canonical(bundle.name, canonical, subjects)
    if k > len(subjects):
        raise ClefError(f"{bundle.name} has {len(subjects)} subjects, too few for {k} "
                        f"subject-exclusive folds")
    rng = np.random.default_rng(seed)
    tie = {s: int(r) for s, r in zip(sorted(subjects), rng.permutation(len(subjects)))}
    order = sorted(subjects, key=lambda s: (-counts[s], tie[s]))
    heap = [(0, 0, i) for i in range(k)]  # (frames, subjects, part index)
    parts: list[list[str]] = [[] for _ in range(k)]
    for s in order:
        frames, n, i = heapq.heappop(heap)
        parts[i].append(s)
        heapq.heappush(heap, (frames + counts[s], n + 1, i))
    return _folds_from_parts([sorted(p) for p in parts], subjects)


def _canonical(name: str, canonical: list[list[str]], subjects: list[str]) -> list[Fold]:
    present = set(subjects)
    listed = {s for part in canonical for s in part}
    extra = sorted(present - listed)
    if extra:
        raise ClefError(f"{name} subjects {', '.join(extra[:10])} are in no canonical fold; "
                        f"remove them or use generated folds")
    parts = [[s for s in part if s in present] for part in canonical]
    for i, part in enumerate(parts, start=1):
        if not part:
            raise ClefError(f"no subject of canonical fold {i} of {name} is present; use "
                            f"generated folds for a partial copy")
    return _folds_from_parts(parts, subjects)


def _folds_from_parts(parts: list[list[str]], subjects: list[str]) -> list[Fold]:
    folds = []
    for i, test in enumerate(parts, start=1):
        test_set = set(test)
        train = sorted(s for s in subjects if s not in test_set)
        folds.append(Fold(index=i, train_subjects=train, test_subjects=list(test)))
    return folds


def split_samples(bundle: DatasetBundle | Sequence[Sample],
                  fold: Fold) -> tuple[list[Sample], list[Sample]]:
    """(train samples, test samples) of ``fold``; samples of neither list are left out."""
    samples = bundle.samples if isinstance(bundle, DatasetBundle) else list(bundle)
    train, test = set(fold.train_subjects), set(fold.test_subjects)
    overlap = train & test
    if overlap:
        raise ClefError(f"fold {fold.index} puts subjects {sorted(overlap)[:5]} in both train "
                        f"and test")
    return ([s for s in samples if subject_of(s) in train],
            [s for s in samples if subject_of(s) in test])


def official_split(bundle: DatasetBundle) -> tuple[list[Sample], list[Sample]]:
    """(train, test) by the official split; "val" samples (FERPlus) are in neither.

    AffectNet's validation list is its test split; use :func:`samples_in_split` for val.
    """
    if not any(s.split for s in bundle.samples):
        raise ClefError(f"{bundle.name} has no official split; use subject folds "
                        f"(--folds K) instead")
    train = samples_in_split(bundle, "train")
    test = samples_in_split(bundle, "test")
    if not train or not test:
        raise ClefError(f"{bundle.name}: the official split has {len(train)} train and "
                        f"{len(test)} test samples; both must be non-empty")
    return train, test


def samples_in_split(bundle: DatasetBundle, split: str) -> list[Sample]:
    """Samples whose official split is ``split`` ("train", "val" or "test")."""
    return [s for s in bundle.samples if s.split == split]


def save_folds(folds: Sequence[Fold], path: str | Path, **meta) -> Path:
    """Write folds as JSON atomically; ``meta`` (data set, seed, ...) is stored alongside."""
    doc = {"format": FOLDS_FORMAT, "version": FOLDS_VERSION, **meta,
           "folds": [asdict(f) for f in folds]}
    return write_json_atomic(path, doc)


def load_folds(path: str | Path) -> list[Fold]:
    """Read folds written by :func:`save_folds`; a malformed file -> ClefError naming it."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ClefError("folds file not found", path=path)
    except json.JSONDecodeError as exc:
        raise ClefError(f"folds file is not valid JSON ({exc.msg})", path=path, line=exc.lineno)
    if not isinstance(doc, dict) or doc.get("format") != FOLDS_FORMAT:
        raise ClefError(f"not a clefctl folds file (no \"format\": \"{FOLDS_FORMAT}\")",
                        path=path)
    folds = []
    try:
        for item in doc["folds"]:
            fold = Fold(index=int(item["index"]),
                        train_subjects=[str(s) for s in item["train_subjects"]],
                        test_subjects=[str(s) for s in item["test_subjects"]])
            if set(fold.train_subjects) & set(fold.test_subjects):
                raise ClefError(f"fold {fold.index} has subjects in both train and test",
                                path=path)
            folds.append(fold)
    except (KeyError, TypeError, ValueError):
        raise ClefError("malformed folds file (each fold needs index, train_subjects, "
                        "test_subjects)", path=path)
    if [f.index for f in folds] != list(range(1, len(folds) + 1)):
        raise ClefError("fold indices must be 1, 2, ... in order", path=path)
    return folds


def describe_folds(bundle: DatasetBundle, folds: Sequence[Fold]) -> list[dict]:
    """Per fold: index, train/test subjects and their frame counts (for reports and JSON)."""
    counts = subject_frame_counts(bundle.samples)
    return [{"index": f.index,
             "train_subjects": list(f.train_subjects),
             "test_subjects": list(f.test_subjects),
             "train_frames": sum(counts.get(s, 0) for s in f.train_subjects),
             "test_frames": sum(counts.get(s, 0) for s in f.test_subjects)}
            for f in folds]
