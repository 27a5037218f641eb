"""Result tables (rich) laid out as the paper's Tables 2-6, the paper's published numbers, and the
report folder of an evaluation (``results.json``, CSVs, PNG plots, ``report.txt``).

``result`` dicts read by the tables and by :func:`write_reports`:

* AU, k folds: :func:`clefctl.metrics.fold_average` output (``fold_mean`` and ``pooled``);
  AU, one split: :func:`clefctl.metrics.au_metrics` output.
* FER: :func:`clefctl.metrics.fer_metrics` output (official split) or ``fold_average`` of them.
* Optional keys: ``"dataset"`` (registry name, picks the published row), ``"tuned"`` (metrics of
  the same predictions with per-AU thresholds tuned on the training folds, same layout as the
  result), ``"baseline"`` (AU: ``all_positive_baseline_au`` or ``fold_average`` of them, filled in
  by ``write_reports`` from the predictions when absent; FER: ``majority_baseline_fer``). Any other
  keys (config, timings) pass through into ``results.json``.

``predictions`` frames (see :func:`predictions_frame`): ``id, subject, fold``, then for AU
``true_<AU>``, ``mask_<AU>`` (when a mask exists), ``score_<AU>``; for FER ``label, label_name,
pred, pred_name, score_<class>``.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from clefctl import metrics as M
from clefctl.paths import atomic_path, write_json_atomic
from clefctl.data import DISPLAY_NAMES, canonical_name  # the registry's one alias table

PUBLISHED_LABEL = "CLEF (published, ICCV 2023)"
PAPER = "Zhang et al., Weakly-Supervised Text-driven Contrastive Learning for Facial Behavior Understanding (CLEF), ICCV 2023"

# Published CLEF rows, copied from the paper's tables (F1 % per AU; accuracy %).
PUBLISHED_AU: dict[str, dict] = {
    "bp4d": {
        "table": "Table 2", "protocol": "3-fold subject-exclusive", "avg": 65.9,
        "per_au": {"AU1": 55.8, "AU2": 46.8, "AU4": 63.3, "AU6": 79.5, "AU7": 77.6, "AU10": 83.6,
                   "AU12": 87.8, "AU14": 67.3, "AU15": 55.2, "AU17": 63.5, "AU23": 53.0, "AU24": 57.8},
    },
    "disfa": {
        "table": "Table 3", "protocol": "3-fold subject-exclusive", "avg": 64.8,
        "per_au": {"AU1": 64.3, "AU2": 61.8, "AU4": 68.4, "AU6": 49.0, "AU9": 55.2, "AU12": 72.9,
                   "AU25": 89.9, "AU26": 57.0},
    },
    "bp4dplus": {
        "table": "Table 4", "protocol": "4-fold subject-exclusive", "avg": 63.1,
        "per_au": {"AU1": 47.5, "AU2": 39.6, "AU4": 40.2, "AU6": 86.5, "AU7": 87.3, "AU10": 90.5,
                   "AU12": 89.9, "AU14": 81.6, "AU15": 47.0, "AU17": 46.6, "AU23": 54.3, "AU24": 41.5},
        "note": "the per-AU values as printed average 62.7; the paper's Avg is 63.1",
    },
}
PUBLISHED_FER: dict[str, dict] = {
    "affectnet7": {"table": "Table 5", "accuracy": 65.66},
    "affectnet8": {"table": "Table 5", "accuracy": 62.77},
    "rafdb": {"table": "Table 5", "accuracy": 90.09},
    "ferplus": {"table": "Table 5", "accuracy": 89.74},
}
ABLATION_MARKS = ("PA", "PI", "I", "N", "D")
# Table 6: PA pre-trained with activity texts, PI pre-trained with images, I image encoder,
# N label names, D label descriptions; mean F1 on BP4D, accuracy on RAF-DB.
PUBLISHED_ABLATION: list[dict] = [
    {"method": m, **dict(zip(ABLATION_MARKS, marks)), "bp4d": f1, "rafdb": acc}
    for m, marks, f1, acc in [
        ("CLIP", (0, 0, 1, 0, 0), 63.4, 87.88),
        ("CLIP", (0, 0, 1, 1, 0), 64.0, 88.72),
        ("CLIP", (0, 0, 1, 1, 1), 64.4, 89.70),
        ("FaRL", (0, 0, 1, 0, 0), 63.7, 88.31),
        ("FaRL", (0, 0, 1, 1, 0), 64.1, 88.69),
        ("FaRL", (0, 0, 1, 1, 1), 64.6, 88.78),
        ("CLEF", (0, 1, 1, 0, 0), 65.0, 89.67),
        ("CLEF", (1, 1, 1, 0, 0), 64.2, 89.34),
        ("CLEF", (0, 1, 1, 1, 0), 64.7, 88.57),
        ("CLEF", (1, 1, 1, 1, 0), 64.9, 89.57),
        ("CLEF", (0, 1, 1, 1, 1), 64.8, 89.44),
        ("CLEF", (1, 1, 1, 1, 1), 65.9, 90.09),
    ]
]
for _row in PUBLISHED_ABLATION:
    for _k in ABLATION_MARKS:
        _row[_k] = bool(_row[_k])



# ----------------------------------------------------------------------------- small helpers

def display_name(dataset: str | None, default: str = "data") -> str:
    """How tables and plots name a data set (``bp4dplus`` -> ``BP4D+``)."""
    key = normalize_dataset(dataset)
    return DISPLAY_NAMES.get(key, key) if key else default


def normalize_dataset(name: str | None) -> str | None:
    """Registry name of a data set (``BP4D+`` -> ``bp4dplus``); None stays None."""
    if name is None:
        return None
    return canonical_name(name)


def published_reference(dataset: str | None) -> dict | None:
    """The paper's CLEF numbers for a data set (AU: ``per_au`` and ``avg``; FER: ``accuracy``),
    with ``source`` and ``table``; None for data sets the paper does not report (synthetic, yours)."""
    key = normalize_dataset(dataset)
    ref = PUBLISHED_AU.get(key) or PUBLISHED_FER.get(key)
    if ref is None:
        return None
    return {"dataset": key, "source": PUBLISHED_LABEL, "paper": PAPER, **json.loads(json.dumps(ref))}


def jsonable(obj):
    """Plain JSON types: numpy scalars/arrays -> Python, NaN/inf -> None, paths -> str."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _fmt(v, digits: int) -> str:
    if v is None:
        return "-"
    v = float(v)
    return "n/a" if math.isnan(v) else f"{v:.{digits}f}"


