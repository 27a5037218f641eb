"""clefctl.reports and clefctl.plots: tables, published numbers, the report folder and its PNGs."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clefctl import metrics as M
from clefctl import plots
from clefctl import reports as R

BP4D_AUS = ["AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU14", "AU15", "AU17", "AU23", "AU24"]
RAF = ["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"]


def strict_json(path):
    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name}")
    return json.loads(path.read_text(), parse_constant=no_constants)


def check_png(path, min_w=300, min_h=200):
    assert path.is_file() and path.stat().st_size > 5000
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
        assert min_w <= w <= 5000 and min_h <= h <= 5000
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is None or len(colours) > 20  # drawn, not blank


def write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n{\"kind\": \"step\", \"step\"")


def curve_records(offset):
    steps = [{"kind": "step", "epoch": s // 10, "step": s, "loss": 2.0 - 0.03 * s + offset,
              "lr": 1e-4 * min(1.0, s / 5), "samples_per_s": 100.0} for s in range(1, 31)]
    epochs = [{"kind": "epoch", "epoch": e, "step": 10 * (e + 1), "loss": 1.5, "test_f1": 40.0 + e}
              for e in range(3)]
    return steps + epochs


@pytest.fixture
def au_run(tmp_path):
    rng = np.random.default_rng(0)
    per_fold, frames = [], []
    for fold in (1, 2):
        y = (rng.random((20, 12)) < 0.4).astype(float)
        mask = np.ones_like(y)
        mask[:3, 0] = 0
        s = np.clip(0.5 * y + 0.6 * rng.random((20, 12)), 0, 1)
        m = M.au_metrics(y, s, mask, BP4D_AUS)
        m["fold"] = fold
        per_fold.append(m)
        frames.append(R.predictions_frame([f"S{fold}/T1/{i}" for i in range(20)], [f"S{fold}"] * 20,
                                          fold, y, s, BP4D_AUS, "au", mask))
    result = M.fold_average(per_fold)
    result["dataset"] = "bp4d"
    for fold in (1, 2):
        write_jsonl(tmp_path / "runs" / f"fold-{fold}" / "metrics.jsonl", curve_records(0.1 * fold))
    labels = (rng.random((40, 12)) < 0.2).astype(int)
    features = rng.normal(size=(40, 16)) + labels[:, :4] @ rng.normal(size=(4, 16))
    return result, pd.concat(frames, ignore_index=True), per_fold, features, labels


def test_write_reports_au(tmp_path, au_run):
    result, predictions, per_fold, features, labels = au_run
    jsonl = [tmp_path / "runs" / f"fold-{k}" / "metrics.jsonl" for k in (1, 2)]
    out = tmp_path / "report"
    written = R.write_reports(out, result, predictions, per_fold, features, labels, jsonl, task="au")
    assert set(written) == {"results", "per_fold", "predictions", "f1_bars", "tsne", "training_curves",
                            "report"}
    for key in ("f1_bars", "tsne", "training_curves"):
        check_png(written[key])
    res = strict_json(written["results"])
    assert res["task"] == "au" and res["dataset"] == "bp4d"
    assert res["published"]["avg"] == 65.9 and res["published"]["source"] == R.PUBLISHED_LABEL
    assert res["fold_mean"]["mean_f1"] == pytest.approx(result["fold_mean"]["mean_f1"])
    # The all-positive baseline was filled in from the truth columns, per fold, masks honoured.
    y1 = predictions[predictions.fold == 1]
    coded = y1["mask_AU1"] == 1
    p = y1.loc[coded, "true_AU1"].mean()
    assert res["baseline"]["fold_mean"]["per_au"]["AU1"]["positive_rate"] == pytest.approx(
        np.mean([100 * p, 100 * predictions.loc[(predictions.fold == 2) & (predictions.mask_AU1 == 1),
                                                  "true_AU1"].mean()]))
    assert "baseline" not in result  # the caller's dict is not modified
    assert [f["fold"] for f in res["per_fold"]] == [1, 2]
    pf = pd.read_csv(written["per_fold"])
    assert list(pf["fold"]) == [1, 2] and "f1_AU24" in pf.columns
    assert pf["mean_f1"].tolist() == pytest.approx([f["mean_f1"] for f in per_fold])
    pr = pd.read_csv(written["predictions"])
    assert len(pr) == 40 and {"id", "subject", "fold", "true_AU1", "mask_AU1", "score_AU24"} <= set(pr.columns)
    text = written["report"].read_text()
    assert R.PUBLISHED_LABEL in text and "all-positive baseline" in text and "AU24" in text


def test_write_reports_fer(tmp_path):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 7, 60)
    s = rng.random((60, 7))
    s[np.arange(60), y] += 0.5
    result = M.fer_metrics(y, s, RAF)
    result.update(dataset="raf-db", baseline=M.majority_baseline_fer(rng.integers(0, 7, 200), y, RAF))
    preds = R.predictions_frame([f"test_{i:04d}" for i in range(60)], None, None, y, s, RAF, "fer")
    features = rng.normal(size=(60, 8)) + np.eye(7)[y] @ rng.normal(size=(7, 8)) * 3
    jsonl = tmp_path / "run" / "metrics.jsonl"
    write_jsonl(jsonl, [r | {"test_acc": r.pop("test_f1")} if r["kind"] == "epoch" else r
                        for r in curve_records(0.0)])
    out = tmp_path / "report"
    written = R.write_reports(out, result, preds, [result], features, y, [jsonl])
    assert set(written) == {"results", "per_fold", "predictions", "confusion_matrix", "tsne",
                            "training_curves", "report"}
    for key in ("confusion_matrix", "tsne", "training_curves"):
        check_png(written[key])
    res = strict_json(written["results"])
    assert res["dataset"] == "rafdb" and res["published"]["accuracy"] == 90.09
    assert res["accuracy"] == pytest.approx(100 * np.mean(s.argmax(1) == y))
    pf = pd.read_csv(written["per_fold"])
    assert len(pf) == 1 and "recall_neutral" in pf.columns
    pr = pd.read_csv(written["predictions"])
    assert (pr["pred"] == s.argmax(1)).all() and (pr["label_name"] == [RAF[k] for k in y]).all()
    text = written["report"].read_text()
    assert "90.09" in text and "majority baseline" in text and "R:neutral" in text


def test_au_table_published_row_only_for_real_sets():
    r1 = M.au_metrics([[1, 0] + [0] * 10, [0, 1] + [0] * 10], [[.9, .1] + [.6] * 10, [.2, .8] + [.1] * 10],
                      None, BP4D_AUS)
    r2 = M.au_metrics([[1, 1] + [0] * 10, [0, 0] + [1] * 10], [[.9, .9] + [.1] * 10, [.1, .1] + [.9] * 10],
                      None, BP4D_AUS)
    result = M.fold_average([r1, r2])
    result["tuned"] = M.fold_average([r1, r1])
    text = R.render_table(R.au_table(result, "bp4d"), width=220)
    for col in BP4D_AUS + ["Avg", R.PUBLISHED_LABEL, "tuned thresholds (train-fold)", "fold mean", "pooled"]:
        assert col in text
    assert "55.8" in text and "65.9" in text  # published AU1 and Avg
    synth = R.render_table(R.au_table(result, "synthetic-au"), width=220)
    assert "AU1" in synth and R.PUBLISHED_LABEL not in synth and "65.9" not in synth
    # A single split gives one "ours" row; an undefined AU shows n/a.
    one = M.au_metrics([[0, 1]], [[0.1, 0.9]], None, ["AU1", "AU2"])
    text = R.render_table(R.au_table(one, "disfa"), width=220)
    assert "n/a" in text and "64.3" in text and "64.8" in text


def test_au_table_transposed_fits_80_columns():
    """A narrow terminal gets one row per AU: every number of the wide layout, no column cut off."""
    r1 = M.au_metrics([[1, 0] + [0] * 10, [0, 1] + [0] * 10], [[.9, .1] + [.6] * 10, [.2, .8] + [.1] * 10],
                      None, BP4D_AUS)
    result = M.fold_average([r1, r1])
    assert R.au_table_width(result) > 80
    text = R.render_table(R.au_table(result, "bp4d", transpose=True), width=80)
    lines = text.splitlines()
    assert max(len(x) for x in lines) <= 80
    au1 = next(x for x in lines if x.lstrip("│ ").startswith("AU1 "))
    assert "100.0" in au1 and "55.8" in au1  # ours (fold mean) and the published AU1
    avg = f"{result['fold_mean']['mean_f1']:.1f}"
    assert any(x.lstrip("│ ").startswith("Avg") and avg in x and "65.9" in x for x in lines), text


def test_fer_and_ablation_tables():
    m = M.fer_metrics([0, 1, 2], np.eye(3), ["neutral", "happiness", "sadness"])
    text = R.render_table(R.fer_table(m, "AffectNet-8"), width=200)
    assert "62.77" in text and "100.00" in text and R.PUBLISHED_LABEL in text
    assert R.PUBLISHED_LABEL not in R.render_table(R.fer_table(m, "synthetic-fer"), width=200)
    # k-fold FER (manifest / folder sets): fold mean and pooled rows.
    m2 = M.fer_metrics([0, 1, 2, 2], np.eye(3)[[0, 0, 0, 2]], ["neutral", "happiness", "sadness"])
    text = R.render_table(R.fer_table(M.fold_average([m, m2]), "folder"), width=200)
    assert "fold mean (2 folds)" in text and "75.00" in text and "71.43" in text  # mean(100, 50); 5/7
    rows = [{"method": "clef", "PA": True, "PI": True, "I": True, "N": True, "D": True,
             "au_f1": 51.23, "fer_acc": 77.7}, {"method": "mine", "I": True, "bp4d": 12.0}]
    text = R.render_table(R.ablation_table(rows), width=200)
    for p in R.PUBLISHED_ABLATION:
        assert f"{p['bp4d']:.1f}" in text and f"{p['rafdb']:.2f}" in text
    full = [line for line in text.splitlines() if "65.9" in line]
    assert len(full) == 1 and "51.2" in full[0] and "77.70" in full[0] and full[0].count("✓") == 5
    assert any("mine" in line and "12.0" in line for line in text.splitlines())


def test_published_numbers_match_the_paper():
    assert R.PUBLISHED_AU["bp4d"]["avg"] == round(np.mean(list(R.PUBLISHED_AU["bp4d"]["per_au"].values())), 1)
    assert R.PUBLISHED_AU["disfa"]["avg"] == round(np.mean(list(R.PUBLISHED_AU["disfa"]["per_au"].values())), 1)
    assert list(R.PUBLISHED_AU["bp4d"]["per_au"]) == BP4D_AUS
    assert {k: v["accuracy"] for k, v in R.PUBLISHED_FER.items()} == {
        "affectnet7": 65.66, "affectnet8": 62.77, "rafdb": 90.09, "ferplus": 89.74}
    assert len(R.PUBLISHED_ABLATION) == 12
    best = [r for r in R.PUBLISHED_ABLATION if all(r[k] for k in R.ABLATION_MARKS)]
    assert best == [{"method": "CLEF", "PA": True, "PI": True, "I": True, "N": True, "D": True,
                     "bp4d": 65.9, "rafdb": 90.09}]
    assert R.published_reference("BP4D+")["avg"] == 63.1
    assert R.published_reference("synthetic-au") is None


def test_helpers():
    # Most frequent active AU per sample: frequencies 2, 3, 1 -> AU2 wins where active.
    idx, names = R._au_colour_labels(np.array([[1, 1, 0], [0, 0, 0], [0, 1, 1], [0, 1, 0], [1, 0, 1]]),
                                     ["AU1", "AU2", "AU4"])
    assert idx.tolist() == [1, 3, 1, 1, 0] and names == ["AU1", "AU2", "AU4", "none"]
    # A resumed run logs steps again: the last value per step wins, points come sorted.
    xs, ys = plots._series([{"kind": "step", "step": 2, "loss": 5.0}, {"kind": "step", "step": 1, "loss": 1.0},
                            {"kind": "step", "step": 2, "loss": 2.0}, {"kind": "epoch", "epoch": 0, "loss": 9}],
                           "step", "loss", "step")
    assert xs.tolist() == [1.0, 2.0] and ys.tolist() == [1.0, 2.0]
    assert R.jsonable({"a": float("nan"), "b": np.float32(1.5), "c": np.arange(2)}) == {
        "a": None, "b": 1.5, "c": [0, 1]}
    assert R.normalize_dataset("FER+") == "ferplus" and R.display_name("bp4dplus") == "BP4D+"
    assert [n for n, _ in R._named_paths(["x/fold-1/metrics.jsonl", "y/fold-1/metrics.jsonl"])] == [
        "fold-1", "fold-1-2"]


def test_plot_functions_write_pngs(tmp_path):
    out = plots.f1_bars({"AU1": 50.0, "AU2": math.nan}, tmp_path / "bars.png", {"AU1": 55.8, "AU2": 46.8})
    check_png(out)
    out = plots.confusion_matrix([[3, 1], [0, 0]], ["a", "b"], tmp_path / "cm.png", normalize=True)
    check_png(out)
    with pytest.raises(ValueError):
        plots.tsne(np.zeros((3, 2)), [0, 1, 0], ["a", "b"], tmp_path / "t.png")
    assert not (tmp_path / "t.png").exists()
    out = plots.training_curves([("only epochs", [{"kind": "epoch", "epoch": 0, "loss": 2.0},
                                                  {"kind": "epoch", "epoch": 1, "loss": 1.0}])],
                                tmp_path / "curves.png")
    check_png(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bars.png", "cm.png", "curves.png"]  # no temp files
