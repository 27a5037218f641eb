"""Evaluation metrics: AU F1 (masked, per fold and pooled), FER accuracy, thresholds, baselines.

All scores are percentages (0-100), as the paper's tables print them.

Conventions (the same in every function here):

* AU predictions are ``score >= threshold`` (default threshold 0.5).
* Only coded entries count: ``mask == 1``. BP4D's code 9 ("not coded") must arrive with mask 0;
  the truth value under mask 0 is ignored.
* F1 = 2 TP / (2 TP + FP + FN), the usual per-AU binary F1 on the positive class. When the AU
  has no positive truth but the model predicts some positives, F1 = 0 (the literature's convention,
  scikit-learn's ``zero_division=0``). When there are neither positives in the truth nor predicted
  positives (TP = FP = FN = 0), F1 is undefined: it is reported as NaN and left out of every mean;
  ``n_valid`` counts the AUs that entered the mean. The same rule applies to an AU with no coded
  entry at all, to precision (no predicted positive -> NaN), to recall (no true positive -> NaN)
  and to a FER class that occurs in neither the truth nor the predictions.
* Folds: ``fold_average`` reports both ``fold_mean`` (F1 per fold, then averaged over the folds,
  as the literature reports k-fold results) and ``pooled`` (F1 of all folds' predictions
  concatenated, computed exactly by summing the per-fold confusion counts).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import confusion_matrix as _sk_confusion_matrix

DEFAULT_GRID = np.linspace(0.05, 0.95, 19)


# ----------------------------------------------------------------------------- helpers

def _pct(num: float, den: float) -> float:
    return float(100.0 * num / den) if den > 0 else float("nan")


def _nanmean(values) -> float:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else float("nan")


def _nanstd(values) -> float:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    arr = arr[~np.isnan(arr)]
    return float(arr.std()) if arr.size else float("nan")


def _as_au_arrays(y_true, scores, mask):
    y = np.asarray(y_true, dtype=float)
    s = np.asarray(scores, dtype=float)
    if y.ndim == 1:
        y = y[:, None]
    if s.ndim == 1:
        s = s[:, None]
    if y.shape != s.shape:
        raise ValueError(f"y_true {y.shape} and scores {s.shape} must have the same (N, C) shape")
    if mask is None:
        m = np.ones_like(y, dtype=bool)
    else:
        m = np.asarray(mask, dtype=float)
        if m.ndim == 1:
            m = m[:, None]
        if m.shape != y.shape:
            raise ValueError(f"mask {m.shape} must have the shape of y_true {y.shape}")
        m = m == 1
    return y, s, m


def _class_ids(class_ids, c: int) -> list[str]:
    if class_ids is None:
        return [f"AU{i + 1}" for i in range(c)]
    ids = [str(x) for x in class_ids]
    if len(ids) != c:
        raise ValueError(f"{len(ids)} class ids for {c} columns")
    return ids


def _thresholds(thresholds, c: int) -> np.ndarray:
    if thresholds is None:
        return np.full(c, 0.5)
    t = np.asarray(thresholds, dtype=float).reshape(-1)
    if t.size == 1:
        return np.full(c, float(t[0]))
    if t.size != c:
        raise ValueError(f"{t.size} thresholds for {c} AUs")
    return t


def _au_counts(y: np.ndarray, pred: np.ndarray, m: np.ndarray) -> dict[str, np.ndarray]:
    """Per-AU TP/FP/FN/TN over coded entries (scikit-learn's confusion matrix per column)."""
    c = y.shape[1]
    out = {k: np.zeros(c, dtype=np.int64) for k in ("tp", "fp", "fn", "tn")}
    for j in range(c):
        sel = m[:, j]
        if not sel.any():
            continue
        cm = _sk_confusion_matrix(y[sel, j] == 1, pred[sel, j], labels=[False, True])
        out["tn"][j], out["fp"][j], out["fn"][j], out["tp"][j] = cm.ravel()
    return out


def _au_from_counts(tp, fp, fn, tn, class_ids: list[str], thresholds) -> dict:
    per_au = {}
    for j, au in enumerate(class_ids):
        a, b, c_, d = (int(tp[j]), int(fp[j]), int(fn[j]), int(tn[j]))
        n = a + b + c_ + d
        per_au[au] = {
            "f1": _pct(2 * a, 2 * a + b + c_),
            "precision": _pct(a, a + b),
            "recall": _pct(a, a + c_),
            "accuracy": _pct(a + d, n),
            "positive_rate": _pct(a + c_, n),      # share of coded entries that are positive
            "predicted_rate": _pct(a + b, n),      # share predicted positive
            "n_coded": n, "n_positive": a + c_, "n_predicted": a + b,
            "tp": a, "fp": b, "fn": c_, "tn": d,
        }
    f1 = {au: v["f1"] for au, v in per_au.items()}
    valid = [v for v in f1.values() if not np.isnan(v)]
    return {
        "task": "au",
        "class_ids": list(class_ids),
        "thresholds": None if thresholds is None else [float(t) for t in thresholds],
        "n_samples": None,
        "per_au": per_au,
        "f1": f1,
        "mean_f1": _nanmean(valid),
        "n_valid": len(valid),
        "mean_precision": _nanmean(v["precision"] for v in per_au.values()),
        "mean_recall": _nanmean(v["recall"] for v in per_au.values()),
        "mean_accuracy": _nanmean(v["accuracy"] for v in per_au.values()),
    }


# ----------------------------------------------------------------------------- AU

def au_metrics(y_true, scores, mask=None, class_ids: Sequence[str] | None = None,
               thresholds=None) -> dict:
    """Per-AU F1, precision, recall, accuracy and positive rate (%) on coded entries.

    ``y_true`` (N, C) in {0, 1}; ``scores`` (N, C) probabilities; ``mask`` (N, C), 1 = coded
    (None: all coded); ``thresholds`` (C,) or a scalar, default 0.5; prediction = score >= threshold.
    See the module docstring for undefined values (NaN, excluded from ``mean_f1``; ``n_valid``).

    Returns ``{"task": "au", "class_ids", "thresholds", "n_samples", "per_au": {AU: {"f1",
    "precision", "recall", "accuracy", "positive_rate", "predicted_rate", "n_coded", "n_positive",
    "n_predicted", "tp", "fp", "fn", "tn"}}, "f1": {AU: f1}, "mean_f1", "n_valid",
    "mean_precision", "mean_recall", "mean_accuracy"}``.
    """
    y, s, m = _as_au_arrays(y_true, scores, mask)
    ids = _class_ids(class_ids, y.shape[1])
    t = _thresholds(thresholds, y.shape[1])
    counts = _au_counts(y, s >= t[None, :], m)
    out = _au_from_counts(counts["tp"], counts["fp"], counts["fn"], counts["tn"], ids, t)
    out["n_samples"] = int(y.shape[0])
    return out


def tune_thresholds(y_true, scores, mask=None, grid=DEFAULT_GRID) -> np.ndarray:
    """Per-AU thresholds (C,) from ``grid`` that maximise F1 on the given predictions.

    Use it on TRAINING-fold predictions only and apply the thresholds to the test fold; tuning on
    the test fold inflates the reported F1. Ties go to the grid value closest to 0.5 (then the lower
    one). An AU without a positive coded entry carries no information and keeps 0.5.
    """
    y, s, m = _as_au_arrays(y_true, scores, mask)
    grid = np.asarray(grid, dtype=float).reshape(-1)
    if grid.size == 0:
        raise ValueError("empty threshold grid")
    pos = (y == 1) & m
    # f1[g, c] for every grid value g and AU c (vectorised: the grid is small).
    f1 = np.full((grid.size, y.shape[1]), np.nan)
    for g, thr in enumerate(grid):
        pred = (s >= thr) & m
        tp = (pred & pos).sum(0)
        fp = (pred & ~pos).sum(0)
        fn = (~pred & pos & m).sum(0)
        den = 2 * tp + fp + fn
        with np.errstate(invalid="ignore", divide="ignore"):
            f1[g] = np.where(den > 0, 2 * tp / np.maximum(den, 1), np.nan)
    order = np.lexsort((grid, np.round(np.abs(grid - 0.5), 9)))  # preference order for ties
    out = np.full(y.shape[1], 0.5)
    has_pos = pos.any(0)
    for c in range(y.shape[1]):
        if not has_pos[c]:  # F1 would only be 0 (some prediction) or undefined (none)
            continue
        col = f1[order, c]  # never NaN here: FN > 0 or TP > 0 at every threshold
        out[c] = grid[order[int(np.argmax(col))]]  # argmax returns the first maximum
    return out


def all_positive_baseline_au(y_true, mask=None, class_ids: Sequence[str] | None = None) -> dict:
    """``au_metrics`` of predicting every AU present in every coded frame.

    F1 per AU is 2p / (1 + p) for a positive rate p (0 when the AU never occurs): the floor a
    trained model must beat.
    """
    y = np.asarray(y_true, dtype=float)
    out = au_metrics(y, np.ones_like(y), mask, class_ids)
    out["baseline"] = "all-positive"
    return out


# ----------------------------------------------------------------------------- FER

def _fer_from_cm(cm: np.ndarray, class_names: list[str]) -> dict:
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diag(cm)
    support = cm.sum(1)
    predicted = cm.sum(0)
    per_class = {}
    for k, name in enumerate(class_names):
        a, fn, fp = int(tp[k]), int(support[k] - tp[k]), int(predicted[k] - tp[k])
        per_class[name] = {"recall": _pct(a, a + fn), "precision": _pct(a, a + fp),
                           "f1": _pct(2 * a, 2 * a + fp + fn),
                           "support": int(support[k]), "n_predicted": int(predicted[k])}
    f1s = [v["f1"] for v in per_class.values()]
    return {
        "task": "fer",
        "class_names": list(class_names),
        "n_samples": int(cm.sum()),
        "accuracy": _pct(int(tp.sum()), int(cm.sum())),
        "macro_f1": _nanmean(f1s),
        "n_valid": int(sum(not np.isnan(v) for v in f1s)),
        "mean_recall": _nanmean(v["recall"] for v in per_class.values()),  # balanced accuracy
        "recall": {k: v["recall"] for k, v in per_class.items()},
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),   # rows = truth, columns = prediction
    }


