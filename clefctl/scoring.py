"""Checkpoint extras -> class probabilities: the one way a fine-tuned model scores images.

A fine-tuned clefctl checkpoint carries either the text embeddings of its class names
(``name_embeddings``: the text head) or a linear head with the logit scale folded in
(``head_weight``, ``head_bias``: Table 6's "I" rows). Scores are a softmax over classes
(expressions) or a sigmoid per AU, "present" at 0.5. :func:`predict_scores` encodes images and
scores the readable ones; :func:`scores_from_features` scores unit image features already computed
(a video frame's faces, an embedding store); :func:`quick_metrics` summarises scores against labels.
Used by fine-tuning (its held-out test), ``evaluate``, ``predict`` and the benchmarks.

Example::

    >>> from clefctl.scoring import predict_scores, quick_metrics
    >>> scored = predict_scores(model, test_samples, model.load_report.extras, "fer")
    >>> quick_metrics(test_samples, scored, "fer", classes)["accuracy"]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from clefctl.model import ClefModel


@dataclass
class ScoredSamples:
    """What :func:`predict_scores` scored: ``scores`` (n, C) row-aligned with ``samples`` (the
    readable ones, in the given order); ``skipped`` the ids of the unreadable ones left out."""

    scores: np.ndarray
    samples: list
    skipped: list[str]

    def __len__(self) -> int:
        return len(self.samples)


def predict_scores(model: "ClefModel", samples, extras: dict, task: str, batch_size: int = 128,
                   progress: bool = False, *, shard: bool | None = None,
                   num_workers: int | None = None) -> ScoredSamples:
    """Class scores in [0, 1] of the readable ``samples``: softmax over names (FER) or sigmoid
    per AU (AU). An unreadable image is left out and its id listed in ``.skipped``, never scored
    with another image's prediction; row i of ``.scores`` belongs to ``.samples[i]``.

    ``shard`` (default: when torchrun's process group is up): every rank scores its contiguous
    share of ``samples`` and all ranks receive the whole result, equal to one process's, so every
    rank must call this. ``num_workers``: DataLoader workers decoding images (default: the one
    worker policy, :func:`clefctl.distributed.worker_count` for ``embed`` on the model's device; none
    for a share of fewer than 512 images).
    Large JPEG frames are decoded reduced (:func:`clefctl.data.images.decode_size_for`)."""
    from clefctl import distributed as dist
    from clefctl.data.images import decode_size_for
    from clefctl.data.dataset import encode_readable
    from clefctl.data.transforms import transforms_for

    samples = list(samples)
    sharded = dist.world_size() > 1 if shard is None else bool(shard) and dist.world_size() > 1
    start, stop = dist.shard_range(len(samples), dist.rank(), dist.world_size()) if sharded else (0, len(samples))
    if num_workers is None and stop - start < 512:  # starting worker processes costs more than they save
        num_workers = 0
    workers = dist.worker_count("embed", model.device, requested=num_workers)
    feats, kept, bad = encode_readable(model.encode_images, samples[start:stop], transforms_for(model, train=False),
                                       batch_size, num_workers=workers,
                                       decode_size=decode_size_for(model.image_size))
    if feats is None:
        feats = torch.zeros(0, model.embed_dim)
    scores = scores_from_features(feats, extras, task, float(model.logit_scale.detach()))
    if sharded:  # every rank's part, in rank order: the shards are contiguous
        parts = dist.all_gather_object((scores, [start + i for i in kept], [start + i for i in bad]))
        scores = np.concatenate([p[0] for p in parts]).reshape(-1, scores.shape[1])
        kept = [i for p in parts for i in p[1]]
        bad = [i for p in parts for i in p[2]]
    return ScoredSamples(scores, [samples[i] for i in kept], [samples[i].id for i in bad])


def scores_from_features(feats: torch.Tensor, extras: dict, task: str, logit_scale: float) -> np.ndarray:
    """Scores from cached unit image features: the store re-uses this without the image encoder."""
    if "head_weight" in extras:
        logits = feats @ extras["head_weight"].T.float() + extras["head_bias"].float()
    else:
        logits = logit_scale * feats @ F.normalize(extras["name_embeddings"].float(), dim=-1).T
    probs = torch.softmax(logits, dim=1) if task == "fer" else torch.sigmoid(logits)
    return probs.numpy()


def quick_metrics(samples, scores, task: str, classes: list[str]) -> dict:
    """Accuracy (FER) or mean F1 at 0.5 over coded entries (AU), in percent.

    ``scores`` is :func:`predict_scores`' result (its rows belong to its readable samples, a
    subset of ``samples``) or an (N, C) array row-aligned with ``samples``. The summary has
    ``n_samples`` (the images scored), ``skipped`` (unreadable ones left out) and ``skipped_ids``;
    the metrics are None when no image could be read.
    """
    from sklearn.metrics import f1_score

    skipped: list[str] = []
    if isinstance(scores, ScoredSamples):
        given = {s.id for s in samples}
        if any(s.id not in given for s in scores.samples):
            raise ValueError("the scored samples are not among the samples given")
        samples, skipped, scores = scores.samples, scores.skipped, scores.scores
    samples = list(samples)
    if len(samples) != len(scores):
        raise ValueError(f"{len(scores)} score rows for {len(samples)} samples")
    counts = {"n_samples": len(samples), "skipped": len(skipped), "skipped_ids": list(skipped)}
    if not samples:  # nothing readable: no metric rather than a made-up one
        return {"accuracy": None, "macro_f1": None, **counts} if task == "fer" else \
            {"mean_f1": None, "f1": {}, **counts}
    if task == "fer":
        y = np.array([s.label for s in samples])
        pred = scores.argmax(1)
        return {"accuracy": float((pred == y).mean() * 100),
                "macro_f1": float(f1_score(y, pred, average="macro", labels=list(range(len(classes)))) * 100),
                **counts}
    y = np.stack([s.aus for s in samples])
    m = np.stack([s.au_mask if s.au_mask is not None else np.ones_like(s.aus) for s in samples])
    pred = (scores > 0.5).astype(int)
    f1s = {c: float(f1_score(y[m[:, j] > 0, j], pred[m[:, j] > 0, j], zero_division=0) * 100)
           for j, c in enumerate(classes)}
    return {"mean_f1": float(np.mean(list(f1s.values()))), "f1": f1s, **counts}
