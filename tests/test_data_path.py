"""The engine's data path (issue 15): per-sample seeding that draws what fork_rng + manual_seed drew
at a fraction of the cost, one DataLoader whose workers live across epochs (same weights as loading
in the training process), and the note that says how many workers would keep the model busy.
Speeds are benchmarks/data_path.py's."""

from __future__ import annotations

import random
import time
import warnings

import numpy as np
import pytest
import torch

from clefctl import model as M
from clefctl.data.dataset import SampleDataset
from clefctl.data.records import Sample
from clefctl.data.transforms import train_transform
from clefctl.engine import EpochSampler, SeededDataset, TrainConfig, Trainer
from clefctl.engine.data import LoaderProbe
from clefctl.workspace import Workspace

pytestmark = pytest.mark.usefixtures("one_thread")


def _faces(n=24, size=64):
    rng = np.random.default_rng(0)
    return [Sample(id=str(i), subject=str(i % 4), pixels=rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
                   label=i % 3) for i in range(n)]


def test_seeded_items_are_those_fork_rng_and_manual_seed_gave_and_leave_the_rng_alone():
    base = SampleDataset(_faces(), train_transform(48, None, None, scale=(0.5, 1.0), rotation=10), task="fer")
    seeded = SeededDataset(base, seed=3)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    for epoch, index in ((0, 0), (0, 5), (2, 5), (7, 23)):
        with torch.random.fork_rng(devices=[]):   # what the engine did before (~100 us a sample)
            torch.manual_seed(seeded.item_seed(epoch, index))
            old = base[index]["image"]
        assert torch.equal(seeded[(epoch, index)]["image"], old)
    assert torch.equal(torch.get_rng_state(), before)
    seeded.epoch = 2
    assert torch.equal(seeded[5]["image"], seeded[(2, 5)]["image"])
    assert not torch.equal(seeded[(0, 5)]["image"], seeded[(2, 5)]["image"])


def test_the_sampler_yields_epoch_keys_for_its_shard_and_skips_a_prefix():
    s = EpochSampler(20, batch_size=3, seed=1, epoch=4, skip_batches=1, rank=1, world=2)
    keys = list(s)
    assert len(keys) == len(s) == 6 and all(k[0] == 4 for k in keys)
    full = list(EpochSampler(20, 3, 1, 4, 0, 0, 1))
    assert [k[1] for k in keys] == [k[1] for k in full[9:12] + full[15:18]]


class _Task:
    def __init__(self, model):
        self.model = model

    def modules(self):
        return {"clip": self.model.clip}

    def loss(self, batch, rng: random.Random):
        z = self.model.clip.encode_image(batch["image"])
        return z.pow(2).mean() + 0.01 * rng.random(), {"norm": z.norm(dim=-1).mean().detach()}


def _fit(tmp_path, name, workers, dataset, epochs=2, batch=8):
    model = M.create("clef-tiny", seed=0)
    cfg = TrainConfig(epochs=epochs, batch_size=batch, lr=1e-3, warmup_epochs=0.2, num_workers=workers,
                      progress=False, log_every=1)
    run = Workspace(tmp_path / name).new_run("finetune", "toy")
    Trainer(model, _Task(model), cfg, run, {"stage": "toy"}).fit(dataset)
    return model, run


def test_workers_kept_across_epochs_train_the_weights_of_loading_in_process(tmp_path):
    transform = train_transform(64, None, None, scale=(0.6, 1.0), rotation=10)
    data = SampleDataset(_faces(), transform, task="fer")
    a, run_a = _fit(tmp_path, "a", 0, data)
    b, run_b = _fit(tmp_path, "b", 2, data)   # 2 persistent workers, 3 steps in each of 2 epochs
    for (k, x), y in zip(a.clip.state_dict().items(), b.clip.state_dict().values()):
        assert torch.equal(x, y), k
    steps = [(r["step"], r["loss"], r["norm"]) for r in run_a.metrics() if r["kind"] == "step"]
    assert steps == [(r["step"], r["loss"], r["norm"]) for r in run_b.metrics() if r["kind"] == "step"]
    assert len(steps) == 6


def test_the_probe_says_how_many_workers_would_feed_the_model():
    quiet = LoaderProbe(workers=4, batch=64, cpus=16, warmup=0, steps=2)
    assert quiet.add(0.01, 0.2) is None and quiet.add(0.01, 0.2) is None   # waiting 5% of a step: fine
    inline = LoaderProbe(workers=0, batch=64, cpus=16, warmup=1, steps=2)
    assert inline.add(9.0, 0.1) is None and inline.add(0.5, 0.1) is None   # warm-up, then 1 of 2 steps
    line = inline.add(0.5, 0.1)
    assert "about 5 workers" in line and "--workers 5" in line and "640 images/s" in line
    assert inline.add(0.5, 0.1) is None                                   # said once
    busy = LoaderProbe(workers=2, batch=64, cpus=4, warmup=0, steps=1).add(0.3, 0.1)
    assert "about 8 workers" in busy and "more than the 3 cores" in busy   # 2 x (0.3 + 0.1) / 0.1


class _SlowFaces(torch.utils.data.Dataset):
    def __init__(self, n=64):
        self.items = [{"index": i, "image": torch.zeros(3, 64, 64), "label": 0} for i in range(n)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        time.sleep(0.01)
        return self.items[i]


def test_a_slow_loader_is_named_once_at_the_start(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(tmp_path, "slow", 1, _SlowFaces(), epochs=1, batch=4)
    notes = [str(w.message) for w in caught if "data loader is the bottleneck" in str(w.message)]
    assert len(notes) == 1 and "--workers" in notes[0]
