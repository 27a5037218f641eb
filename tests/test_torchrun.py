"""The real commands under ``torchrun --nproc_per_node 2`` (gloo, CPU) against one process with the
same global batch (issue 15).

What is compared, and how closely:

* ``finetune``: 2 processes x batch 8 against 1 process x batch 16, 4 steps of clef-tiny (whose
  convolutional stem has BatchNorm: SyncBatchNorm2d under torchrun). The step-1 loss and its
  ``l_in`` / ``l_dn`` in metrics.jsonl agree to 1e-5 (relative); every tensor of model.pt (weights
  and BatchNorm running statistics) to 1e-4 (absolute; 5.5e-6 measured: sums taken in another
  order); the held-out test (scored in shards) covers the same images and its mean F1 agrees to
  0.5 points. One run folder, one JSON object on stdout.
* ``embed``: the store written by 2 processes has the same ids in the same order, the same
  skipped list and vectors equal to 1e-6 (float32 stores), and its report counts every rank's rows.
* ``pretrain``: completes with one run folder; its step-1 loss equals one process's to 1e-5
  (activity texts drawn once for the global batch, BatchNorm over the global batch).
* ``evaluate``: the 3-fold protocol (fold runs trained under torchrun, test folds scored in shards)
  completes with one report folder and one JSON object on stdout.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clefctl.store import EmbeddingStore

pytestmark = pytest.mark.usefixtures("one_thread")

FT_ARGS = ["finetune", "--dataset", "bp4d", "--init", "none", "--max-steps", "4", "--no-progress", "--json"]
PRE_ARGS = ["pretrain", "--dataset", "bp4d", "--max-steps", "2", "--no-progress", "--json"]


def _env(tmp: Path) -> dict:
    env = dict(os.environ, CLEF_CACHE=str(tmp / "cache"), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("CLEF_WORKSPACE", None)
    return env


def _torchrun(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "clefctl", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(tmp), timeout=600, cwd=tmp)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _single(args: list[str]) -> str:
    """The same command in this process (no second start-up of torch): its stdout."""
    from clefctl.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 0, out.getvalue()
    return out.getvalue()


def _one_json(stdout: str) -> dict:
    """stdout holds exactly one JSON object (rank 1 prints nothing)."""
    doc, end = json.JSONDecoder().raw_decode(stdout.strip())
    assert stdout.strip()[end:].strip() == "", stdout
    return doc


def _runs(ws: Path, stage: str) -> list[Path]:
    return sorted(p for p in (ws / stage).glob("*") if p.is_dir())


def _first_step(run: Path) -> dict:
    return next(json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
                if json.loads(line).get("kind") == "step")


def _close(a: float, b: float, rel: float) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=rel)


@pytest.fixture(scope="module")
def finetuned(synth, tmp_path_factory):
    """One fine-tuning run in one process (batch 16) and one under torchrun (2 x 8)."""
    tmp = tmp_path_factory.mktemp("torchrun")
    data = ["--dataset-root", synth["au"]]
    one = _single(FT_ARGS + data + ["--batch-size", "16", "--workspace", str(tmp / "one")])
    two = _torchrun(FT_ARGS + data + ["--batch-size", "8", "--workspace", str(tmp / "two")], tmp)
    return {"tmp": tmp, "one": _one_json(one), "two": _one_json(two.stdout)}


def test_finetune_under_torchrun_equals_one_process_with_the_same_global_batch(finetuned):
    tmp = finetuned["tmp"]
    assert _runs(tmp / "two", "finetune") == [Path(finetuned["two"]["run"])]   # no stray "<run>-2"
    one, two = Path(finetuned["one"]["run"]), Path(finetuned["two"]["run"])
    assert json.loads((two / "status.json").read_text())["state"] == "finished"
    s1, s2 = _first_step(one), _first_step(two)
    for key in ("loss", "l_in", "l_dn"):           # the global batch's numbers, not rank 0's
        assert _close(s1[key], s2[key], 1e-5), (key, s1[key], s2[key])
    a = torch.load(one / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(two / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    assert any("running_var" in k for k in a)         # the stem's BatchNorm statistics are compared too
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-4, rtol=0), k
    m1, m2 = (json.loads((r / "test_metrics.json").read_text()) for r in (one, two))
    assert m1["n_samples"] == m2["n_samples"] > 0 and m1["skipped"] == m2["skipped"] == 0
    assert abs(m1["mean_f1"] - m2["mean_f1"]) <= 0.5


def test_embed_under_torchrun_writes_the_single_process_store(finetuned, synth):
    tmp = finetuned["tmp"]
    model = finetuned["one"]["model"]
    common = ["embed", "--dataset", "bp4d", "--dataset-root", synth["au"], "--weights", model,
              "--dtype", "float32", "--index", "none", "--batch-size", "32", "--json"]
    one = _one_json(_single(common + ["--out", str(tmp / "one.h5")]))
    two = _one_json(_torchrun(common + ["--out", str(tmp / "two.h5")], tmp).stdout)
    assert two["rows"] == one["rows"] == two["embedded_now"] > 0      # every rank's rows counted
    with EmbeddingStore.open(tmp / "one.h5") as s1, EmbeddingStore.open(tmp / "two.h5") as s2:
        assert s1.ids == s2.ids and s1.paths == s2.paths and s1.skipped_ids == s2.skipped_ids
        v1, v2 = s1.embeddings(), s2.embeddings()
    assert v1.shape == v2.shape and np.allclose(v1, v2, atol=1e-6, rtol=0)
    assert not glob.glob(str(tmp / "two.h5.part-*"))                   # parts merged and removed


def test_pretrain_under_torchrun_completes_and_its_first_loss_is_the_global_batchs(synth, tmp_path):
    data = ["--dataset-root", synth["au"]]
    one = _one_json(_single(PRE_ARGS + data + ["--batch-size", "16", "--workspace", str(tmp_path / "one")]))
    two = _one_json(_torchrun(PRE_ARGS + data + ["--batch-size", "8", "--workspace", str(tmp_path / "two")],
                              tmp_path).stdout)
    assert _runs(tmp_path / "two", "pretrain") == [Path(two["run"])] and Path(two["model"]).is_file()
    assert _close(_first_step(Path(one["run"]))["loss"], _first_step(Path(two["run"]))["loss"], 1e-5)


def test_evaluate_kfold_under_torchrun_completes_with_one_report(finetuned, synth):
    from clefctl.data import load_dataset

    tmp = finetuned["tmp"]
    ws = tmp / "two"
    out = _one_json(_torchrun(["evaluate", "--folds", "3", "--workspace", str(ws), "--no-progress", "--json"],
                              tmp).stdout)
    (report,) = _runs(ws, "evaluate")
    assert len(_runs(ws, "finetune")) == 3                              # fold 1 reused, folds 2-3 trained
    assert out["n_folds"] == 3 and out["protocol"] == "3-fold subject-exclusive"
    frames = len(load_dataset("bp4d", root=synth["au"]))
    per_fold = json.loads((report / "results.json").read_text())["per_fold"]
    assert sum(f["n_samples"] for f in per_fold) == frames                  # every frame scored once


def test_the_ablation_grid_under_torchrun_prints_one_table(tmp_path):
    """Table 6's grid (2 pre-training and 18 fine-tuning runs, a few steps each) under torchrun: every
    run's metrics are read after its last barrier, and only rank 0 prints."""
    rows = _one_json('{"rows": ' + _torchrun(["evaluate", "--ablation", "--epochs", "0.05", "--workspace",
                                              str(tmp_path / "ws"), "--no-progress", "--json"], tmp_path).stdout + "}")
    assert len(rows["rows"]) == 9 and all(r["au_f1"] is not None and r["fer_acc"] is not None for r in rows["rows"])
    assert len(_runs(tmp_path / "ws", "pretrain")) == 2 and len(_runs(tmp_path / "ws", "finetune")) == 18


def test_the_slurm_example_starts_one_torchrun_per_node_with_the_global_batch_split(tmp_path):
    script = Path(__file__).resolve().parent.parent / "examples" / "slurm_finetune.sh"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    outside = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert outside.returncode == 2 and outside.stderr.startswith("error: not inside a SLURM job")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool, body in (("scontrol", 'printf "node-a\\nnode-b\\n"'), ("srun", 'echo srun "$@"')):
        (bin_dir / tool).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / tool).chmod(0o755)
    env.update(PATH=f"{bin_dir}:{env['PATH']}", SLURM_JOB_ID="77", SLURM_NNODES="2", SLURM_GPUS_PER_NODE="h100:8",
               SLURM_JOB_NODELIST="node-[a-b]")
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    for part in ("--nnodes 2 --nproc_per_node 8", "--rdzv_endpoint node-a:29500 --rdzv_id 77",
                 "-m clefctl finetune --dataset bp4d", "--batch-size 4"):
        assert part in line, line
