"""clefctl.distributed: single-process identities, the worker policy, and a 2-process gloo DDP run
whose losses and parameter gradients equal one process on the whole batch (Eq. 2 and Eq. 6), whose
SyncBatchNorm2d equals BatchNorm2d on the whole batch, and whose object collectives and shards
add up."""

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
        out["bn"] = _sync_bn_step(mine)
        out["objects"] = (D.all_gather_object({"rank": rank}), D.broadcast_object(f"from {rank}"),
                          D.shard_range(5, rank, WORLD))
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        D.cleanup()


def _bn_problem():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(N, 3, 5, 4, generator=g, dtype=torch.float64) * 3 + 1
    w = torch.randn(N, 3, 5, 4, generator=g, dtype=torch.float64)
    return x, w


def _bn_module() -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(3).double()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.5, -0.5, 2.0]))
        bn.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
    return bn


def _sync_bn_step(rows) -> dict:
    """SyncBatchNorm2d on this rank's rows: output, input and parameter gradients, running stats."""
    x, w = _bn_problem()
    bn = _bn_module()
    assert D.sync_batchnorm(nn.Sequential(bn)) == 1 and isinstance(bn, D.SyncBatchNorm2d)
    xr = x[rows].clone().requires_grad_(True)
    y = bn(xr)
    (y * w[rows]).sum().backward()
    return {"y": y.detach(), "x_grad": xr.grad, "w_grad": bn.weight.grad, "b_grad": bn.bias.grad,
            "mean": bn.running_mean.clone(), "var": bn.running_var.clone()}


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
    # SyncBatchNorm2d on 2 x 4 rows = BatchNorm2d on 8: outputs, gradients, running statistics
    x, w = _bn_problem()
    bn = _bn_module()
    xr = x.clone().requires_grad_(True)
    y = bn(xr)
    (y * w).sum().backward()
    m = N // WORLD
    for r, got in enumerate(ranks):
        rows = slice(r * m, (r + 1) * m)
        assert torch.allclose(got["bn"]["y"], y[rows].detach(), **TOL)
        assert torch.allclose(got["bn"]["x_grad"], xr.grad[rows], **TOL)
        for key, want in (("mean", bn.running_mean), ("var", bn.running_var)):
            assert torch.allclose(got["bn"][key], want, **TOL), (r, key)
        gathered, broadcast, shard = got["objects"]
        assert gathered == [{"rank": 0}, {"rank": 1}] and broadcast == "from 0"
        assert shard == ((0, 3) if r == 0 else (3, 5))
    # parameter gradients: each rank holds its rows' share of the whole batch's, the shares add up to it
    for key, want in (("w_grad", bn.weight.grad), ("b_grad", bn.bias.grad)):
        assert torch.allclose(ranks[0]["bn"][key] + ranks[1]["bn"][key], want, **TOL), key
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
    assert D.all_gather_object(3) == [3] and D.broadcast_object("a") == "a"
    assert D.shard_range(5, 0, 1) == (0, 5)
    D.barrier()
    D.cleanup()


def test_sync_batchnorm_is_plain_batchnorm_in_one_process():
    bn = _bn_module()
    ref = _bn_module()
    D.sync_batchnorm(bn)
    x, _ = _bn_problem()
    assert torch.equal(bn(x), ref(x)) and torch.equal(bn.running_var, ref.running_var)
    assert bn.state_dict().keys() == ref.state_dict().keys()


def test_worker_policy_counts_this_ranks_share_of_the_node(monkeypatch):
    monkeypatch.setattr(D, "usable_cpus", lambda: 64)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert D.worker_count("train", "cuda") == 32 and D.worker_count("embed", "cuda") == 32
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert D.worker_count("train", "cuda") == 7 and D.worker_count("train", "cpu") == 2
    assert D.worker_count("embed", "cpu") == 4 and D.worker_count("train", "cuda", requested=3) == 3
    opts = D.loader_options("train", "cuda")
    assert opts == {"num_workers": 7, "pin_memory": True, "persistent_workers": True, "prefetch_factor": 2}
    monkeypatch.setattr(D, "usable_cpus", lambda: 2)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert D.loader_options("train", "cpu") == {"num_workers": 0, "pin_memory": False}
    assert D.worker_count("train", "cuda") == 1 and D.loader_options("train", "cuda")["prefetch_factor"] == 4


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