def fer_metrics(y_true, scores, class_names: Sequence[str]) -> dict:
    """Accuracy, per-class recall, per-class and macro F1 (%), confusion matrix (rows = truth).

    ``y_true`` (N,) class indices; ``scores`` (N, C) (the prediction is the arg-max) or (N,)
    predicted indices. ``mean_recall`` is the balanced accuracy. A class absent from both truth
    and predictions has F1 NaN and is left out of ``macro_f1`` (``n_valid`` classes entered it).
    """
    names = [str(c) for c in class_names]
    y = np.asarray(y_true).astype(np.int64).reshape(-1)
    s = np.asarray(scores)
    if s.ndim == 2:
        if s.shape != (y.size, len(names)):
            raise ValueError(f"scores {s.shape} must be (N={y.size}, C={len(names)})")
        pred = s.argmax(1)
    else:
        pred = s.astype(np.int64).reshape(-1)
        if pred.size != y.size:
            raise ValueError(f"{pred.size} predictions for {y.size} labels")
    if y.size and (y.min() < 0 or y.max() >= len(names)):
        raise ValueError(f"labels must lie in 0..{len(names) - 1}")
    cm = _sk_confusion_matrix(y, pred, labels=list(range(len(names))))
    return _fer_from_cm(cm, names)


def majority_baseline_fer(y_train, y_test, class_names: Sequence[str] | None = None) -> dict:
    """Metrics of predicting the training set's most frequent class for every test image.

    Returns ``{"baseline": "majority", "majority_class", "majority_name", "accuracy",
    "macro_f1", "mean_recall"}`` (ties: the lower class index).
    """
    tr = np.asarray(y_train).astype(np.int64).reshape(-1)
    te = np.asarray(y_test).astype(np.int64).reshape(-1)
    if tr.size == 0:
        raise ValueError("majority baseline needs training labels")
    n_classes = len(class_names) if class_names is not None else int(max(tr.max(), te.max(initial=0)) + 1)
    names = [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(n_classes)]
    major = int(np.bincount(tr, minlength=n_classes).argmax())
    m = fer_metrics(te, np.full(te.size, major), names)
    return {"baseline": "majority", "majority_class": major, "majority_name": names[major],
            "accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "mean_recall": m["mean_recall"],
            "n_samples": m["n_samples"]}