def _is_folds(d: dict | None) -> bool:
    return isinstance(d, dict) and "fold_mean" in d and "pooled" in d


def _main_view(d: dict) -> dict:
    """The numbers a table shows for a result-like dict: fold means when there are folds."""
    return d["fold_mean"] if _is_folds(d) else d


def render_table(table, width: int = 160) -> str:
    """Plain text of a rich table (what ``report.txt`` holds and tests read)."""
    from rich.console import Console

    console = Console(record=True, width=width, file=io.StringIO(), color_system=None)
    console.print(table)
    return console.export_text()


# ----------------------------------------------------------------------------- predictions

def predictions_frame(ids: Sequence[str], subjects: Sequence[str] | None, folds, y_true, scores,
                      class_ids: Sequence[str], task: str, mask=None):
    """The ``predictions.csv`` frame: ``id, subject, fold`` and the truth/score columns (see the
    module docstring). ``folds``: one fold number per row, a single number, or None."""
    import pandas as pd

    n = len(ids)
    cols: dict = {"id": list(ids), "subject": list(subjects) if subjects is not None else [""] * n}
    if folds is None:
        cols["fold"] = np.zeros(n, dtype=int)
    elif np.ndim(folds) == 0:
        cols["fold"] = np.full(n, folds)
    else:
        cols["fold"] = np.asarray(folds).reshape(-1)
    s = np.asarray(scores, dtype=float)
    names = [str(c) for c in class_ids]
    if task == "au":
        y = np.asarray(y_true, dtype=float)
        for j, au in enumerate(names):
            cols[f"true_{au}"] = y[:, j].astype(int)
        if mask is not None:
            m = np.asarray(mask, dtype=float)
            for j, au in enumerate(names):
                cols[f"mask_{au}"] = m[:, j].astype(int)
        for j, au in enumerate(names):
            cols[f"score_{au}"] = s[:, j]
    elif task == "fer":
        y = np.asarray(y_true).astype(int).reshape(-1)
        pred = s.argmax(1)
        cols.update({"label": y, "label_name": [names[k] for k in y],
                     "pred": pred, "pred_name": [names[k] for k in pred]})
        for j, c in enumerate(names):
            cols[f"score_{c}"] = s[:, j]
    else:
        raise ValueError(f"task must be 'au' or 'fer', not {task!r}")
    return pd.DataFrame(cols)


