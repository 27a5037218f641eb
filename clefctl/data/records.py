"""Sample records, data set bundles and the torch ``SampleDataset`` that reads them.

Owns the :class:`Sample` and :class:`DatasetBundle` contracts (docs/architecture.md),
:func:`open_image` (path or in-memory pixels -> RGB PIL, cropped by the face box) and
:class:`SampleDataset`, which never raises mid-epoch on a bad image: it serves the next
readable sample instead and counts the unreadable ones in ``.skipped``.

The bottom section holds small helpers shared by the adapters (root checks, numeric
frame listing, AU id parsing).
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate

from clefctl.errors import ClefError

# ------------------------------------------------------------------------------------ records


@dataclass
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

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def subjects(self) -> list[str]:
        """Distinct subjects in first-seen order (a sample without one counts as its own id)."""
        return list(dict.fromkeys(subject_of(s) for s in self.samples))


def subject_of(sample: Sample) -> str:
    """The identity used for subject-exclusive splits: ``subject``, else the sample id."""
    return sample.subject or sample.id


# --------------------------------------------------------------------------------- images


def open_image(sample: Sample) -> Image.Image:
    """Decode ``sample`` (file or in-memory pixels) as an RGB PIL image, cropped by its box.

    The box (x, y, w, h) is clamped to the image. Raises ``ClefError`` when the sample has
    neither a path nor pixels or the clamped box is empty, and PIL/OS errors when the file
    cannot be read or decoded (``SampleDataset`` catches both).
    """
    if sample.pixels is not None:
        arr = np.asarray(sample.pixels)
        if arr.dtype != np.uint8:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        img = Image.fromarray(arr).convert("RGB")
    elif sample.path is not None:
        with Image.open(sample.path) as raw:
            raw.load()  # force the decode here so truncated files fail now, not later
            img = raw.convert("RGB")
    else:
        raise ClefError(f"sample {sample.id!r} has neither an image path nor pixels")
    if sample.box is not None:
        x, y, w, h = (int(v) for v in sample.box)
        left, top = max(0, x), max(0, y)
        right, bottom = min(img.width, x + w), min(img.height, y + h)
        if right <= left or bottom <= top:
            raise ClefError(f"face box {sample.box} lies outside the {img.width}x{img.height} "
                            f"image of sample {sample.id!r}", path=sample.path)
        if (left, top, right, bottom) != (0, 0, img.width, img.height):
            img = img.crop((left, top, right, bottom))
    return img


def _to_tensor(img: Image.Image) -> torch.Tensor:
    """Fallback transform: uint8 HxWx3 -> float32 3xHxW in [0, 1]."""
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


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
    the sample actually served. An image that fails to open is replaced by the next
    readable one (wrapping around); it is counted once in ``.skipped`` and warned about
    once per dataset. With worker processes each worker keeps its own count.
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable | None = None,
                 classes_count: int = 0, task: str = "au",
                 activities: Sequence[str] | None = None):
        if task not in ("au", "fer", "activity"):
            raise ClefError(f"unknown task {task!r}: expected au, fer or activity")
        self.samples = list(samples)
        self.transform = transform
        self.classes_count = int(classes_count)
        self.task = task
        if activities is None:
            activities = sorted({s.activity for s in self.samples if s.activity})
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
            s = self.samples[index]
            warnings.warn(f"unreadable image skipped ({s.path or s.id}: {exc}); further "
                          f"unreadable images are skipped quietly and counted in .skipped",
                          RuntimeWarning, stacklevel=3)

    def __getitem__(self, index: int) -> dict:
        n = len(self.samples)
        if n == 0:
            raise IndexError("empty SampleDataset")
        index = int(index) % n
        for step in range(n):
            j = (index + step) % n
            if j in self._bad:
                continue
            try:
                img = open_image(self.samples[j])
            except Exception as exc:  # noqa: BLE001 - any decode failure is skipped, counted
                self._mark_bad(j, exc)
                continue
            return self._item(j, img)
        raise ClefError(f"none of the {n} images in this data set could be read "
                        f"(first: {self.samples[0].path or self.samples[0].id})")

    def _item(self, j: int, img: Image.Image) -> dict:
        s = self.samples[j]
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
    """Default collate, with a tuple of views returned as a tuple of (B, ...) tensors."""
    batch = default_collate(items)
    if isinstance(batch.get("image"), list):
        batch["image"] = tuple(batch["image"])
    return batch


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


def frame_number(name: str) -> int | None:
    """Trailing integer of a file stem: "0123.jpg" -> 123, "frame_7.png" -> 7, else None."""
    m = _TRAILING_NUMBER.search(os.path.splitext(name)[0])
    return int(m.group(1)) if m else None


def list_frames(directory: Path, extensions: Iterable[str] = IMAGE_EXTENSIONS) -> dict[int, Path]:
    """Image files of ``directory`` keyed by frame number (zero padding ignored).

    A missing directory gives ``{}``. When two files carry the same number the first in
    name order wins.
    """
    exts = tuple(e.lower() for e in extensions)
    try:
        with os.scandir(directory) as it:
            names = sorted(e.name for e in it
                           if e.name.lower().endswith(exts) and not e.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return {}
    out: dict[int, Path] = {}
    for name in names:
        n = frame_number(name)
        if n is not None and n not in out:
            out[n] = Path(directory) / name
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