# ----------------------------------------------------------------------------- folds

def fold_average(per_fold: Sequence[dict]) -> dict:
    """Combine per-fold ``au_metrics`` (or ``fer_metrics``) dicts.

    Returns ``{"task", "n_folds", "class_ids"/"class_names", "fold_mean": {...}, "pooled": {...},
    "per_fold_mean_f1"/"per_fold_accuracy": [...]}``:

    * ``fold_mean`` — metrics per fold, then averaged over folds (how k-fold AU results are
      published). AU: ``per_au[AU]`` holds the fold means of f1 / precision / recall / accuracy /
      positive_rate, ``f1_std`` (population std over folds) and ``n_folds`` (folds where the F1 was
      defined); ``f1[AU]``; ``mean_f1`` = mean over AUs of the fold-mean F1 (the table's Avg);
      ``mean_f1_std`` = std over folds of each fold's mean F1. FER: mean and std of accuracy and
      macro F1, mean per-class recall.
    * ``pooled`` — the same metrics computed once over all folds' predictions together (sums of
      the per-fold confusion counts), in the ``au_metrics`` / ``fer_metrics`` layout.
    """
    folds = list(per_fold)
    if not folds:
        raise ValueError("fold_average needs at least one fold")
    task = folds[0].get("task", "au")
    if any(f.get("task", "au") != task for f in folds):
        raise ValueError("folds mix AU and FER metrics")
    if task == "fer":
        return _fold_average_fer(folds)
    ids = list(folds[0]["class_ids"])
    for f in folds[1:]:
        if list(f["class_ids"]) != ids:
            raise ValueError("folds have different AU lists")
    per_au = {}
    for au in ids:
        vals = {k: [f["per_au"][au][k] for f in folds]
                for k in ("f1", "precision", "recall", "accuracy", "positive_rate")}
        entry = {k: _nanmean(v) for k, v in vals.items()}
        entry["f1_std"] = _nanstd(vals["f1"])
        entry["n_folds"] = int(sum(not np.isnan(v) for v in vals["f1"]))
        per_au[au] = entry
    f1 = {au: v["f1"] for au, v in per_au.items()}
    fold_means = [f["mean_f1"] for f in folds]
    fold_mean = {"per_au": per_au, "f1": f1, "mean_f1": _nanmean(f1.values()),
                 "n_valid": int(sum(not np.isnan(v) for v in f1.values())),
                 "mean_f1_std": _nanstd(fold_means),
                 "mean_precision": _nanmean(v["precision"] for v in per_au.values()),
                 "mean_recall": _nanmean(v["recall"] for v in per_au.values()),
                 "mean_accuracy": _nanmean(v["accuracy"] for v in per_au.values())}
    sums = {k: np.sum([[f["per_au"][au][k] for au in ids] for f in folds], axis=0)
            for k in ("tp", "fp", "fn", "tn")}
    pooled = _au_from_counts(sums["tp"], sums["fp"], sums["fn"], sums["tn"], ids, None)
    pooled["n_samples"] = int(sum(f.get("n_samples") or 0 for f in folds))
    return {"task": "au", "n_folds": len(folds), "class_ids": ids,
            "fold_mean": fold_mean, "pooled": pooled, "per_fold_mean_f1": fold_means}


def _fold_average_fer(folds: list[dict]) -> dict:
    names = list(folds[0]["class_names"])
    for f in folds[1:]:
        if list(f["class_names"]) != names:
            raise ValueError("folds have different class lists")
    acc = [f["accuracy"] for f in folds]
    mf1 = [f["macro_f1"] for f in folds]
    fold_mean = {"accuracy": _nanmean(acc), "accuracy_std": _nanstd(acc),
                 "macro_f1": _nanmean(mf1), "macro_f1_std": _nanstd(mf1),
                 "mean_recall": _nanmean(f["mean_recall"] for f in folds),
                 "recall": {c: _nanmean(f["recall"][c] for f in folds) for c in names}}
    pooled = _fer_from_cm(np.sum([np.asarray(f["confusion_matrix"]) for f in folds], axis=0), names)
    return {"task": "fer", "n_folds": len(folds), "class_names": names,
            "fold_mean": fold_mean, "pooled": pooled, "per_fold_accuracy": acc}
