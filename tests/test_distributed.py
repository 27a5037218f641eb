"""clefctl.distributed: single-process identities, and a 2-process gloo DDP run whose losses
and parameter gradients equal one process on the whole batch (Eq. 2 and Eq. 6)."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from clefctl import distributed as D
from clefctl.errors import ClefError
from clefctl.losses import (au_loss, fer_loss, finetune_loss, name_description_loss,
                            pretrain_loss)

WORLD = 2
N = 8                      # global batch; 4 per rank
C = 5                      # classes
D_IMG, D_TXT, D_FEAT = 6, 5, 4
TOL = dict(rtol=1e-9, atol=1e-12)


class TinyClip(nn.Module):
    """A Linear image "encoder", a Linear "text encoder" and a learnable log logit scale."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng():              # same weights everywhere, global RNG untouched
            torch.manual_seed(0)
            self.image = nn.Linear(D_IMG, D_FEAT).double()
            self.text = nn.Linear(D_TXT, D_FEAT).double()
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07), dtype=torch.float64))

    def forward(self, images, texts):
        return self.image(images), self.text(texts), self.log_scale.exp()


def _problem() -> dict:
    g = torch.Generator().manual_seed(123)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    mask = torch.ones(N, C, dtype=torch.float64)
    mask[1, 2] = mask[6, 0] = 0
    return {
        "view1": r(N, D_IMG), "view2": r(N, D_IMG), "activity_text": r(N, D_TXT),
        # repeated labels across ranks, and label 9 seen once (rank 1)
        "activity": torch.tensor([0, 1, 0, 2, 1, 2, 9, 0]),
        "images": r(N, D_IMG), "name_text": r(C, D_TXT), "description_text": r(C, D_TXT),
        "aus": (torch.rand(N, C, generator=g) > 0.5).double(), "au_mask": mask,
        "fer": torch.tensor([0, 4, 4, 1, 2, 3, 0, 4]),
        "weights": torch.tensor([0.5, 2.0, 1.0, 3.0, 0.7], dtype=torch.float64),
    }


def _features_pretrain(model, p, rows):
    images = torch.cat([p["view1"][rows], p["view2"][rows]])
    img, txt, _ = model(images, p["activity_text"][rows])
    m = img.shape[0] // 2
    return img[:m], img[m:], txt


def _finetune(model, p, rows, task):
    texts = torch.cat([p["name_text"], p["description_text"]])
    img, txt, scale = model(p["images"][rows], texts)
    names, descriptions = txt[:C], txt[C:]
    if task == "au":
        l_in = au_loss(img, names, p["aus"][rows], p["weights"], scale, p["au_mask"][rows])
    else:
        l_in = fer_loss(img, names, p["fer"][rows], p["weights"], scale)
    return finetune_loss(l_in, name_description_loss(descriptions, names, scale), lam=2.0)


def _grads(model) -> dict:
    return {k: (v.grad.detach().clone() if v.grad is not None else torch.zeros_like(v))
            for k, v in model.named_parameters()}