def _baseline_from_predictions(predictions, class_ids: list[str], folds_form: bool) -> dict | None:
    """All-positive AU baseline from the truth columns of a predictions frame (per fold)."""
    if predictions is None or not all(f"true_{a}" in predictions.columns for a in class_ids):
        return None
    has_mask = all(f"mask_{a}" in predictions.columns for a in class_ids)
    groups = [g for _, g in predictions.groupby("fold", sort=True)] \
        if folds_form and "fold" in predictions.columns else [predictions]
    per = []
    for g in groups:
        y = g[[f"true_{a}" for a in class_ids]].to_numpy(dtype=float)
        m = g[[f"mask_{a}" for a in class_ids]].to_numpy(dtype=float) if has_mask else None
        per.append(M.all_positive_baseline_au(y, m, class_ids))
    if folds_form:
        out = M.fold_average(per)
        out["baseline"] = "all-positive"
        return out
    return per[0]


# ----------------------------------------------------------------------------- tables

def au_table_width(result: dict) -> int:
    """Characters the paper-layout AU table needs (one column per AU): pick the layout by it."""
    n = len(result.get("class_ids") or _main_view(result)["f1"].keys())
    return 34 + 7 * (n + 1)


def au_table(result: dict, dataset: str | None = None, *, title: str | None = None,
             transpose: bool = False):
    """F1 (%) per AU and Avg as in the paper's Tables 2-4.

    Rows: ours (fold mean and pooled, or one row for a single split), ``tuned thresholds
    (train-fold)`` when ``result["tuned"]``, ``all-positive baseline`` when ``result["baseline"]``,
    and the published CLEF row for bp4d / disfa / bp4dplus. ``transpose=True`` lays the same
    numbers out with one row per AU and one column per method, for narrow terminals.
    """
    from rich.table import Table

    dataset = normalize_dataset(dataset or result.get("dataset"))
    ids = list(result.get("class_ids") or _main_view(result)["f1"].keys())
    rows: list[tuple[str, dict, float, str]] = []  # label, per-AU F1, avg, style
    if _is_folds(result):
        k = result.get("n_folds", "k")
        rows.append((f"ours, fold mean ({k} folds)", result["fold_mean"]["f1"],
                     result["fold_mean"]["mean_f1"], "bold"))
        rows.append(("ours, pooled", result["pooled"]["f1"], result["pooled"]["mean_f1"], ""))
    else:
        rows.append(("ours", result["f1"], result["mean_f1"], "bold"))
    if result.get("tuned"):
        v = _main_view(result["tuned"])
        rows.append(("tuned thresholds (train-fold)", v["f1"], v["mean_f1"], ""))
    if result.get("baseline"):
        v = _main_view(result["baseline"])
        rows.append(("all-positive baseline", v["f1"], v["mean_f1"], "dim"))
    ref = PUBLISHED_AU.get(dataset)
    if ref:
        rows.append((PUBLISHED_LABEL, ref["per_au"], ref["avg"], "italic"))
    name = display_name(dataset, "AU data")
    table = Table(title=title or f"F1 (%) per AU on {name}", title_justify="left")
    if transpose:
        table.add_column("AU", no_wrap=True)
        for label, _, _, style in rows:
            table.add_column(label, justify="right", style=style or None)
        for au in ids:
            table.add_row(au, *[_fmt(f1.get(au), 1) for _, f1, _, _ in rows])
        table.add_row("Avg", *[_fmt(avg, 1) for _, _, avg, _ in rows], style="bold")
    else:
        table.add_column("Method", no_wrap=True)
        for au in ids:
            table.add_column(au, justify="right")
        table.add_column("Avg", justify="right", style="bold")
        for label, f1, avg, style in rows:
            table.add_row(label, *[_fmt(f1.get(au), 1) for au in ids], _fmt(avg, 1), style=style or None)
    notes = []
    if _is_folds(result):
        notes.append("fold mean: F1 per test fold, averaged over folds (as published); "
                     "pooled: F1 over all folds' predictions together")
    notes.append("n/a: no positive and no predicted frame, left out of Avg")
    if ref:
        missing = [a for a in ref["per_au"] if a not in ids]
        notes.append(f"published row: {ref['table']} of the paper, {ref['protocol']}"
                     + (f"; its Avg also covers {', '.join(missing)}" if missing else ""))
    table.caption = "; ".join(notes)
    table.caption_justify = "left"
    return table


