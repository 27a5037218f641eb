"""The training loop's data path: per-sample seeded items, the epoch sampler, and the loader probe.

:class:`SeededDataset` makes every augmentation a pure function of (seed, epoch, index), which is
what makes ``--resume`` exact, for ~2 us a sample; :class:`EpochSampler` hands out the seeded
permutation of each epoch as ``(epoch, index)`` keys, whole batches only, sharded over ranks, so
one DataLoader (and its workers) serves a whole run; :class:`LoaderProbe` says once, at the start,
how many workers would keep the model busy when it waits for its batches.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset, Sampler


class SeededDataset(Dataset):
    """Makes each sample's augmentation a pure function of (seed, epoch, index).

    Items are asked for as ``(epoch, index)`` keys (what :class:`EpochSampler` yields; a plain
    index means epoch ``self.epoch``), so DataLoader workers kept alive across epochs need no
    notice of the epoch. The transforms draw from torch's default CPU generator, which is seeded
    for the item and then given back its state: the same draws as ``fork_rng`` + ``manual_seed``
    (which also seeds every accelerator and costs ~80-100 us a sample, against ~6 us here).
    """

    def __init__(self, base: Dataset, seed: int):
        self.base, self.seed, self.epoch = base, seed, 0

    def __len__(self):
        return len(self.base)

    def item_seed(self, epoch: int, index: int) -> int:
        return (self.seed * 1_000_003 + epoch * 7919 + int(index)) % (2 ** 63)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        gen = torch.default_generator
        state = gen.get_state()
        gen.manual_seed(self.item_seed(epoch, index))
        try:
            item = self.base[index]
        finally:
            gen.set_state(state)
        if isinstance(item, dict) and "index" in item:  # served another sample: the requested one is unreadable
            item = dict(item, requested=int(index) % len(self.base))
        return item


class EpochSampler(Sampler):
    """Seeded permutation per epoch, whole batches only, sharded over ranks, can skip a prefix.

    Yields ``(epoch, index)`` keys for :class:`SeededDataset`. ``epoch`` and ``skip`` may be set
    between epochs: the engine keeps one sampler and one DataLoader (and its workers) for a run."""

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, skip_batches: int = 0,
                 rank: int = 0, world: int = 1):
        self.n, self.b, self.seed, self.epoch = n, batch_size, seed, epoch
        self.skip, self.rank, self.world = skip_batches, rank, world

    def batches_per_epoch(self) -> int:
        return self.n // (self.b * self.world)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        global_b = self.b * self.world
        epoch = self.epoch
        for k in range(self.skip, self.batches_per_epoch()):
            chunk = perm[k * global_b:(k + 1) * global_b]
            yield from ((epoch, i) for i in chunk[self.rank * self.b:(self.rank + 1) * self.b])

    def __len__(self):
        return (self.batches_per_epoch() - self.skip) * self.b


class LoaderProbe:
    """Whether the DataLoader keeps the model busy, measured once over the first steps.

    ``add(waited, step)`` records the seconds a step waited for its batch and the seconds the step
    itself took; after ``warmup`` + ``steps`` steps :meth:`advice` says (once) how many workers
    would feed the model when waiting took more than ``threshold`` of the step time, else None.
    With 0 workers the main process loads each batch while the model waits; with W workers each
    worker takes W * (wait + step) seconds for a batch when they are the bottleneck."""

    def __init__(self, workers: int, batch: int, cpus: int, ranks_per_node: int = 1, warmup: int = 3,
                 steps: int = 10, threshold: float = 0.2):
        self.workers, self.batch, self.cpus, self.ranks = workers, batch, cpus, ranks_per_node
        self.warmup, self.steps, self.threshold = warmup, steps, threshold
        self.seen, self.wait, self.step, self.done = 0, 0.0, 0.0, False

    def add(self, waited: float, step: float) -> str | None:
        """Record one step; the advice line once the probe has seen enough (None otherwise)."""
        if self.done:
            return None
        self.seen += 1
        if self.seen <= self.warmup:
            return None
        self.wait += waited
        self.step += step
        if self.seen < self.warmup + self.steps:
            return None
        self.done = True
        return self.advice(self.wait / self.steps, self.step / self.steps)

    def advice(self, wait: float, step: float) -> str | None:
        if step <= 0 or wait <= self.threshold * step:
            return None
        batch_load = wait if self.workers == 0 else self.workers * (wait + step)
        needed = max(self.workers + 1, math.ceil(batch_load / step))
        model_rate = self.batch / step
        loader_rate = self.batch / (wait + step) if self.workers else self.batch / wait
        spare = max(1, self.cpus // max(1, self.ranks) - 1)
        line = (f"the data loader is the bottleneck: the model trains {model_rate:.0f} images/s, "
                f"{self.workers} loader worker{'s' if self.workers != 1 else ''} deliver "
                f"{loader_rate:.0f}/s; about {needed} workers would keep it busy (--workers {needed})")
        if needed > spare:
            line += (f", more than the {spare} cores this process can use: decode less per image "
                     f"(whole-frame data sets: `clefctl data prepare --dataset NAME` crops the faces once) "
                     f"or use more cores per rank")
        return line