def _reference() -> dict:
    """One process, whole batch, no DDP."""
    p = _problem()
    out = {}
    for case in ("pretrain", "au", "fer"):
        model = TinyClip()
        if case == "pretrain":
            z1, z2, t = _features_pretrain(model, p, slice(None))
            loss = pretrain_loss(z1, z2, t, p["activity"])
        else:
            loss = _finetune(model, p, slice(None), case)
        loss.backward()
        out[case] = {"loss": loss.detach(), "grads": _grads(model)}
    return out


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    assert D.setup_from_env(backend="gloo")
    try:
        assert (D.rank(), D.world_size(), D.is_main()) == (rank, WORLD, rank == 0)
        p = _problem()
        m = N // WORLD
        mine = slice(rank * m, (rank + 1) * m)
        assert D.local_slice(m) == mine
        labels = D.gather_features(p["activity"][mine])
        assert torch.equal(labels, p["activity"])
        with pytest.raises(ValueError, match="same shape on every rank"):
            D.gather_features(torch.zeros(2 + rank, 3))   # uneven shards: refused on all ranks
        out = {}

        def step(case):
            model = TinyClip()
            ddp = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
            if case in ("au", "fer"):                 # Eq. 6 on local images, no gather
                loss = _finetune(ddp, p, mine, case)
                loss.backward()
                logged = D.reduce_mean(loss)
            else:
                z1, z2, t = _features_pretrain(ddp, p, mine)
                local_z1 = z1
                with_grad = case == "sharded"         # "naive": detached gather + anchor_rows
                z1, z2, t = (D.gather_features(x, with_grad=with_grad) for x in (z1, z2, t))
                assert z1.shape == (N, D_FEAT) and z1.requires_grad
                assert torch.equal(z1[mine], local_z1)
                if case == "replicated":              # full loss on every rank, scaled
                    loss = pretrain_loss(z1, z2, t, labels)
                    D.scale_for_ddp(loss).backward()
                    logged = D.reduce_mean(loss)
                else:                                 # own anchors vs global contrast set
                    loss = pretrain_loss(z1, z2, t, labels, anchor_rows=D.local_slice(m))
                    loss.backward()
                    logged = D.reduce_mean(loss)
            out[case] = {"local": loss.detach(), "loss": logged, "grads": _grads(model)}

        for case in ("sharded", "replicated", "naive", "au", "fer"):
            step(case)
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        D.cleanup()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_match_single_process(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ref = _reference()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for case, ref_case in (("sharded", "pretrain"), ("replicated", "pretrain"),
                           ("au", "au"), ("fer", "fer")):
        want = ref[ref_case]
        for r, got in enumerate(ranks):
            assert torch.allclose(got[case]["loss"], want["loss"], **TOL), (case, r)
            for name, grad in want["grads"].items():
                assert grad.abs().sum() > 0 or name == "log_scale"
                assert torch.allclose(got[case]["grads"][name], grad, **TOL), (case, r, name)
        # per-rank losses differ (each rank's own anchors / images), their mean is global
        if case != "replicated":
            local = [got[case]["local"] for got in ranks]
            assert not torch.allclose(local[0], local[1])
            assert torch.allclose(torch.stack(local).mean(), want["loss"], **TOL)
    # the pretraining scale log_scale is unused there: zero gradient everywhere
    assert torch.equal(ranks[0]["sharded"]["grads"]["log_scale"], torch.zeros(()).double())
    # detached gather + anchor_rows: loss right, gradient wrong (cross-rank terms missing)
    naive = ranks[0]["naive"]
    assert torch.allclose(naive["loss"], ref["pretrain"]["loss"], **TOL)
    assert not torch.allclose(naive["grads"]["image.weight"],
                              ref["pretrain"]["grads"]["image.weight"], rtol=1e-3)


def test_single_process_helpers(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    assert not D.is_distributed()
    assert (D.rank(), D.world_size(), D.local_rank(), D.is_main()) == (0, 1, 0, True)
    assert D.setup_from_env() is False
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert D.setup_from_env() is False
    x = torch.randn(3, 2, requires_grad=True)
    assert D.gather_features(x) is x
    assert D.gather_features(x, with_grad=True) is x
    assert D.local_slice(3) == slice(0, 3)
    loss = (x * 2).sum()
    assert D.scale_for_ddp(loss) is not loss and torch.equal(D.scale_for_ddp(loss), loss)
    logged = D.reduce_mean(loss)
    assert not logged.requires_grad and torch.equal(logged, loss.detach())
    D.barrier()
    D.cleanup()


def test_setup_from_env_missing_variables(monkeypatch):
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ClefError, match="MASTER_ADDR"):
        D.setup_from_env()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ClefError, match="WORLD_SIZE"):
        D.setup_from_env()
    assert not D.is_distributed()
