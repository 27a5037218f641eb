"""clefctl.metrics against hand-computed values (every expected number is worked out in the comments)."""

import math

import numpy as np
import pytest

from clefctl import metrics as M

NAN = float("nan")


def approx(v):
    return pytest.approx(v, abs=1e-3)


# Three AUs, five frames.
#   A: truth 1 1 0 0 1, scores .9 .4 .6 .1 .8, the last frame not coded
#      coded predictions (>= .5) 1 0 1 0 -> TP 1, FN 1, FP 1, TN 1 -> F1 2/(2+1+1) = 50
#   B: no positive truth, one score >= .5 -> TP 0, FP 1, TN 4 -> F1 0 (literature convention)
#   C: no positive truth, no prediction -> F1 undefined -> NaN, left out of the mean
Y = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0], [1, 0, 0]], dtype=float)
S = np.array([[.9, .7, .1], [.4, .2, .2], [.6, .1, .3], [.1, .3, .4], [.8, .2, .1]])
MASK = np.array([[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 1], [0, 1, 1]], dtype=float)
IDS = ["A", "B", "C"]


def test_au_metrics_masked_and_no_positive_aus():
    m = M.au_metrics(Y, S, MASK, IDS)
    a, b, c = (m["per_au"][k] for k in IDS)
    assert (a["tp"], a["fp"], a["fn"], a["tn"]) == (1, 1, 1, 1)
    assert a["f1"] == approx(50.0) and a["precision"] == approx(50.0) and a["recall"] == approx(50.0)
    assert a["accuracy"] == approx(50.0) and a["positive_rate"] == approx(50.0)
    assert a["n_coded"] == 4 and a["predicted_rate"] == approx(50.0)
    assert b["f1"] == 0.0 and b["precision"] == 0.0 and math.isnan(b["recall"])
    assert b["accuracy"] == approx(80.0) and b["positive_rate"] == 0.0
    assert math.isnan(c["f1"]) and math.isnan(c["precision"]) and math.isnan(c["recall"])
    assert c["accuracy"] == approx(100.0)
    assert m["mean_f1"] == approx(25.0)   # (50 + 0) / 2; C excluded
    assert m["n_valid"] == 2
    assert m["f1"]["A"] == approx(50.0)
    assert m["thresholds"] == [0.5, 0.5, 0.5] and m["n_samples"] == 5


def test_au_metrics_mask_changes_result_and_thresholds_apply():
    # Without the mask the 5th frame of A counts: TP 2, FN 1, FP 1 -> F1 4/6 = 66.667.
    assert M.au_metrics(Y, S, None, IDS)["f1"]["A"] == approx(200 / 3)
    # Threshold .85 on A: coded predictions 1 0 0 0 -> TP 1, FN 1, FP 0 -> F1 2/3, precision 100.
    m = M.au_metrics(Y, S, MASK, IDS, thresholds=[0.85, 0.5, 0.5])
    assert m["per_au"]["A"]["f1"] == approx(200 / 3)
    assert m["per_au"]["A"]["precision"] == approx(100.0)
    # A score equal to the threshold is a positive.
    assert M.au_metrics([[1]], [[0.5]], None, ["X"])["f1"]["X"] == approx(100.0)
    with pytest.raises(ValueError):
        M.au_metrics(Y, S[:, :2], None, IDS)
    with pytest.raises(ValueError):
        M.au_metrics(Y, S, MASK[:, :2], IDS)


def test_fold_mean_and_pooled_differ():
    # X: fold 1 truth 1 0, scores .9 .1 -> TP 1 -> F1 100
    #    fold 2 truth 1 0 0 0, scores .9 .8 .7 .6 -> TP 1, FP 3 -> F1 2/5 = 40
    #    fold mean 70; pooled TP 2, FP 3 -> 4/7 = 57.143
    # Z: fold 1 no positive, no prediction -> NaN; fold 2 truth 1 1 0 0, scores .9 .1 .1 .1
    #    -> TP 1, FN 1 -> 66.667; fold mean over the one defined fold 66.667; pooled 66.667
    f1 = M.au_metrics([[1, 0], [0, 0]], [[.9, .1], [.1, .1]], None, ["X", "Z"])
    f2 = M.au_metrics([[1, 1], [0, 1], [0, 0], [0, 0]], [[.9, .9], [.8, .1], [.7, .1], [.6, .1]],
                      None, ["X", "Z"])
    r = M.fold_average([f1, f2])
    assert r["n_folds"] == 2
    fm, pooled = r["fold_mean"], r["pooled"]
    assert fm["f1"]["X"] == approx(70.0) and fm["per_au"]["X"]["f1_std"] == approx(30.0)
    assert pooled["f1"]["X"] == approx(400 / 7)
    assert fm["f1"]["Z"] == approx(200 / 3) and fm["per_au"]["Z"]["n_folds"] == 1
    assert pooled["f1"]["Z"] == approx(200 / 3)
    assert fm["mean_f1"] == approx((70 + 200 / 3) / 2)
    assert pooled["mean_f1"] == approx((400 / 7 + 200 / 3) / 2)
    assert r["per_fold_mean_f1"] == [approx(100.0), approx((40 + 200 / 3) / 2)]
    assert pooled["per_au"]["X"]["tp"] == 2 and pooled["per_au"]["X"]["fp"] == 3
    assert pooled["n_samples"] == 6
    with pytest.raises(ValueError):
        M.fold_average([])


