"""The torch view of sample records: :class:`SampleDataset`, which never raises mid-epoch on a bad
image. Its policy says what happens to one: ``"substitute"`` (training, the default) serves the next
readable sample instead and counts the unreadable ones in ``.skipped``; ``"mark"`` (evaluation,
inference) never substitutes: :func:`collate` leaves the item out and lists its index in the batch's
``"unreadable"``. :func:`encode_readable` encodes samples that way for scoring. The records
themselves (:class:`~clefctl.data.records.Sample`) are torch-free, in :mod:`clefctl.data.records`.

Example::

    >>> from clefctl.data.dataset import SampleDataset, collate
    >>> ds = SampleDataset(samples, transform, classes_count=12, task="au")      # doctest: +SKIP
"""

from __future__ import annotations

import os
import warnings
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate

from clefctl.data.records import Sample, open_image
from clefctl.data.table import SampleTable
from clefctl.errors import ClefError


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
