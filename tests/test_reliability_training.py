"""Issue #11 (training): runs marked finished/unfinished, --resume picks and restores the right run,
trust never comes from a config file, SIGTERM reaches the user, metrics.jsonl stays exact,
numeric options are checked before a run folder exists, skipped images are reported."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
import yaml

from clefctl import model as M
from clefctl.cli import main
from clefctl.engine import TrainConfig
from clefctl.errors import ClefError, Interrupted
from clefctl.finetune import FinetuneOptions, FinetuneTask, run_finetune
from clefctl.pretrain import PretrainOptions, PretrainTask, run_pretrain
from clefctl.workspace import Run, Workspace, options_from_run, options_to_config

pytestmark = pytest.mark.usefixtures("one_thread")

STOPPED = (Interrupted, KeyboardInterrupt)  # KeyboardInterrupt: what the engine raised before


def _cfg(**kw):
    base = dict(epochs=3, batch_size=16, lr=1e-3, warmup_epochs=0.2, seed=0, num_workers=0, progress=False,
                log_every=1)
    base.update(kw)
    return TrainConfig(**base)


def _fer(synth, ws, **kw):
    return FinetuneOptions(dataset="rafdb", dataset_root=synth["fer"], workspace=str(ws), init=None, **kw)


def _patch_loss(monkeypatch, sigterm_at=None, nan_at=None, task=FinetuneTask):
    """``task.loss`` sends this process a real SIGTERM at call ``sigterm_at`` or returns NaN at call
    ``nan_at`` (counted from the patch on)."""
    loss, calls = task.loss, []

    def patched(self, batch, rng):
        calls.append(1)
        if len(calls) == sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)
        value, logs = loss(self, batch, rng)
        return (value * float("nan") if len(calls) == nan_at else value), logs

    monkeypatch.setattr(task, "loss", patched)


def _cli(argv, capsys):
    """Run the CLI in-process; (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def _runs(ws, stage="finetune"):
    d = Path(ws) / stage
    return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []


def _run(ws, index=-1, stage="finetune"):
    return Run(Path(ws) / stage / _runs(ws, stage)[index], stage)


def _steps(run):
    return [(r["step"], r["loss"]) for r in run.metrics() if r["kind"] == "step"]


def _step_reached(run):
    return torch.load(run.checkpoints / "last.pt", weights_only=True)["progress"]["global_step"]


def _epochs(run):
    return [(r["epoch"], r["step"], r["loss"]) for r in run.metrics() if r["kind"] == "epoch"]


def _same_weights(a: Path, b: Path):
    sa, sb = (torch.load(p, weights_only=True)["state_dict"] for p in (a, b))
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_resume_picks_the_unfinished_run_and_leaves_the_finished_one_alone(synth, tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    done = run_finetune(_fer(synth, ws, train=_cfg(max_steps=2)))
    before = {n: (done.path / n).read_bytes() for n in ("model.pt", "test_metrics.json")}
    _patch_loss(monkeypatch, sigterm_at=2)
    with pytest.raises(STOPPED):
        run_finetune(_fer(synth, ws, train=_cfg(max_steps=4)))
    monkeypatch.undo()
    killed = next(Run(p, "finetune") for p in (ws / "finetune").iterdir() if p.is_dir() and p != done.path)

    resumed = run_finetune(_fer(synth, ws, resume="latest", train=_cfg()))
    assert resumed.path == killed.path
    assert {n: (done.path / n).read_bytes() for n in before} == before   # the finished run is untouched
    assert done.status()["state"] == "finished"
    assert resumed.status()["state"] == "finished" and resumed.status()["steps"] == 4
    assert Workspace(ws).latest("finetune").path == resumed.path
    with pytest.raises(ClefError, match=f"nothing to resume: finetune run {done.name} is complete"):
        run_finetune(_fer(synth, ws, resume=done.name, train=_cfg()))
    with pytest.raises(ClefError, match="nothing to resume: no unfinished finetune run"):
        run_finetune(_fer(synth, ws, resume="latest", train=_cfg()))
    assert {n: (done.path / n).read_bytes() for n in before} == before


def test_pretrain_resume_picks_the_unfinished_run_with_its_own_options(synth, tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    opts = dict(dataset="bp4d", dataset_root=synth["au"], workspace=str(ws))
    done = run_pretrain(PretrainOptions(**opts, train=_cfg(max_steps=1)))
    model = done.model_path.read_bytes()
    _patch_loss(monkeypatch, sigterm_at=1, task=PretrainTask)
    with pytest.raises(STOPPED):
        run_pretrain(PretrainOptions(**opts, train=_cfg(max_steps=3)))
    monkeypatch.undo()
    resumed = run_pretrain(PretrainOptions(**opts, resume="latest", train=_cfg(max_steps=None)))
    assert resumed.path != done.path and done.model_path.read_bytes() == model
    assert _step_reached(resumed) == 3 and resumed.finished
    with pytest.raises(ClefError, match="is complete"):
        run_pretrain(PretrainOptions(**opts, resume=done.name))


def test_resume_keeps_the_runs_own_max_steps_and_equals_the_uninterrupted_run(synth, tmp_path, monkeypatch):
    full = run_finetune(_fer(synth, tmp_path / "a", evaluate=False, train=_cfg(max_steps=5)))
    _patch_loss(monkeypatch, sigterm_at=2)
    with pytest.raises(STOPPED):
        run_finetune(_fer(synth, tmp_path / "b", evaluate=False, train=_cfg(max_steps=5)))
    monkeypatch.undo()
    # this invocation's max_steps (None) is not "given again": the run's own 5 applies
    resumed = run_finetune(_fer(synth, tmp_path / "b", resume=_runs(tmp_path / "b")[0], evaluate=False,
                                train=_cfg(max_steps=None)))
    assert _steps(resumed) == _steps(full) and _epochs(resumed) == _epochs(full)
    _same_weights(full.model_path, resumed.model_path)
    assert resumed.status()["steps"] == 5 and resumed.config()["options"]["train"]["max_steps"] == 5


def test_overrides_replace_only_the_options_given_again(tmp_path):
    ws = Workspace(tmp_path)
    run = ws.new_run("finetune", "x")
    stored = FinetuneOptions(dataset="rafdb", dataset_root="/data/raf", lam=3.0, train=_cfg(max_steps=7, lr=5e-4))
    run.save_config({"options": options_to_config(stored)})
    given = FinetuneOptions(resume=run.name, device="cpu", overrides=frozenset({"lr", "device"}),
                            train=_cfg(lr=1e-4, max_steps=None, progress=True))
    opts = options_from_run(run, given)
    assert (opts.dataset, opts.dataset_root, opts.lam, opts.device) == ("rafdb", "/data/raf", 3.0, "cpu")
    assert (opts.train.max_steps, opts.train.lr, opts.train.progress) == (7, 1e-4, True)
    with pytest.raises(ClefError, match="unknown option name"):
        options_from_run(run, FinetuneOptions(resume=run.name, overrides=frozenset({"max_step"})))


def test_cli_resume_restores_the_runs_options_but_those_given_again(synth, tmp_path, monkeypatch, capsys):
    ws = str(tmp_path / "ws")
    start = ["finetune", "--dataset", "rafdb", "--dataset-root", synth["fer"], "--workspace", ws, "--epochs", "1",
             "--max-steps", "4", "--batch-size", "16", "--lr", "1e-3", "--no-progress"]
    _patch_loss(monkeypatch, sigterm_at=2)
    code, _, _ = _cli(start, capsys)
    assert code != 0
    monkeypatch.undo()
    code, out, err = _cli(["finetune", "--resume", _runs(ws)[0], "--workspace", ws, "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    run = Workspace(ws).resolve("finetune", report["run"])
    assert _step_reached(run) == 4 and run.config()["options"]["train"]["batch_size"] == 16
    assert report["dataset"] == "rafdb" and report["init"] == "random initialisation"  # the run's, not defaults
    assert report["skipped_train_images"] == 0 and "note:" not in err

    _patch_loss(monkeypatch, sigterm_at=2)
    _cli(start, capsys)
    monkeypatch.undo()
    code, out, err = _cli(["finetune", "--resume", "--workspace", ws, "--max-steps", "3", "--json"], capsys)
    assert code == 0, err
    run = Workspace(ws).resolve("finetune", json.loads(out)["run"])
    assert _step_reached(run) == 3 and run.config()["options"]["train"]["max_steps"] == 3


def _pickled_weights(path: Path) -> Path:
    """Real clef-tiny weights next to an object that only full unpickling can rebuild."""
    torch.save({"state_dict": M.create("clef-tiny").clip.state_dict(), "note": argparse.Namespace(x=1)}, path)
    with pytest.raises(ClefError, match="refusing to load"):
        M.read_weights_file(path)
    return path


def test_trust_checkpoint_in_config_yaml_is_not_obeyed_on_resume(synth, tmp_path, monkeypatch, capsys):
    ws = str(tmp_path / "ws")
    weights = _pickled_weights(tmp_path / "pickled.pt")
    _patch_loss(monkeypatch, sigterm_at=1)
    code, _, stopped = _cli(["finetune", "--dataset", "rafdb", "--dataset-root", synth["fer"], "--workspace", ws,
                             "--weights", str(weights), "--trust-checkpoint", "--epochs", "1", "--max-steps", "3",
                             "--batch-size", "16", "--no-progress"], capsys)
    assert code != 0
    monkeypatch.undo()
    run = _run(ws)
    cfg = run.config()
    cfg["options"]["trust_checkpoint"] = True            # edited in: must not grant trust
    (run.path / "config.yaml").write_text(yaml.safe_dump(cfg))
    code, _, err = _cli(["finetune", "--resume", run.name, "--workspace", ws, "--no-progress"], capsys)
    assert code == 2 and "refusing to load" in err and "Traceback" not in err
    assert not run.model_path.exists() and not run.finished
    code, _, err = _cli(["finetune", "--resume", "--workspace", ws, "--no-progress"], capsys)
    assert code == 2 and "refusing to load" in err       # the same run, picked as the newest unfinished
    assert "--trust-checkpoint" in stopped.splitlines()[-1]  # the printed resume command asks for trust again
    # the same for pre-training: trust is this invocation's only
    pre = Workspace(ws).new_run("pretrain", "x")
    pre.save_config({"options": {**options_to_config(PretrainOptions()), "trust_checkpoint": True}})
    assert options_from_run(pre, PretrainOptions(resume=pre.name)).trust_checkpoint is False
    assert options_from_run(pre, PretrainOptions(resume=pre.name, trust_checkpoint=True)).trust_checkpoint is True


def test_sigterm_through_the_cli_names_the_checkpoint_and_the_resume_command(synth, tmp_path, monkeypatch, capsys):
    ws = str(tmp_path / "ws")
    _patch_loss(monkeypatch, sigterm_at=2)
    code, _, err = _cli(["finetune", "--dataset", "rafdb", "--dataset-root", synth["fer"], "--workspace", ws,
                         "--init", "none", "--max-steps", "5", "--batch-size", "16", "--no-progress"], capsys)
    run = _run(ws)
    assert code == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "aborted" not in err, err
    assert f"checkpoint saved at {run.checkpoints / 'last.pt'}" in err
    assert f"clefctl finetune --resume {run.name} --workspace {ws}" in err
    assert run.status()["state"] == "interrupted"
    assert _step_reached(run) == 2


def test_metrics_log_has_no_duplicate_steps_after_resume(synth, tmp_path, monkeypatch):
    """A crash after the epoch checkpoint (here a NaN loss two steps into epoch 2) leaves log lines for
    steps the checkpoint does not hold; the resumed run logs them once, as the uninterrupted run did."""
    full = run_finetune(_fer(synth, tmp_path / "a", evaluate=False, train=_cfg(epochs=2)))
    per_epoch = _epochs(full)[0][1]
    _patch_loss(monkeypatch, nan_at=per_epoch + 2)
    with pytest.raises(ClefError, match="loss became nan"):
        run_finetune(_fer(synth, tmp_path / "b", evaluate=False, train=_cfg(epochs=2)))
    monkeypatch.undo()
    failed = _run(tmp_path / "b")
    assert max(s for s, _ in _steps(failed)) > per_epoch     # lines past the checkpoint exist
    resumed = run_finetune(_fer(synth, tmp_path / "b", resume=failed.name, evaluate=False, train=_cfg()))
    steps = [s for s, _ in _steps(resumed)]
    assert len(steps) == len(set(steps))
    assert _steps(resumed) == _steps(full) and _epochs(resumed) == _epochs(full)
    _same_weights(full.model_path, resumed.model_path)


def test_a_run_that_fails_is_marked_failed_and_resumable(synth, tmp_path, monkeypatch):
    """A NaN at the first step: no checkpoint yet, a run marked failed (not a folder that looks finished);
    --resume starts it again from step 0 with its own options."""
    _patch_loss(monkeypatch, nan_at=1)
    with pytest.raises(ClefError, match="loss became nan"):
        run_finetune(_fer(synth, tmp_path, evaluate=False, train=_cfg(max_steps=2)))
    monkeypatch.undo()
    run = _run(tmp_path)
    assert run.status()["state"] == "failed" and "loss became nan" in run.status()["error"] and not run.finished
    assert not (run.checkpoints / "last.pt").exists()
    resumed = run_finetune(_fer(synth, tmp_path, resume="latest", evaluate=False, train=_cfg()))
    assert resumed.path == run.path and resumed.finished and [s for s, _ in _steps(resumed)] == [1, 2]


@pytest.mark.parametrize("option", [
    ["--batch-size", "0"], ["--epochs", "-1"], ["--lr", "nan"], ["--lr", "inf"], ["--lr", "0"],
    ["--warmup-epochs", "-1"], ["--weight-decay", "-0.1"], ["--max-steps", "0"], ["--grad-clip", "0"],
    ["--workers", "-1"],
])
def test_bad_numeric_options_exit_2_with_one_line_and_no_run_folder(option, synth, tmp_path, capsys):
    ws = str(tmp_path / "ws")
    for stage in ("finetune", "pretrain"):
        data = ["--dataset", "rafdb", "--dataset-root", synth["fer"]] if stage == "finetune" else \
            ["--dataset", "bp4d", "--dataset-root", synth["au"]]
        code, _, err = _cli([stage, *data, "--workspace", ws, "--max-steps", "1", "--no-progress", *option], capsys)
        assert code == 2 and "Traceback" not in err, err
        assert len([ln for ln in err.splitlines() if ln.lower().startswith("error")]) == 1, err
        assert option[0] in err, err
        assert _runs(ws, stage) == []


@pytest.mark.parametrize("bad", [dict(lr=float("nan")), dict(batch_size=0), dict(epochs=-1.0),
                                 dict(max_steps=0), dict(batch_size=100_000)])
def test_library_callers_get_clef_error_before_any_run_folder(bad, synth, tmp_path):
    ws = tmp_path / "ws"
    with pytest.raises(ClefError):
        run_finetune(_fer(synth, ws, train=_cfg(**bad)))
    with pytest.raises(ClefError):
        run_pretrain(PretrainOptions(dataset="bp4d", dataset_root=synth["au"], workspace=str(ws), train=_cfg(**bad)))
    assert _runs(ws) == [] and _runs(ws, "pretrain") == []


def test_finetune_reports_unreadable_training_images_skipped_by_workers(synth, tmp_path):
    """Two DataLoader workers each keep their own dataset.skipped; the run still counts every unreadable
    image once (133 training images, batch 19: one epoch requests each of them)."""
    root = tmp_path / "fer"
    shutil.copytree(synth["fer"], root)
    bad = sorted((root / "Image" / "aligned").glob("train_*"))[:3]
    for p in bad:
        p.write_bytes(b"not a jpeg")
    run = run_finetune(FinetuneOptions(dataset="rafdb", dataset_root=str(root), workspace=str(tmp_path / "ws"),
                                       init=None, train=_cfg(epochs=1, batch_size=19, num_workers=2)))
    metrics = json.loads((run.path / "test_metrics.json").read_text())
    assert metrics["skipped_train_images"] == 3 and math.isfinite(metrics["accuracy"])
    assert run.status()["skipped_train_images"] == 3
