"""The k-fold driver, single-checkpoint evaluation and the report folder."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from clefctl.engine import TrainConfig
from clefctl.errors import ClefError
from clefctl.evaluate import evaluate_checkpoint, evaluate_kfold
from clefctl.finetune import FinetuneOptions, run_finetune


def _cfg():
    return TrainConfig(epochs=1, batch_size=16, lr=1e-3, warmup_epochs=0, max_steps=1, num_workers=0,
                       progress=False)


@pytest.fixture(scope="module")
def au_eval(synth, tmp_path_factory):
    ws = str(tmp_path_factory.mktemp("ws"))
    first = run_finetune(FinetuneOptions(dataset="bp4d", dataset_root=synth["au"], workspace=ws, init=None,
                                         fold=1, train=_cfg()))        # folds left to the default (3)
    return ws, first, evaluate_kfold(k=3, workspace=ws, progress=False)


def test_kfold_writes_every_report_file(au_eval):
    ws, first, out = au_eval
    for name in ("results.json", "per_fold.csv", "predictions.csv", "f1_per_au.png", "tsne.png",
                 "training_curves.png"):
        assert (out.run.path / name).is_file(), name
    res = json.loads((out.run.path / "results.json").read_text())
    assert res["n_folds"] == 3 and "fold_mean" in res and "pooled" in res
    assert res["published"]["avg"] == pytest.approx(65.9)       # bp4d: the paper's CLEF row beside ours
    assert res["per_fold"][0]["run"] == first.name                  # fold 1 was reused, not retrained


def test_kfold_never_tests_on_training_subjects(au_eval):
    ws, _, out = au_eval
    preds = pd.read_csv(out.run.path / "predictions.csv", dtype={"subject": str})
    from clefctl.data.folds import load_folds
    from clefctl.workspace import Workspace

    for fold_metrics in json.loads((out.run.path / "results.json").read_text())["per_fold"]:
        run = Workspace(ws).resolve("finetune", fold_metrics["run"])
        fold = load_folds(run.path / "folds.json")[fold_metrics["fold"] - 1]
        tested = set(preds.loc[preds["fold"] == fold_metrics["fold"], "subject"])
        assert tested and not tested & set(fold.train_subjects)
        assert tested == set(fold.test_subjects)


def test_leaking_fold_run_is_refused(synth, tmp_path):
    ws = str(tmp_path)
    run = run_finetune(FinetuneOptions(dataset="bp4d", dataset_root=synth["au"], workspace=ws, init=None,
                                       fold=1, folds=3, train=_cfg()))
    doc = json.loads((run.path / "folds.json").read_text())
    moved = doc["folds"][0]["test_subjects"].pop(0)   # a consistent file whose fold 1 differs from the protocol's
    doc["folds"][0]["train_subjects"].append(moved)
    (run.path / "folds.json").write_text(json.dumps(doc))
    with pytest.raises(ClefError, match="trained on test subjects"):
        evaluate_kfold(k=3, workspace=ws, progress=False)


def test_fer_and_single_checkpoint(synth, tmp_path):
    ws = str(tmp_path)
    run = run_finetune(FinetuneOptions(dataset="rafdb", dataset_root=synth["fer"], workspace=ws, init=None,
                                       train=_cfg()))
    out = evaluate_kfold(workspace=ws, progress=False)
    assert (out.run.path / "confusion_matrix.png").is_file()
    assert out.result["protocol"] == "official train/test split" and "baseline" in out.result
    one = evaluate_checkpoint(str(run.model_path), workspace=ws)
    assert one.result["accuracy"] == pytest.approx(out.result["accuracy"])
    assert (one.run.path / "predictions.csv").is_file()


def test_cli_evaluate_json(synth, tmp_path):
    from click.testing import CliRunner

    from clefctl.cli import cli

    ws = str(tmp_path)
    run_finetune(FinetuneOptions(dataset="rafdb", dataset_root=synth["fer"], workspace=ws, init=None, train=_cfg()))
    r = CliRunner().invoke(cli, ["evaluate", "--workspace", ws, "--json"])
    assert r.exit_code == 0, r.output
    assert 0 <= json.loads(r.output)["accuracy"] <= 100