def fer_table(result: dict, dataset: str | None = None, *, title: str | None = None):
    """Accuracy, macro F1 and recall per class (%) as in the paper's Table 5 (which has accuracy
    only: the published row fills that column)."""
    from rich.table import Table

    dataset = normalize_dataset(dataset or result.get("dataset"))
    names = list(result.get("class_names") or _main_view(result)["recall"].keys())
    name = display_name(dataset, "FER data")
    table = Table(title=title or f"Expression recognition on {name} (%)", title_justify="left")
    table.add_column("Method", no_wrap=True)
    table.add_column("Accuracy", justify="right", style="bold")
    table.add_column("Macro F1", justify="right")
    for c in names:
        table.add_column(f"R:{c}", justify="right")
    rows = []
    if _is_folds(result):
        k = result.get("n_folds", "k")
        rows.append((f"ours, fold mean ({k} folds)", result["fold_mean"], "bold"))
        rows.append(("ours, pooled", result["pooled"], ""))
    else:
        rows.append(("ours", result, "bold"))
    for label, v, style in rows:
        table.add_row(label, _fmt(v.get("accuracy"), 2), _fmt(v.get("macro_f1"), 2),
                      *[_fmt(v["recall"].get(c), 1) for c in names], style=style or None)
    base = result.get("baseline")
    if base:
        b = _main_view(base)
        label = f"majority baseline ({b['majority_name']})" if "majority_name" in b else "majority baseline"
        table.add_row(label, _fmt(b.get("accuracy"), 2), _fmt(b.get("macro_f1"), 2),
                      *["-" for _ in names], style="dim")
    ref = PUBLISHED_FER.get(dataset)
    if ref:
        table.add_row(PUBLISHED_LABEL, _fmt(ref["accuracy"], 2), "-", *["-" for _ in names],
                      style="italic")
    notes = ["R:<class> = recall of that class"]
    if ref:
        notes.append(f"published row: {ref['table']} of the paper (accuracy only)")
    table.caption = "; ".join(notes)
    table.caption_justify = "left"
    return table


def _marks_key(row: dict) -> tuple:
    return (str(row.get("method", "")).strip().lower(),) + tuple(bool(row.get(k)) for k in ABLATION_MARKS)


