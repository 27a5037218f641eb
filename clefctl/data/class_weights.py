"""Class weights w_c for the fine-tuning losses (paper Eq. 4 and 5).

Computed from the TRAINING samples' label frequencies only (never the test fold), and
normalised so the weights average to 1 over the classes:

* FER (Eq. 4, inverse frequency): ``w_c = N / (C * n_c)``, rescaled to mean 1, i.e.
  ``w_c = C * (1 / n_c) / sum_k (1 / n_k)``; ``n_c`` = training images of class c.
* AU (Eq. 5, the usual AU-literature form, weighting each AU's positive term):
  ``w_c = C * (1 / r_c) / sum_k (1 / r_k)`` with ``r_c`` the positive rate of AU c among
  the frames where it is coded (``au_mask`` 1), so a rare AU's positives count more.

Guard: a class with no training positives (or no coded frames) has no finite inverse
rate; it gets the largest raw inverse of the other classes before normalisation, so it
is weighted like the rarest observed class and the weights still average to 1.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from clefctl.data.records import DatasetBundle, Sample
from clefctl.errors import ClefError


def _training_samples(data: DatasetBundle | Sequence[Sample]) -> list[Sample]:
    """A bundle with an official split -> its train samples; a bundle without one or a
    list -> all of them (pass the training fold's samples for k-fold sets)."""
    if isinstance(data, DatasetBundle):
        if any(s.split for s in data.samples):
            return [s for s in data.samples if s.split == "train"]
        return list(data.samples)
    return list(data)


def _normalise(inverse: np.ndarray, valid: np.ndarray) -> np.ndarray:
    if not valid.any():
        raise ClefError("no training labels to compute class weights from")
    raw = inverse.astype(np.float64).copy()
    raw[~valid] = raw[valid].max()
    return (raw / raw.sum() * len(raw)).astype(np.float32)


def class_weights(data: DatasetBundle | Sequence[Sample], task: str,
                  num_classes: int) -> np.ndarray:
    """Per-class weights (C,) float32 from training label frequencies (see module doc)."""
    samples = _training_samples(data)
    c = int(num_classes)
    if c < 1:
        raise ClefError(f"num_classes must be positive, got {num_classes}")
    if task == "fer":
        counts = np.zeros(c, dtype=np.float64)
        for s in samples:
            if s.label is None:
                continue
            if not 0 <= s.label < c:
                raise ClefError(f"sample {s.id!r} has label {s.label}, outside 0..{c - 1}")
            counts[s.label] += 1
        valid = counts > 0
        inverse = np.zeros(c)
        inverse[valid] = 1.0 / counts[valid]
        return _normalise(inverse, valid)
    if task == "au":
        pos = np.zeros(c, dtype=np.float64)
        coded = np.zeros(c, dtype=np.float64)
        for s in samples:
            if s.aus is None:
                continue
            aus = np.asarray(s.aus, dtype=np.float64)
            if aus.shape != (c,):
                raise ClefError(f"sample {s.id!r} has {aus.size} AU codes, expected {c}")
            mask = (np.ones(c) if s.au_mask is None
                    else np.asarray(s.au_mask, dtype=np.float64))
            pos += aus * mask
            coded += mask
        valid = pos > 0
        inverse = np.zeros(c)
        inverse[valid] = coded[valid] / pos[valid]
        return _normalise(inverse, valid)
    raise ClefError(f"class weights need task 'fer' or 'au', not {task!r}")
