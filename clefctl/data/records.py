"""Plain sample records (no torch): :class:`Sample` and :class:`DatasetBundle` (the contracts of
docs/architecture.md), :func:`open_image` (path or in-memory pixels -> RGB PIL, cropped by the face
box) and :func:`cache_images` (a small training set's decoded images in memory). The torch
``SampleDataset`` that reads them, ``collate`` and ``encode_readable`` are in
:mod:`clefctl.data.dataset`.

The bottom section holds small helpers shared by the adapters (root checks, reading list
files as text (:func:`open_text`), numeric frame listing, AU id parsing).
"""

from __future__ import annotations

import codecs
import contextlib
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from clefctl.data.images import crop_to_box, decode_size_for, read_cropped
from clefctl.errors import ClefError

# ------------------------------------------------------------------------------------ records


@dataclass(slots=True)  # no per-sample __dict__: ~120 bytes less a sample (BP4D+ has 1.5M)
class Sample:
    id: str                        # unique within the data set, e.g. "F001/T1/123", "train_00001"
    subject: str                   # identity; "" when unknown (FER sets: one subject per image id)
    path: str | None = None        # image file on disk
    pixels: np.ndarray | None = None   # in-memory HxW (grey) or HxWx3 uint8 (FERPlus)
    activity: str | None = None    # recording task id, e.g. "T1" (BP4D/BP4D+); None otherwise
    frame: int | None = None
    split: str | None = None       # official split: "train" | "val" | "test"; None for k-fold sets
    label: int | None = None       # FER: class index into DatasetBundle.classes
    aus: np.ndarray | None = None  # AU: float32 (C,) in {0,1}
    au_mask: np.ndarray | None = None  # AU: float32 (C,), 1 = coded, 0 = not coded (BP4D's 9)
    box: tuple[int, int, int, int] | None = None  # face box x, y, w, h in the image

    def reading(self, path: str) -> "Sample":
        """This sample read from another image file (its face crop: no box), every label kept. Built
        positionally, ~5x faster than ``dataclasses.replace`` (the face-crop cache maps 1.5M frames);
        keep the order of the fields above."""
        return Sample(self.id, self.subject, path, self.pixels, self.activity, self.frame, self.split, self.label,
                      self.aus, self.au_mask, None)


@dataclass
class DatasetBundle:
    name: str                      # registry name, e.g. "bp4d", "synthetic-au"
    task: str                      # "au" | "fer" | "activity" (pre-training only, no labels)
    classes: list[str]             # AU ids like "AU1" (AU sets) or expression names (FER sets)
    samples: list[Sample]
    root: Path
    prompts: str                   # shipped prompt set name; "" = the user must pass --prompts
    activities: list[str]          # task ids present, e.g. ["T1", ..., "T8"]; [] for FER sets
    canonical_folds: list[list[str]] | None  # test subjects of fold 1..k when canonical, else None
    skipped: int = 0               # unreadable items skipped while loading (e.g. missing frames)
    dropped: int = 0               # items left out by a labelling rule (AffectNet 8-10, FERPlus NF)
    missing: list[str] = field(default_factory=list)  # listed in a label file, missing on disk

    def __len__(self) -> int:
        return len(self.samples)

    def missing_note(self) -> str | None:
        """One line about the listed-but-missing images ("5 listed images missing on disk
        (first: ...)"), or None when there are none."""
        if not self.missing:
            return None
        n = len(self.missing)
        return (f"{self.name}: {n} listed image{'s' if n != 1 else ''} missing on disk, left out "
                f"(first: {self.missing[0]})")

    @property
    def subjects(self) -> list[str]:
        """Distinct subjects in first-seen order (a sample without one counts as its own id)."""
        return list(dict.fromkeys(subject_of(s) for s in self.samples))


def subject_of(sample: Sample) -> str:
    """The identity used for subject-exclusive splits: ``subject``, else the sample id."""
    return sample.subject or sample.id


# --------------------------------------------------------------------------------- images