def ablation_table(rows: Iterable[dict] | None = None, *, au_name: str = "BP4D",
                   fer_name: str = "RAF-DB", title: str | None = None):
    """The paper's Table 6 with our numbers beside the published ones.

    ``rows``: our runs, each ``{"method": "CLIP"|"FaRL"|"CLEF"|..., "PA": bool, "PI": bool,
    "I": bool, "N": bool, "D": bool, "au_f1": mean F1 % or None, "fer_acc": accuracy % or None}``
    (``bp4d`` / ``rafdb`` are accepted for ``au_f1`` / ``fer_acc``). A row is placed beside the
    published row with the same method and marks; others are appended below.
    """
    from rich.table import Table

    ours: dict[tuple, dict] = {}
    extra: list[dict] = []
    published_keys = {_marks_key(r) for r in PUBLISHED_ABLATION}
    for r in rows or []:
        r = dict(r)
        r.setdefault("au_f1", r.get("bp4d"))
        r.setdefault("fer_acc", r.get("rafdb"))
        key = _marks_key(r)
        if key in published_keys:
            ours[key] = r
        else:
            extra.append(r)
    table = Table(title=title or "Ablation of components (paper Table 6)", title_justify="left")
    table.add_column("Method", no_wrap=True)
    for k in ABLATION_MARKS:
        table.add_column(k, justify="center")
    table.add_column(f"{au_name} F1 ours", justify="right", style="bold", overflow="fold")
    table.add_column("BP4D F1 paper", justify="right", style="italic")
    table.add_column(f"{fer_name} acc ours", justify="right", style="bold", overflow="fold")
    table.add_column("RAF-DB acc paper", justify="right", style="italic")

    def marks(r):
        return [("✓" if r.get(k) else "") for k in ABLATION_MARKS]

    for p in PUBLISHED_ABLATION:
        o = ours.get(_marks_key(p), {})
        table.add_row(p["method"], *marks(p), _fmt(o.get("au_f1"), 1), _fmt(p["bp4d"], 1),
                      _fmt(o.get("fer_acc"), 2), _fmt(p["rafdb"], 2))
    for r in extra:
        table.add_row(str(r.get("method", "")), *marks(r), _fmt(r.get("au_f1"), 1), "-",
                      _fmt(r.get("fer_acc"), 2), "-")
    table.caption = ("PA: pre-trained with activity texts; PI: pre-trained with images; I: image "
                     "encoder; N: label names; D: label descriptions. Paper columns: " + PUBLISHED_LABEL)
    table.caption_justify = "left"
    return table


# ----------------------------------------------------------------------------- report folder

def _read_jsonl(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a crash
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _named_paths(paths) -> list[tuple[str, Path]]:
    """Accept a dict name -> path, (name, path) pairs, or bare paths (named after their folder)."""
    if paths is None:
        return []
    if isinstance(paths, (str, Path)):
        paths = [paths]
    items = list(paths.items()) if isinstance(paths, dict) else list(paths)
    named, seen = [], {}
    for item in items:
        if isinstance(item, (tuple, list)):
            name, p = str(item[0]), Path(item[1])
        else:
            p = Path(item)
            name = p.parent.name if p.name == "metrics.jsonl" and p.parent.name else p.stem
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name}-{seen[name]}"
        named.append((name, p))
    return named


def _per_fold_frame(per_fold: Sequence[dict], task: str):
    import pandas as pd

    rows = []
    for i, f in enumerate(per_fold):
        row = {"fold": f.get("fold", i + 1), "n_samples": f.get("n_samples")}
        if task == "au":
            row.update({"mean_f1": f.get("mean_f1"), "n_valid": f.get("n_valid")})
            row.update({f"f1_{au}": v for au, v in f.get("f1", {}).items()})
            if f.get("thresholds") is not None:
                row.update({f"thr_{au}": t for au, t in zip(f["class_ids"], f["thresholds"])})
        else:
            row.update({"accuracy": f.get("accuracy"), "macro_f1": f.get("macro_f1"),
                        "mean_recall": f.get("mean_recall")})
            row.update({f"recall_{c}": v for c, v in f.get("recall", {}).items()})
        rows.append(row)
    return pd.DataFrame(rows)


def _write_csv(frame, path: Path) -> Path:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return path


def _au_colour_labels(labels, class_ids: list[str]) -> tuple[np.ndarray, list[str]]:
    """Each sample's most frequent (over the whole set) active AU, or "none"."""
    y = np.asarray(labels) == 1
    freq = y.sum(0)
    order = np.argsort(-freq, kind="stable")       # AU columns from most to least frequent
    first = np.full(y.shape[0], len(class_ids))     # index of "none"
    for j in order[::-1]:                           # the most frequent active AU wins
        first[y[:, j]] = j
    return first, list(class_ids) + ["none"]


