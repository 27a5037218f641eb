"""Sample records, data set bundles and the torch ``SampleDataset`` that reads them.

Owns the :class:`Sample` and :class:`DatasetBundle` contracts (docs/architecture.md),
:func:`open_image` (path or in-memory pixels -> RGB PIL, cropped by the face box) and
:class:`SampleDataset`, which never raises mid-epoch on a bad image. Its policy says what
happens to one: ``"substitute"`` (training, the default) serves the next readable sample
instead and counts the unreadable ones in ``.skipped``; ``"mark"`` (evaluation, inference)
never substitutes: :func:`collate` leaves the item out and lists its index in the batch's
``"unreadable"``. :func:`encode_readable` encodes samples that way for scoring;
:func:`cache_images` holds a small training set's decoded images in memory.

The bottom section holds small helpers shared by the adapters (root checks, reading list
files as text (:func:`open_text`), numeric frame listing, AU id parsing).
"""

from __future__ import annotations

import codecs
import contextlib
import io
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate

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


def _to_tensor(img: Image.Image) -> torch.Tensor:
    """Fallback transform: uint8 HxWx3 -> float32 3xHxW in [0, 1]."""
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


UNREADABLE_POLICIES = ("substitute", "mark")


class SampleDataset(Dataset):
    """Torch view of a list of samples.

    ``transform`` maps a PIL image to a tensor (or a tuple of tensors for two views); None
    gives a plain float tensor in [0, 1]. ``classes_count`` is C, the length of ``aus`` and
    ``au_mask``; ``task`` is "au", "fer" or "activity"; ``activities`` orders the activity
    ids (default: the sorted ids present in ``samples``; pass ``bundle.activities``).

    Each item is ``{"index", "image", "label", "aus", "au_mask", "activity"}`` with every key
    always present so the default collate works (tuples of views collate to lists of
    batched tensors): ``label`` is -1 without a FER label, ``aus``/``au_mask`` are zeros
    without AU codes, ``activity`` is -1 without an activity. ``index`` is the index of
    the sample actually served.

    ``unreadable`` is the policy for an image that fails to open. ``"substitute"`` (training):
    the next readable one is served instead (wrapping around). ``"mark"`` (evaluation and
    inference, where a substitute would score one image under another's id): the item is
    ``{"index": i, "unreadable": True}`` and :func:`collate` leaves it out of the batch. Either
    way it is counted once in ``.skipped`` and warned about once per dataset (under torchrun on
    rank 0 only: ``$RANK``). With worker processes each worker keeps its own count and warns once
    (the batches' ``"unreadable"`` lists do not).

    ``decode_size``: JPEG files are decoded reduced as long as the face (or the image) keeps that
    many pixels on its shorter side (:func:`read_reduced`; :func:`decode_size_for` of the model). The
    samples are held as a :class:`clefctl.data.table.SampleTable` (``.samples``), which DataLoader
    workers share with the training process without copying it.
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable | None = None,
                 classes_count: int = 0, task: str = "au",
                 activities: Sequence[str] | None = None, unreadable: str = "substitute",
                 decode_size: int | None = None):
        from clefctl.data.table import SampleTable

        if task not in ("au", "fer", "activity"):
            raise ClefError(f"unknown task {task!r}: expected au, fer or activity")
        if unreadable not in UNREADABLE_POLICIES:
            raise ValueError(f"unreadable={unreadable!r}: expected one of {UNREADABLE_POLICIES}")
        self.samples = SampleTable.from_samples(samples)
        self.transform = transform
        self.classes_count = int(classes_count)
        self.task = task
        self.unreadable = unreadable
        self.decode_size = decode_size
        if activities is None:
            activities = sorted({a for a in self.samples.values("activity") if a})
        self.activities = list(activities)
        self._activity_index = {a: i for i, a in enumerate(self.activities)}
        self._bad: set[int] = set()
        self._warned = False

    @property
    def skipped(self) -> int:
        return len(self._bad)

    def __len__(self) -> int:
        return len(self.samples)

    def _mark_bad(self, index: int, exc: BaseException) -> None:
        self._bad.add(index)
        if not self._warned:
            self._warned = True
            if os.environ.get("RANK", "0").strip() not in ("", "0"):  # torchrun: rank 0 speaks (its workers too)
                return
            s = self.samples[index]
            what = "skipped" if self.unreadable == "substitute" else "left out"
            warnings.warn(f"unreadable image {what} ({s.path or s.id}: {exc}); further "
                          f"unreadable images are {what} quietly and counted",
                          RuntimeWarning, stacklevel=3)

    def _open(self, j: int) -> tuple[Sample, Image.Image] | None:
        if j in self._bad:
            return None
        sample = self.samples[j]
        try:
            return sample, open_image(sample, self.decode_size)
        except Exception as exc:  # noqa: BLE001 - any decode failure is skipped, counted
            self._mark_bad(j, exc)
            return None

    def __getitem__(self, index: int) -> dict:
        n = len(self.samples)
        if n == 0:
            raise IndexError("empty SampleDataset")
        index = int(index) % n
        if self.unreadable == "mark":
            opened = self._open(index)
            return {"index": index, "unreadable": True} if opened is None else self._item(index, *opened)
        for step in range(n):
            j = (index + step) % n
            opened = self._open(j)
            if opened is not None:
                return self._item(j, *opened)
        raise ClefError(f"none of the {n} images in this data set could be read "
                        f"(first: {self.samples[0].path or self.samples[0].id})")

    def _item(self, j: int, s: Sample, img: Image.Image) -> dict:
        image = self.transform(img) if self.transform is not None else _to_tensor(img)
        c = self.classes_count
        if s.aus is not None:
            aus = torch.as_tensor(np.asarray(s.aus, dtype=np.float32))
            mask = (torch.as_tensor(np.asarray(s.au_mask, dtype=np.float32))
                    if s.au_mask is not None else torch.ones_like(aus))
        else:
            aus = torch.zeros(c, dtype=torch.float32)
            mask = torch.zeros(c, dtype=torch.float32)
        return {
            "index": j,
            "image": image,
            "label": int(s.label) if s.label is not None else -1,
            "aus": aus,
            "au_mask": mask,
            "activity": self._activity_index.get(s.activity, -1) if s.activity else -1,
        }


def collate(items: list[dict]) -> dict:
    """Default collate, with a tuple of views returned as a tuple of (B, ...) tensors.

    Items marked unreadable (``SampleDataset(unreadable="mark")``) are left out; then the
    batch has ``"unreadable"``, the list of their indices, and when every item was unreadable
    it holds only that and an empty ``"index"``.
    """
    good = [it for it in items if not it.get("unreadable")]
    if len(good) == len(items):
        batch = default_collate(items)
    elif good:
        batch = default_collate(good)
    else:
        batch = {"index": torch.zeros(0, dtype=torch.long)}
    if len(good) < len(items):
        batch["unreadable"] = [int(it["index"]) for it in items if it.get("unreadable")]
    if isinstance(batch.get("image"), list):
        batch["image"] = tuple(batch["image"])
    return batch


def encode_readable(encode: Callable[[torch.Tensor], torch.Tensor], samples: Sequence[Sample],
                    transform: Callable | None, batch_size: int = 128, num_workers: int = 0,
                    decode_size: int | None = None) -> tuple[torch.Tensor | None, list[int], list[int]]:
    """Encode the readable ``samples`` in order for evaluation or inference, never substituting.

    ``encode`` maps a (B, 3, H, W) batch to (B, D) features. Returns ``(features, kept,
    unreadable)``: features (len(kept), D) (None when nothing was readable), ``kept`` the
    positions in ``samples`` of the feature rows, ``unreadable`` the positions left out.
    ``decode_size``: see :class:`SampleDataset`.
    """
    ds = SampleDataset(samples, transform, classes_count=0, task="fer", unreadable="mark",
                       decode_size=decode_size)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate)
    feats: list[torch.Tensor] = []
    kept: list[int] = []
    unreadable: list[int] = []
    for batch in loader:
        unreadable += batch.get("unreadable", [])
        if len(batch["index"]):
            feats.append(encode(batch["image"]))
            kept += batch["index"].tolist()
    return (torch.cat(feats) if feats else None), kept, sorted(unreadable)


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