def test_fer_metrics_hand_computed():
    # truth 0 0 0 1 1 2, predictions 0 0 1 1 2 2 -> cm [[2,1,0],[0,1,1],[0,0,1]]
    # accuracy 4/6; recall a 2/3, b 1/2, c 1; precision a 1, b 1/2, c 1/2
    # F1 a 4/5 = 80, b 2/4 = 50, c 2/3 = 66.667 -> macro 65.556; d absent and never predicted -> NaN
    y = [0, 0, 0, 1, 1, 2]
    pred = [0, 0, 1, 1, 2, 2]
    scores = np.full((6, 4), 0.1)
    scores[np.arange(6), pred] = 0.7
    m = M.fer_metrics(y, scores, ["a", "b", "c", "d"])
    assert m["confusion_matrix"] == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert m["accuracy"] == approx(400 / 6)
    assert m["recall"]["a"] == approx(200 / 3) and m["recall"]["b"] == approx(50.0)
    assert m["recall"]["c"] == approx(100.0) and math.isnan(m["recall"]["d"])
    assert m["per_class"]["a"]["precision"] == approx(100.0)
    assert m["per_class"]["a"]["f1"] == approx(80.0) and m["per_class"]["c"]["f1"] == approx(200 / 3)
    assert m["macro_f1"] == approx((80 + 50 + 200 / 3) / 3) and m["n_valid"] == 3
    assert m["mean_recall"] == approx((200 / 3 + 50 + 100) / 3)
    assert m["n_samples"] == 6
    # Predicted indices work as well as scores.
    assert M.fer_metrics(y, np.array(pred), ["a", "b", "c", "d"])["accuracy"] == approx(400 / 6)
    with pytest.raises(ValueError):
        M.fer_metrics([0, 5], np.eye(2), ["a", "b"])


def test_fer_fold_average():
    # fold 1: 2 of 2 right (100); fold 2: 1 of 4 right (25) -> fold mean 62.5, pooled 3/6 = 50
    f1 = M.fer_metrics([0, 1], [[.9, .1], [.1, .9]], ["a", "b"])
    f2 = M.fer_metrics([0, 0, 0, 1], [[.1, .9], [.1, .9], [.1, .9], [.1, .9]], ["a", "b"])
    r = M.fold_average([f1, f2])
    assert r["fold_mean"]["accuracy"] == approx(62.5)
    assert r["pooled"]["accuracy"] == approx(50.0)
    assert r["pooled"]["confusion_matrix"] == [[1, 3], [0, 2]]
    with pytest.raises(ValueError):
        M.fold_average([f1, M.au_metrics([[1]], [[1]], None, ["X"])])


def test_tune_thresholds_picks_f1_optimum_on_coded_entries():
    # AU 0: positives .9 .72 .62, negatives .58 .3 .1; one more positive at .35 that is NOT coded.
    #   t = .60 -> TP 3, FP 0 -> 100 (optimum); .55 -> TP 3, FP 1 -> 85.7; .65 -> TP 2, FN 1 -> 80.
    #   Counting the uncoded frame, .35 would win (TP 4, FP 1 -> 88.9 vs 85.7 at .60).
    # AU 1: truth 1 0 ..., scores .9 .1 ...: every grid value in (.1, .9] gives 100 -> tie -> 0.5.
    # AU 2: no positive -> 0.5.
    y = np.array([[1, 1, 0], [1, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0], [1, 0, 0]], float)
    s = np.array([[.9, .9, .9], [.72, .1, .8], [.62, .1, .1], [.58, .1, .1], [.3, .1, .1],
                  [.1, .1, .1], [.35, .1, .1]])
    mask = np.ones_like(y)
    mask[6, 0] = 0
    t = M.tune_thresholds(y, s, mask)
    assert t.shape == (3,)
    assert t[0] == pytest.approx(0.60) and t[1] == pytest.approx(0.5) and t[2] == pytest.approx(0.5)
    assert M.tune_thresholds(y, s, None)[0] == pytest.approx(0.35)
    assert M.au_metrics(y, s, mask, None, thresholds=t)["f1"]["AU1"] == approx(100.0)
    # A custom grid is honoured.
    assert M.tune_thresholds(y, s, mask, grid=[0.2, 0.7])[0] == pytest.approx(0.7)


def test_baselines():
    # AU1 truth 1 0 1 (0 not coded): coded 3, positives 2 -> all-positive TP 2, FP 1 -> F1 4/5 = 80
    #   (= 2p/(1+p), p = 2/3); AU2 never present -> F1 0; mean 40
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]], float)
    mask = np.array([[1, 1], [1, 1], [1, 1], [0, 1]], float)
    b = M.all_positive_baseline_au(y, mask, ["AU1", "AU2"])
    assert b["f1"]["AU1"] == approx(80.0) and b["f1"]["AU2"] == 0.0
    assert b["mean_f1"] == approx(40.0) and b["baseline"] == "all-positive"
    # Majority class of the training labels is 2; test 2 0 1 2 -> 2 of 4 right.
    mb = M.majority_baseline_fer([2, 2, 1, 0, 2, 1], [2, 0, 1, 2], ["a", "b", "c"])
    assert mb["majority_class"] == 2 and mb["majority_name"] == "c"
    assert mb["accuracy"] == approx(50.0)
    # macro F1: only c has F1 (2*2/(4+2) = 66.667); a and b are 0 (positives, no prediction)
    assert mb["macro_f1"] == approx((0 + 0 + 200 / 3) / 3)
    # Ties go to the lower class index.
    assert M.majority_baseline_fer([1, 0, 0, 1], [0, 1])["majority_class"] == 0