def open_image(sample: Sample, min_side: int | None = None) -> Image.Image:
    """Decode ``sample`` (file or in-memory pixels) as an RGB PIL image, cropped by its box.

    The box (x, y, w, h) is clamped to the image. ``min_side``: a JPEG file may be decoded
    reduced as long as the shorter side of the face (the box, else the image) keeps that many
    pixels (:func:`read_reduced`). Raises ``ClefError`` when the sample has neither a path nor
    pixels or the clamped box is empty, and PIL/OS errors when the file cannot be read or decoded
    (``SampleDataset`` catches both).
    """
    if sample.pixels is not None:
        arr = np.asarray(sample.pixels)
        if arr.dtype != np.uint8:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        img = Image.fromarray(arr).convert("RGB")
        cropped = img if sample.box is None else crop_to_box(img, sample.box)
    elif sample.path is not None:
        cropped = read_cropped(sample.path, sample.box, min_side)
    else:
        raise ClefError(f"sample {sample.id!r} has neither an image path nor pixels")
    if cropped is None:
        raise ClefError(f"face box {sample.box} lies outside the image of sample {sample.id!r}", path=sample.path)
    return cropped


def cache_images(samples: list, image_size: int, budget_mb: float = 1024.0) -> list:
    """Copies of ``samples`` with their decoded pixels in memory, when the data set is small.

    Each image is opened once (face box applied) and kept as uint8 RGB, shrunk (bicubic) only when
    its longer side exceeds ``2 * image_size``; training transforms then start from memory instead
    of decoding a JPEG per sample per epoch. When the first images suggest the whole set needs more
    than ``budget_mb``, the samples are returned unchanged. An unreadable image keeps its record, so
    the data set skips and counts it as before.
    """
    from dataclasses import replace

    samples = list(samples)
    if not samples or budget_mb <= 0:
        return samples
    limit = 2 * int(image_size)
    out, used = [], 0
    for i, s in enumerate(samples):
        if s.pixels is not None and s.box is None:
            out.append(s)
            continue
        try:
            img = open_image(s, min_side=decode_size_for(image_size))
        except Exception:  # noqa: BLE001 - left to SampleDataset, which skips and counts it
            out.append(s)
            continue
        if max(img.size) > limit:
            k = limit / max(img.size)
            img = img.resize((max(1, round(img.width * k)), max(1, round(img.height * k))), Image.BICUBIC)
        arr = np.asarray(img, dtype=np.uint8)
        used += arr.nbytes
        if i == 15 or i == len(samples) - 1 or used > budget_mb * 2 ** 20:
            if used / (i + 1) * len(samples) > budget_mb * 2 ** 20:
                return samples
        out.append(replace(s, path=None, pixels=arr, box=None))
    return out


# ------------------------------------------------------------------- adapter helpers

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
_TRAILING_NUMBER = re.compile(r"(\d+)$")


def require_root(root: Path | str | None, label: str, folder: str, expected: str) -> Path:
    """Check that a data set's root folder exists; the error says how to point at it.

    ``label`` is the data set's name ("BP4D"), ``folder`` its conventional sub-folder of
    the data root, ``expected`` a short description of what the folder must hold.
    """
    if root is None:
        raise ClefError(f"no {label} folder given: expected <data root>/{folder} holding "
                        f"{expected}; set --data-root DIR (or CLEF_DATA_ROOT) to the folder "
                        f"that contains {folder}/, or pass --dataset-root PATH")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ClefError(f"{label} folder not found: expected {root} holding {expected}; set "
                        f"--data-root DIR (or CLEF_DATA_ROOT) to the folder that contains "
                        f"{folder}/, or pass --dataset-root PATH pointing at the {label} "
                        f"folder itself", path=root)
    return root


def require_file(path: Path, label: str, what: str) -> Path:
    """A missing label file -> ClefError naming it."""
    if not path.is_file():
        raise ClefError(f"{label} {what} not found (is this a complete {label} copy?)",
                        path=path)
    return path


_BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
         (codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"),
         (codecs.BOM_UTF16_BE, "utf-16-be"))
_SAVE_AS_UTF8 = "save the file as UTF-8"


def _text_encoding(head: bytes) -> tuple[str, int]:
    """(encoding, BOM length) from a file's first bytes: its BOM's, else UTF-8."""
    for bom, encoding in _BOMS:  # UTF-32-LE before UTF-16-LE: its BOM starts with UTF-16's
        if head.startswith(bom):
            return encoding, len(bom)
    return "utf-8", 0


def csv_header(reader, path: Path | str, expected: str) -> list[str]:
    """The stripped header row of a ``csv.reader``; a ClefError at line 1 naming ``expected`` (what
    the header should hold) when the file is empty."""
    try:
        return [h.strip() for h in next(reader)]
    except StopIteration:
        raise ClefError(f"empty file (expected {expected})", path=path, line=1) from None


