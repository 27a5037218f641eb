"""One answer to "which model does this command use?" (issue 12): every command that takes a model
goes through ``Workspace.resolve_model`` (or, for a run's settings, ``Workspace.find_run``), and
follows ``LATEST`` even when a newer run exists."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch
from PIL import Image

from clefctl import cli
from clefctl.errors import ClefError
from clefctl.model import create, save_checkpoint
from clefctl.prompts import load_prompts
from clefctl.workspace import Run, Workspace

pytestmark = pytest.mark.usefixtures("one_thread")


class Stop(Exception):
    """Raised by the spy once the command has chosen its model: nothing after that needs to run."""


def _finished_run(ws: Workspace, stage: str, name: str, cfg: dict, meta: dict, extras=None) -> Run:
    run = Run(ws.stage_dir(stage) / name, stage)
    (run.path / "checkpoints").mkdir(parents=True)
    run.save_config(cfg)
    save_checkpoint(run.model_path, create("clef-tiny"), meta, extras=extras)
    run.mark("finished")
    time.sleep(0.01)  # distinct start times: the newer run is really newer
    return run


@pytest.fixture
def workspace(tmp_path, synth):
    """Two finished fine-tuning runs (A older, B newer) and two pre-training runs (P older, Q newer);
    LATEST points at the OLDER run of each stage, so following LATEST is observable."""
    ws = Workspace(tmp_path / "ws")
    classes = load_prompts("synthetic-fer").class_ids
    names = torch.nn.functional.normalize(torch.randn(len(classes), 128), dim=-1)
    ft = {"stage": "finetune", "dataset": "synthetic-fer", "task": "fer", "classes": classes,
          "options": {"dataset": "synthetic-fer", "dataset_root": synth["fer"], "data_root": None}}
    meta = {"stage": "finetune", "dataset": "synthetic-fer", "task": "fer", "classes": classes}
    a = _finished_run(ws, "finetune", "A", ft, meta, {"name_embeddings": names})
    b = _finished_run(ws, "finetune", "B", ft, meta, {"name_embeddings": names})
    p = _finished_run(ws, "pretrain", "P", {"stage": "pretrain"}, {"stage": "pretrain"})
    q = _finished_run(ws, "pretrain", "Q", {"stage": "pretrain"}, {"stage": "pretrain"})
    ws.set_latest(a)
    ws.set_latest(p)
    img = tmp_path / "face.png"
    Image.new("RGB", (64, 64), (150, 110, 100)).save(img)
    return {"ws": ws, "A": a, "B": b, "P": p, "Q": q, "image": img}


@pytest.fixture
def spy(monkeypatch):
    """Record what resolve_model / find_run answered, then stop the command."""
    calls, inside = [], []
    real_resolve, real_find = Workspace.resolve_model, Workspace.find_run

    def resolve_model(self, ref, **kw):
        inside.append(1)
        try:
            choice = real_resolve(self, ref, **kw)
        except ClefError:
            calls.append(("resolve_model", ref, kw, None))
            raise
        finally:
            inside.pop()
        calls.append(("resolve_model", ref, kw, choice.run.name if choice.run else choice.weights))
        raise Stop

    def find_run(self, stage, ref=None, **kw):
        run = real_find(self, stage, ref, **kw)
        if inside:  # resolve_model's own use of the run finder
            return run
        calls.append(("find_run", stage, ref, run.name if run else None))
        if stage == "finetune" and kw.get("where") is not None and ref is None:
            raise Stop
        return run

    monkeypatch.setattr(Workspace, "resolve_model", resolve_model)
    monkeypatch.setattr(Workspace, "find_run", find_run)
    return calls


def _run(args):
    with pytest.raises(Stop):
        cli.main(list(args))


def _chosen(calls, kind="resolve_model"):
    found = [c for c in calls if c[0] == kind]
    assert found, calls
    return found[-1][-1]


def test_embed_uses_the_latest_finetune_run(workspace, spy):
    _run(["embed", "--workspace", str(workspace["ws"].root), "--index", "none"])
    assert _chosen(spy) == "A"


def test_query_and_rescore_use_the_embed_runs_model(workspace, spy, tmp_path):
    ws = workspace["ws"]
    emb = Run(ws.stage_dir("embed") / "E", "embed")
    emb.path.mkdir(parents=True)
    emb.save_config({"weights": str(workspace["A"].model_path.resolve()), "arch": "clef-tiny", "store": "store.h5",
                     "dataset": "synthetic-fer"})
    from clefctl.store.format import EmbeddingStore

    EmbeddingStore.create(emb.path / "store.h5", "fingerprint-of-A", 64, "synthetic-fer").close()  # no model record:
    ws.set_latest(emb)                                                # the run's config names the model
    _run(["query", "a smile", "--workspace", str(ws.root)])
    assert _chosen(spy) == "A"  # the weights file of the embed run, inside run A
    _run(["rescore", "--prompts", "synthetic-fer", "--workspace", str(ws.root)])
    assert _chosen(spy) == "A"


def test_predict_uses_the_resolver_for_each_task(workspace, spy):
    _run(["predict", str(workspace["image"]), "--workspace", str(workspace["ws"].root),
          "--out", str(workspace["image"].with_suffix(".csv"))])
    tasks = [(c[2].get("task"), c[3]) for c in spy if c[0] == "resolve_model"]
    assert tasks == [("au", None), ("fer", "A")]  # no AU run here; the FER model is LATEST's


def test_predict_names_the_latest_fer_run(workspace):
    from clefctl.predict import newest_run_for_task

    assert newest_run_for_task(workspace["ws"], "fer").name == "A"
    assert newest_run_for_task(workspace["ws"], "au") is None


def test_explain_uses_the_latest_finetune_run(workspace, spy):
    _run(["explain", str(workspace["image"]), "--text", "a smile", "--workspace", str(workspace["ws"].root),
          "--out", str(workspace["image"].with_suffix(".x.png"))])
    assert _chosen(spy) == "A"


def test_evaluate_follows_latest_for_settings_and_resolves_checkpoints(workspace, spy):
    ws = workspace["ws"]
    with pytest.raises((Stop, ClefError, KeyError, TypeError)):
        cli.main(["evaluate", "--workspace", str(ws.root), "--no-progress"])
    assert ("find_run", "finetune", None, "A") in spy
    _run(["evaluate", "--checkpoint", "B", "--workspace", str(ws.root)])
    assert _chosen(spy) == "B"


def test_finetune_init_follows_the_pretrain_latest(workspace, spy, synth):
    _run(["finetune", "--dataset", "synthetic-fer", "--dataset-root", synth["fer"], "--workspace",
          str(workspace["ws"].root), "--max-steps", "1", "--no-progress"])
    assert _chosen(spy) == "P"


def test_pretrain_weights_go_through_the_resolver(workspace, spy, synth):
    weights = workspace["Q"].model_path
    _run(["pretrain", "--dataset-root", synth["au"], "--weights", str(weights), "--workspace",
          str(workspace["ws"].root), "--max-steps", "1", "--no-progress"])
    assert _chosen(spy) == "Q"  # the file, recognised as run Q's model


def test_resolve_model_rules(tmp_path):
    ws = Workspace(tmp_path / "empty")
    assert ws.resolve_model("random", arch="clef-tiny").weights is None
    with pytest.raises(ClefError, match="no finished finetune/pretrain run"):
        ws.resolve_model(None)
    fallback = ws.resolve_model("latest", stages=("finetune",), random_fallback=True)
    assert fallback.weights is None and fallback.warning
    f = tmp_path / "w.pt"
    f.write_bytes(b"x")
    os.chdir(tmp_path)
    try:
        assert ws.resolve_model("w.pt").weights == str(f.resolve())  # absolute: works from any folder
    finally:
        os.chdir("/")
    assert ws.resolve_model("laion2b_s34b_b88k").weights == "laion2b_s34b_b88k"  # a tag passes through


def test_unfinished_latest_is_skipped_for_the_newest_finished(workspace):
    ws = workspace["ws"]
    a = workspace["A"]
    a.mark("interrupted")
    assert ws.resolve_model(None, stages=("finetune",)).run.name == "B"
    assert json.loads(a.status_path.read_text())["state"] == "interrupted"