def write_reports(out_dir, result: dict, predictions=None, per_fold: Sequence[dict] | None = None,
                  features=None, labels=None, metrics_jsonl_paths=None, task: str | None = None,
                  class_ids: Sequence[str] | None = None, *, dataset: str | None = None,
                  tsne_max_points: int = 2000, random_state: int = 0) -> dict[str, Path]:
    """Write the report folder of an evaluation and return ``{name: path}`` of what was written.

    * ``results.json`` — ``result`` (NaN as null) with ``dataset``, ``task``, the filled-in AU
      ``baseline``, the paper's ``published`` numbers for the data set and ``per_fold``;
    * ``per_fold.csv`` — one row per fold (F1 per AU, or accuracy and recall per class);
    * ``predictions.csv`` — the ``predictions`` frame (see :func:`predictions_frame`);
    * ``f1_per_au.png`` (AU, with the published bars) or ``confusion_matrix.png`` (FER);
    * ``tsne.png`` — t-SNE of ``features`` (N, D) coloured by ``labels`` (FER (N,) class indices;
      AU (N, C) 0/1, coloured by the most frequent active AU or "none"), when at least 5 given;
    * ``training_curves.png`` — from ``metrics_jsonl_paths`` (paths, (name, path) pairs or a
      dict), when any of them holds records;
    * ``report.txt`` — the tables as plain text.
    """
    from clefctl import plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = dict(result)
    task = task or res.get("task") or "au"
    if task not in ("au", "fer"):
        raise ValueError(f"task must be 'au' or 'fer', not {task!r}")
    dataset = normalize_dataset(dataset or res.get("dataset"))
    if dataset:
        res["dataset"] = dataset
    res["task"] = task
    if class_ids is None:
        class_ids = res.get("class_ids") if task == "au" else res.get("class_names")
    class_ids = [str(c) for c in (class_ids or _main_view(res)["f1" if task == "au" else "recall"])]
    if task == "au" and not res.get("baseline"):
        base = _baseline_from_predictions(predictions, class_ids, _is_folds(res))
        if base is not None:
            res["baseline"] = base
    ref = published_reference(dataset)
    if ref:
        res["published"] = ref
    if per_fold and "per_fold" not in res:
        res["per_fold"] = list(per_fold)
    written: dict[str, Path] = {}
    written["results"] = write_json_atomic(out / "results.json", jsonable(res))
    if per_fold:
        written["per_fold"] = _write_csv(_per_fold_frame(per_fold, task), out / "per_fold.csv")
    if predictions is not None:
        written["predictions"] = _write_csv(predictions, out / "predictions.csv")

    view = _main_view(res)
    title_name = display_name(dataset)
    if task == "au":
        base = _main_view(res["baseline"])["f1"] if res.get("baseline") else None
        label = "ours (fold mean)" if _is_folds(res) else "ours"
        written["f1_bars"] = plots.f1_bars(
            {a: view["f1"].get(a) for a in class_ids}, out / "f1_per_au.png",
            ref["per_au"] if ref else None, label=label, reference_label=PUBLISHED_LABEL,
            baseline=base, title=f"F1 per AU on {title_name}")
        table = au_table(res, dataset)
    else:
        cm = res["pooled"]["confusion_matrix"] if _is_folds(res) else res["confusion_matrix"]
        written["confusion_matrix"] = plots.confusion_matrix(
            cm, class_ids, out / "confusion_matrix.png",
            title=f"Confusion matrix on {title_name} (rows: true class, % of row)")
        table = fer_table(res, dataset)

    if features is not None and labels is not None and len(features) >= 5:
        if task == "au":
            idx, names = _au_colour_labels(labels, class_ids)
        else:
            idx, names = np.asarray(labels).astype(int).reshape(-1), class_ids
        written["tsne"] = plots.tsne(features, idx, names, out / "tsne.png", max_points=tsne_max_points,
                                     random_state=random_state,
                                     title=f"t-SNE of image features on {title_name}")

    runs = [(name, _read_jsonl(p)) for name, p in _named_paths(metrics_jsonl_paths) if p.is_file()]
    runs = [(n, r) for n, r in runs if r]
    if runs:
        written["training_curves"] = plots.training_curves(runs, out / "training_curves.png",
                                                          title=f"Training on {title_name}")

    from clefctl.paths import write_text_atomic

    written["report"] = write_text_atomic(out / "report.txt", render_table(table, width=200))
    return written
