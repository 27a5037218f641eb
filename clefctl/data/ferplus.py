"""FERPlus adapter: FER2013 pixels with the FERPlus 10-annotator labels.

Files (same row order)::

    fer2013.csv      emotion, pixels, Usage   (48x48 grey as a space-separated string)
    fer2013new.csv   Usage, Image name, neutral, happiness, surprise, sadness, anger,
                     disgust, fear, contempt, unknown, NF   (vote counts)

Label = majority vote over the ten vote columns; a row is dropped (counted in
``bundle.dropped``) when the majority is ``unknown`` or ``NF`` or it has no votes. Ties
go to the first column in the order above, so an emotion tied with unknown/NF wins and
e.g. a neutral/happiness tie is neutral. Usage Training / PublicTest / PrivateTest ->
split train / val / test. Pixels are kept in memory (``Sample.pixels``, HxW uint8).
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np

from clefctl.data.records import DatasetBundle, Sample, csv_header, open_text, require_file, require_root
from clefctl.errors import ClefError

FERPLUS_CLASSES = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
                   "contempt"]
VOTE_COLUMNS = FERPLUS_CLASSES + ["unknown", "NF"]
USAGE_SPLIT = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
_LAYOUT = "fer2013.csv and fer2013new.csv"
_SIDE = 48


def majority(votes: list[float]) -> int | None:
    """Index into ``VOTE_COLUMNS`` of the majority (first column wins ties); None if no votes."""
    best = max(votes)
    if best <= 0:
        return None
    return votes.index(best)


def load(root: Path, *, name: str = "ferplus", prompts: str = "ferplus") -> DatasetBundle:
    """Read FERPlus from a folder holding fer2013.csv and fer2013new.csv."""
    root = require_root(root, "FERPlus", "FERPlus", _LAYOUT)
    pix_file = require_file(root / "fer2013.csv", "FERPlus", "FER2013 pixel file")
    vote_file = require_file(root / "fer2013new.csv", "FERPlus", "FERPlus vote file")
    pixel_rows = _read_pixels(pix_file)
    vote_rows = _read_votes(vote_file)
    if len(pixel_rows) != len(vote_rows):
        raise ClefError(f"{pix_file.name} has {len(pixel_rows)} image rows but "
                        f"{vote_file.name} has {len(vote_rows)}; both must list the same "
                        f"images in the same order", path=vote_file)
    samples: list[Sample] = []
    dropped = 0
    for idx, ((p_line, usage, pixels), (v_line, v_usage, votes)) in enumerate(
            zip(pixel_rows, vote_rows)):
        if usage != v_usage:
            raise ClefError(f"row {idx + 1} is {v_usage!r} here but {usage!r} in "
                            f"{pix_file.name} (line {p_line}): the files are not in the same "
                            f"order", path=vote_file, line=v_line)
        winner = majority(votes)
        if winner is None or winner >= len(FERPLUS_CLASSES):
            dropped += 1
            continue
        sid = f"fer{idx:07d}"
        samples.append(Sample(id=sid, subject=sid, pixels=pixels, split=USAGE_SPLIT[usage],
                              label=winner))
    if not samples:
        raise ClefError("no FERPlus image has an emotion majority", path=vote_file)
    return DatasetBundle(name=name, task="fer", classes=list(FERPLUS_CLASSES), samples=samples,
                         root=root, prompts=prompts, activities=[], canonical_folds=None,
                         dropped=dropped)


def _header_index(header: list[str], wanted: list[str], path: Path) -> list[int]:
    missing = [w for w in wanted if w not in header]
    if missing:
        raise ClefError(f"column(s) {', '.join(missing)} missing from the header",
                        path=path, line=1)
    return [header.index(w) for w in wanted]


def _usage(value: str, path: Path, line: int) -> str:
    value = value.strip()
    if value not in USAGE_SPLIT:
        raise ClefError(f"Usage {value!r} is not Training, PublicTest or PrivateTest",
                        path=path, line=line)
    return value


def _read_pixels(path: Path) -> list[tuple[int, str, np.ndarray]]:
    out = []
    with open_text(path) as fh:
        reader = csv.reader(fh)
        header = csv_header(reader, path, "a header emotion,pixels,Usage")
        pcol, ucol = _header_index(header, ["pixels", "Usage"], path)
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                text, usage = row[pcol], row[ucol]
            except IndexError:
                raise ClefError("malformed line: too few columns", path=path, line=line_no)
            usage = _usage(usage, path, line_no)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error")
                    values = np.fromstring(text, dtype=np.int16, sep=" ")
            except (ValueError, DeprecationWarning):
                values = np.zeros(0, dtype=np.int16)
            if values.size != _SIDE * _SIDE or values.min() < 0 or values.max() > 255:
                raise ClefError(f"pixels must be {_SIDE * _SIDE} grey values 0-255 separated "
                                f"by spaces", path=path, line=line_no)
            out.append((line_no, usage, values.astype(np.uint8).reshape(_SIDE, _SIDE)))
    return out


def _read_votes(path: Path) -> list[tuple[int, str, list[float]]]:
    out = []
    with open_text(path) as fh:
        reader = csv.reader(fh)
        header = csv_header(reader, path, "the FERPlus header row")
        ucol = _header_index(header, ["Usage"], path)[0]
        vcols = _header_index(header, VOTE_COLUMNS, path)
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                usage = _usage(row[ucol], path, line_no)
                votes = [float(row[c]) if row[c].strip() else 0.0 for c in vcols]
            except (ValueError, IndexError):
                raise ClefError("malformed line: expected Usage, Image name and ten vote counts",
                                path=path, line=line_no)
            if any(v < 0 for v in votes):
                raise ClefError("negative vote count", path=path, line=line_no)
            out.append((line_no, usage, votes))
    return out