@contextlib.contextmanager
def open_text(path: Path | str) -> Iterator[Iterator[str]]:
    """Open a label or list file (CSV or plain text) for reading, as ``open(path, newline="")``
    would: the lines keep their ends, so ``csv.reader`` takes them too.

    The text is UTF-8 (a UTF-8 BOM is dropped), or UTF-16 / UTF-32 when the file starts with
    their byte-order mark. Anything else raises ClefError naming the file and the line of the
    first byte that is not UTF-8 (e.g. Latin-1 or Windows-1252 text), or of the first NUL
    (UTF-16 without a BOM), and saying to save the file as UTF-8.
    """
    path = Path(path)
    with open(path, "rb") as raw:
        encoding, skip = _text_encoding(raw.read(4))
        raw.seek(skip)
        text = io.TextIOWrapper(raw, encoding=encoding, errors="strict", newline="")
        yield _checked_lines(text, path, encoding)


def _checked_lines(text: io.TextIOWrapper, path: Path, encoding: str) -> Iterator[str]:
    try:
        for line in text:
            if "\x00" in line:
                break
            yield line
        else:
            return
    except UnicodeDecodeError:
        pass
    # the decoder reads ahead in chunks: find the first bad line again from the whole file
    line_no, problem = _first_problem(path, encoding)
    raise ClefError(problem, path=path, line=line_no, hint=_SAVE_AS_UTF8) from None


def _first_problem(path: Path, encoding: str) -> tuple[int | None, str]:
    """(line number, message) of the first NUL or byte that does not decode as ``encoding``."""
    data = path.read_bytes()
    data = data[_text_encoding(data[:4])[1]:]
    try:
        text = data.decode(encoding)
        bad = None
    except UnicodeDecodeError as exc:
        text, bad = data[:exc.start].decode(encoding), data[exc.start:exc.start + 1]
    if "\x00" in text:
        return (text[:text.index("\x00")].count("\n") + 1, "the file holds NUL characters" +
                (": it looks like UTF-16 text without a byte-order mark" if encoding == "utf-8" else ""))
    guess = "; Latin-1 or Windows-1252 perhaps" if encoding == "utf-8" else ""
    return (text.count("\n") + 1 if bad is not None else None,
            f"not valid {encoding.upper()} text (byte 0x{(bad or b'').hex()} on this line{guess})")


def frame_number(name: str) -> int | None:
    """Trailing integer of a file stem: "0123.jpg" -> 123, "frame_7.png" -> 7, else None."""
    m = _TRAILING_NUMBER.search(os.path.splitext(name)[0])
    return int(m.group(1)) if m else None


def list_frames(directory: Path, extensions: Iterable[str] = IMAGE_EXTENSIONS) -> dict[int, Path]:
    """Image files of ``directory`` keyed by frame number (zero padding ignored).

    A missing directory gives ``{}``. When two files carry the same number the first in
    name order wins.
    """
    return {n: Path(directory) / name for n, name in frame_names(directory, extensions).items()}


def frame_names(directory: Path | str, extensions: Iterable[str] = IMAGE_EXTENSIONS) -> dict[int, str]:
    """:func:`list_frames` as file names (no ``Path`` per file: ~1 us a frame for BP4D+'s 1.5M)."""
    exts = tuple(e.lower() for e in extensions)
    try:
        with os.scandir(directory) as it:
            names = sorted(e.name for e in it
                           if e.name.lower().endswith(exts) and not e.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return {}
    out: dict[int, str] = {}
    for name in names:
        n = frame_number(name)
        if n is not None and n not in out:
            out[n] = name
    return out


def parse_au(value) -> int:
    """AU id in any common spelling -> int: 12, "12", "AU12", "au12", "AU012" -> 12."""
    text = str(value).strip()
    if text.lower().startswith("au"):
        text = text[2:]
    try:
        return int(text)
    except ValueError:
        raise ClefError(f"not an action unit id: {value!r} (use numbers like 12 or AU12)")


def parse_aus(values: Iterable | None, default: Sequence[int]) -> list[int]:
    """Normalise an ``aus`` option (None, list, or a "1,2,4" / "1 2 4" string)."""
    if values is None:
        return list(default)
    if isinstance(values, str):
        values = [v for v in re.split(r"[,\s]+", values) if v]
    out = [parse_au(v) for v in values]
    if not out:
        raise ClefError("the AU list is empty")
    if len(set(out)) != len(out):
        raise ClefError(f"duplicate AUs in {out}")
    return out


def natural_task_key(task: str) -> tuple:
    """Sort key for task ids so that T2 < T10."""
    m = _TRAILING_NUMBER.search(task)
    return (task[: m.start()] if m else task, int(m.group(1)) if m else -1, task)
