"""Evaluation: the subject-exclusive k-fold protocol, single-model evaluation and the Table 6 ablation.

``evaluate_kfold`` fine-tunes one model per fold with the settings of a fine-tuning run (reusing
fold runs that already exist with the same settings), scores each on its held-out subjects and
writes the report folder (results.json, per_fold.csv, predictions.csv, PNG plots). AU results are
reported both as F1 per fold averaged over folds (as the literature reports) and as F1 over the
pooled predictions. Thresholds are 0.5; ``tune_thresholds`` picks per-AU thresholds on the
TRAINING fold's predictions only and reports them as a separate, labelled row.

An unreadable image is never scored: it is left out of the metrics, predictions.csv and plots,
counted in ``skipped`` and listed in ``skipped_ids`` (per fold and in total) of results.json,
and ``n_samples`` counts the images scored.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clefctl.distributed import is_main
from clefctl.errors import ClefError
from clefctl.workspace import INVOCATION_OPTIONS, Run, Workspace

IGNORED_OPTION_KEYS = ("fold", "resume", "evaluate", "workspace")
IGNORED_TRAIN_KEYS = ("progress",)


@dataclass
class EvaluateOptions:
    """Everything ``clefctl evaluate`` takes: the k-fold protocol (default), one ``checkpoint``, or the
    Table 6 ``ablation`` (:func:`run_evaluate`)."""

    k: int | None = field(default=None, metadata={
        "flag": "--folds", "help": "Subject-exclusive folds (default: the data set's canonical count, else 3)."})
    config: str | None = field(default=None, metadata={
        "help": "Fine-tuning run whose settings to use (default: the latest)."})
    dataset: str | None = field(default=None, metadata={"help": "Evaluate on this data set instead of the run's."})
    checkpoint: str | None = field(default=None, metadata={
        "help": "Evaluate one fine-tuned model.pt (or a folder from clefctl export) instead of running the folds.",
        "path": {}})
    split: str = field(default="test", metadata={
        "help": "With --checkpoint: the split to score.", "choices": ("test", "train", "val", "all")})
    tune_thresholds: bool = field(default=False, metadata={
        "help": "Also report per-AU thresholds tuned on each TRAINING fold (labelled row)."})
    ablation: bool = field(default=False, metadata={
        "help": "Run the Table 6 grid (PA, PI, I, N, D) on synthetic-au/-fer."})
    epochs: float | None = field(default=None, metadata={
        "help": "Ablation: epochs per run (default: the stages').", "min": 0, "min_open": True})
    trust_checkpoint: bool = False       # --checkpoint only
    data_root: str | None = None
    dataset_root: str | None = None
    crop_cache: bool = True
    device: str | None = None
    workspace: str | None = None
    progress: bool = True


@dataclass
class EvalResult:
    run: Run | None  # None on the ranks other than 0 under torchrun (rank 0 writes the report)
    result: dict
    files: dict
    ablation: list[dict] | None = None  # the Table 6 rows (rank 0 only)

    @property
    def main(self) -> bool:
        """This process reports (rank 0 under torchrun)."""
        return self.run is not None or self.ablation is not None


def run_evaluate(opts: EvaluateOptions) -> EvalResult:
    """``clefctl evaluate``: the Table 6 grid (``ablation``, its rows in ``.ablation``), one checkpoint
    on a split, or the k-fold protocol of a fine-tuning run's settings."""
    if opts.ablation:
        rows = run_ablation(workspace=opts.workspace, progress=opts.progress,
                            train_overrides={"epochs": opts.epochs} if opts.epochs else None)
        return EvalResult(run=None, result={}, files={}, ablation=rows if is_main() else None)
    if opts.checkpoint:
        return evaluate_checkpoint(opts.checkpoint, opts.dataset, opts.split, opts.workspace, opts.data_root,
                                   opts.dataset_root, opts.device, trust_checkpoint=opts.trust_checkpoint,
                                   crop_cache=opts.crop_cache)
    return evaluate_kfold(opts.k, opts.config, opts.workspace, opts.dataset, opts.data_root, opts.dataset_root,
                          opts.tune_thresholds, opts.device, progress=opts.progress, crop_cache=opts.crop_cache)


def _comparable(options: dict) -> dict:
    o = copy.deepcopy(options)
    o.setdefault("crop_cache", True)  # runs from before the face-crop cache read it when one was ready
    for k in IGNORED_OPTION_KEYS:
        o.pop(k, None)
    for k in IGNORED_TRAIN_KEYS:
        o.get("train", {}).pop(k, None)
    return o


def _finetune_options(options: dict):
    from clefctl.engine import TrainConfig
    from clefctl.finetune import FinetuneOptions

    o = copy.deepcopy(options)
    train = TrainConfig(**o.pop("train", {}))
    for key in INVOCATION_OPTIONS:  # how a run was invoked (trust only ever from a command line)
        o.pop(key, None)
    return FinetuneOptions(**o, train=train)


def find_fold_run(ws: Workspace, options: dict, fold: int) -> Run | None:
    """A finished fine-tuning run with the same settings for ``fold`` (the workspace's run finder:
    LATEST when it matches, else the newest match)."""
    want = _comparable(options)

    def same_settings(run: Run) -> bool:
        if not run.model_path.is_file() or not run.finished:
            return False
        opts = dict(run.config().get("options", {}))
        if opts.get("folds") is None and (run.path / "folds.json").is_file():
            from clefctl.data.folds import load_folds

            opts["folds"] = len(load_folds(run.path / "folds.json"))  # the run's effective fold count
        return opts.get("fold") == fold and _comparable(opts) == want
    return ws.find_run("finetune", where=same_settings)


def _load_bundle(cfg: dict, data_root=None, dataset_root=None):
    from clefctl.data import load_dataset

    o = cfg["options"]
    return load_dataset(cfg["dataset"], root=dataset_root or o.get("dataset_root"),
                        data_root=data_root or o.get("data_root"))


def _score_run(run: Run, samples, task: str, device=None, what: str = "test", crops=None):
    """(model, :class:`clefctl.scoring.ScoredSamples` of its readable ``samples``). ``crops``: a callable
    giving the face-crop cache for the model's input size (:func:`_crop_finder`), or None."""
    from clefctl.model import create

    model = create(weights=str(run.model_path), device=device)
    extras = model.load_report.extras
    return model, _readable(_score_with_crops(model, samples, extras, task, crops, what), what)


def _crop_finder(bundle, enabled: bool):
    """A callable ``image_size -> CropCache | None`` that looks for the bundle's cache once."""
    from clefctl.data.crops import crop_cache_for

    found: dict = {}

    def get(image_size: int):
        if image_size not in found:
            found[image_size] = crop_cache_for(bundle, image_size, enabled)
        return found[image_size]
    return get


def _score_with_crops(model, samples, extras: dict, task: str, crops, what: str):
    """:func:`clefctl.scoring.predict_scores` on the samples' face crops when a cache is ready; frames the
    cache has no crop for are left out and listed with the unreadable ones."""
    from clefctl.scoring import predict_scores

    cache = crops(model.image_size) if crops is not None else None
    left = []
    if cache is not None:
        samples, left = cache.partition(samples, what=what)
    scored = predict_scores(model, samples, extras, task)
    scored.skipped.extend(left)
    return scored


def _warn_crop_mismatch(run_config: dict, cache) -> None:
    """A warning when the checkpoint's run trained on face crops and this evaluation reads full frames, or
    the other way round (a run's config records the cache it read as ``crop_cache``)."""
    if "crop_cache" not in run_config or not is_main():
        return
    trained = run_config["crop_cache"] is not None
    if trained != (cache is not None):
        first, then = ("face crops", "full frames") if trained else ("full frames", "face crops")
        warnings.warn(f"the checkpoint was trained on {first} but is evaluated on {then}: the scores may not "
                      f"be comparable" + ("" if trained else " (pass --no-crop-cache)"), stacklevel=3)


def _readable(scored, what: str):
    """``scored`` itself; ClefError when none of its images could be read, a warning when some
    were left out."""
    bad = scored.skipped
    if not scored.samples:
        raise ClefError(f"none of the {len(bad)} {what} images could be read" +
                        (f" (first: {bad[0]})" if bad else ""), hint="check the image files")
    if bad:
        warnings.warn(f"{len(bad)} unreadable {what} image{'s' if len(bad) != 1 else ''} left out of "
                      f"the metrics (first: {bad[0]}); results.json lists them", stacklevel=3)
    return scored


def _features(model, samples, limit: int = 2000, seed: int = 0):
    """Image features of up to ``limit`` readable ``samples`` (for the t-SNE plot) and their samples."""
    from clefctl.data.dataset import encode_readable
    from clefctl.data.transforms import transforms_for

    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(samples), size=min(limit, len(samples)), replace=False))
    chosen = [samples[i] for i in idx]
    feats, kept, _ = encode_readable(model.encode_images, chosen, transforms_for(model, train=False))
    if feats is None:
        return np.zeros((0, model.embed_dim), np.float32), []
    return feats.numpy(), [chosen[i] for i in kept]


def _truth(samples, task: str):
    if task == "fer":
        return np.array([s.label for s in samples]), None
    y = np.stack([s.aus for s in samples]).astype(float)
    m = np.stack([s.au_mask if s.au_mask is not None else np.ones_like(s.aus) for s in samples]).astype(float)
    return y, m


def evaluate_kfold(k: int | None = None, config: str | None = None, workspace: str | None = None,
                   dataset: str | None = None, data_root: str | None = None, dataset_root: str | None = None,
                   tune: bool = False, device: str | None = None, progress: bool = True,
                   crop_cache: bool = True) -> EvalResult:
    """Run the k-fold protocol for the settings of fine-tuning run ``config`` (default: the latest).
    ``crop_cache`` False: folds train and test on the full frames even where a face-crop cache is ready."""
    from clefctl import metrics, reports
    from clefctl.data.folds import make_folds, official_split, split_samples
    from clefctl.finetune import run_finetune

    ws = Workspace(workspace)
    ref = ws.find_run("finetune", config, where=lambda r: r.finished)
    if ref is None:
        raise ClefError(f"no fine-tuning run in workspace {ws.root}",
                        hint="run `clefctl finetune` first (or pass --config RUN)")
    cfg = ref.config()
    options = dict(cfg["options"])
    if dataset and dataset != cfg["dataset"]:
        options["dataset"] = dataset
    options["workspace"] = workspace
    if not crop_cache:
        options["crop_cache"] = False
    bundle = _load_bundle({"dataset": options["dataset"], "options": options}, data_root, dataset_root)
    crops = _crop_finder(bundle, options.get("crop_cache", True))
    task, classes = bundle.task, bundle.classes
    per_fold, pred_frames, feats, feat_labels, curves, tuned_folds, scored_tests = [], [], [], [], [], [], []
    if any(s.split for s in bundle.samples):
        folds_desc = None
        train, test = official_split(bundle)
        plan = [(1, train, test, None)]
    else:
        k = k or options.get("folds") or (len(bundle.canonical_folds) if bundle.canonical_folds else 3)
        options["folds"] = k
        folds_desc = make_folds(bundle, k, seed=options.get("train", {}).get("seed", 0))
        plan = [(f.index, *split_samples(bundle, f), f) for f in folds_desc]
    for fold_index, train, test, fold in plan:
        run = find_fold_run(ws, options, fold_index) if fold is not None else \
            (ref if ref.model_path.is_file() else None)
        if run is None:
            fo = _finetune_options(dict(options, fold=fold_index))
            fo.train.progress = progress
            fo.workspace = workspace
            run = run_finetune(fo)
        if fold is not None:
            _check_subject_exclusive(run, fold)
        model, scored = _score_run(run, test, task, device, crops=crops)
        fm, frame = _scored_metrics(scored, task, classes, fold_index)
        if task == "au" and tune:
            tuned_folds.append(_tuned_metrics(run, train, scored, classes, fold_index, device, crops))
        fm["fold"] = fold_index
        fm["run"] = run.name
        per_fold.append(fm)
        pred_frames.append(frame)
        scored_tests.append(scored.samples)  # the readable test images, in score-row order
        f, chosen = _features(model, scored.samples, limit=max(1, 2000 // len(plan))) if is_main() else (None, [])
        if chosen:
            feats.append(f)
            feat_labels.append(_truth(chosen, task)[0])
        curves.append((f"fold {fold_index}" if fold is not None else run.name, run.metrics_path))
    import pandas as pd

    if len(per_fold) > 1:
        result = metrics.fold_average(per_fold)
        if tuned_folds:
            result["tuned"] = metrics.fold_average(tuned_folds)
    else:
        result = dict(per_fold[0])
        if tuned_folds:
            result["tuned"] = tuned_folds[0]
    if task == "fer":
        y_train = np.array([s.label for s in plan[0][1]])
        y_test = np.array([s.label for s in scored_tests[0]])
        result["baseline"] = metrics.majority_baseline_fer(y_train, y_test, classes)
    result["skipped_ids"] = [i for f in per_fold for i in f["skipped_ids"]]
    result["skipped"] = len(result["skipped_ids"])
    result["dataset"] = bundle.name
    result["protocol"] = f"{len(plan)}-fold subject-exclusive" if folds_desc else "official train/test split"
    result["settings_from"] = ref.name
    if not is_main():  # torchrun: every rank trained and scored its shard; rank 0 writes the report
        return EvalResult(None, result, {})
    out = ws.new_run("evaluate", f"{bundle.name}-{len(plan)}fold" if folds_desc else bundle.name)
    out.save_config({"stage": "evaluate", "dataset": bundle.name, "reference_run": ref.name, "folds": len(plan),
                     "fold_runs": [f["run"] for f in per_fold], "tuned_thresholds": tune})
    files = reports.write_reports(out.path, result, predictions=pd.concat(pred_frames, ignore_index=True),
                                  per_fold=per_fold, features=np.concatenate(feats) if feats else None,
                                  labels=np.concatenate(feat_labels) if feats else None,
                                  metrics_jsonl_paths=curves, task=task,
                                  class_ids=classes, dataset=bundle.name)
    ws.set_latest(out)
    return EvalResult(out, result, files)


def _scored_metrics(scored, task: str, classes: list[str], fold):
    """(metrics, predictions.csv frame) of the readable scored samples only, with ``skipped`` and
    ``skipped_ids`` (the unreadable ones) added to the metrics."""
    from clefctl import metrics, reports

    samples, scores = scored.samples, scored.scores
    y, m = _truth(samples, task)
    fm = metrics.au_metrics(y, scores, m, classes) if task == "au" else metrics.fer_metrics(y, scores, classes)
    fm.update(skipped=len(scored.skipped), skipped_ids=list(scored.skipped))
    frame = reports.predictions_frame([s.id for s in samples], [s.subject for s in samples], fold, y, scores,
                                      classes, task, mask=m)
    return fm, frame


def _tuned_metrics(run: Run, train, scored, classes: list[str], fold_index: int, device=None, crops=None) -> dict:
    """AU metrics of ``scored`` at per-AU thresholds tuned on the run's TRAINING-fold predictions (read as the
    test fold is: from the face-crop cache when ``crops`` finds one)."""
    from clefctl import metrics

    _, tr = _score_run(run, train, "au", device, what="training", crops=crops)
    y_tr, m_tr = _truth(tr.samples, "au")
    th = metrics.tune_thresholds(y_tr, tr.scores, m_tr)
    y, m = _truth(scored.samples, "au")
    tuned = metrics.au_metrics(y, scored.scores, m, classes, thresholds=th)
    tuned["fold"] = fold_index
    return tuned


def _check_subject_exclusive(run: Run, fold) -> None:
    """The k-fold driver never lets a test subject into training: check the fold lists the run used."""
    from clefctl.data.folds import load_folds

    path = run.path / "folds.json"
    if not path.is_file():
        raise ClefError("fine-tuning run has no folds.json, so its training subjects are unknown", path=run.path)
    used = load_folds(path)
    trained_on = set(used[fold.index - 1].train_subjects)
    leaked = trained_on & set(fold.test_subjects)
    if leaked:
        raise ClefError(f"run {run.name} trained on test subjects {', '.join(sorted(leaked))} of fold {fold.index}",
                        path=path, hint="its folds differ from the evaluation's; delete it or choose other --folds")


def evaluate_checkpoint(checkpoint: str, dataset: str | None = None, split: str = "test",
                        workspace: str | None = None, data_root: str | None = None,
                        dataset_root: str | None = None, device: str | None = None,
                        trust_checkpoint: bool = False, crop_cache: bool = True) -> EvalResult:
    """Evaluate one fine-tuned checkpoint (a run's ``model.pt`` or an exported folder, ``clefctl export``) on a
    split (``test``/``train``/``val``, or ``all``; an exported AU model has no folds: ``all``), on the
    frames' face crops when a cache is ready and ``crop_cache`` (a warning when the checkpoint's run
    trained the other way)."""
    from clefctl import reports
    from clefctl.data import load_dataset
    from clefctl.data.folds import load_folds, samples_in_split
    from clefctl.model.formats import check_head

    choice = Workspace(workspace).resolve_model(checkpoint, stages=("finetune",))
    checkpoint = choice.weights
    run_dir = Path(checkpoint) if Path(checkpoint).is_dir() else Path(checkpoint).parent  # an exported folder: itself
    ck_run = Run(run_dir, "finetune")
    model = choice.load(device, trust_checkpoint=trust_checkpoint)
    meta = model.meta
    if meta.get("stage") != "finetune":
        raise ClefError("not a fine-tuned clefctl checkpoint (no class-name embeddings)", path=checkpoint,
                        hint="evaluate the model.pt of a `clefctl finetune` run")
    check_head(meta, model.load_report.extras, model.embed_dim, checkpoint, scoring=True)
    name = dataset or meta["dataset"]
    run_cfg = ck_run.config() if (run_dir / "config.yaml").is_file() else {}
    opts = run_cfg.get("options", {})
    bundle = load_dataset(name, root=dataset_root or opts.get("dataset_root"),
                          data_root=data_root or opts.get("data_root"))
    if bundle.classes != meta["classes"]:
        raise ClefError(f"checkpoint classes {meta['classes']} differ from {bundle.name}'s {bundle.classes}",
                        path=checkpoint)
    if split == "all":
        samples = bundle.samples
    elif any(s.split for s in bundle.samples):
        samples = samples_in_split(bundle, split)
    else:
        folds_path = run_dir / "folds.json"
        if not folds_path.is_file():
            raise ClefError("no folds.json beside the checkpoint to tell its test subjects", path=run_dir,
                            hint="use --split all, or evaluate the run folder's model.pt")
        fold = load_folds(folds_path)[(meta.get("fold") or 1) - 1]
        subjects = set(fold.test_subjects if split == "test" else fold.train_subjects)
        samples = [s for s in bundle.samples if s.subject in subjects]
    if not samples:
        raise ClefError(f"no samples in split {split!r} of {bundle.name}")
    what = "test" if split == "test" else f"{split}-split"
    crops = _crop_finder(bundle, crop_cache)
    _warn_crop_mismatch(run_cfg, crops(model.image_size))
    scored = _readable(_score_with_crops(model, samples, model.load_report.extras, bundle.task, crops, what), what)
    result, predictions = _scored_metrics(scored, bundle.task, bundle.classes, None)
    result.update(dataset=bundle.name, protocol=f"one checkpoint, split {split}", checkpoint=str(checkpoint))
    ws = Workspace(workspace)
    if not is_main():  # torchrun: every rank scored its shard; rank 0 writes the report
        return EvalResult(None, result, {})
    out = ws.new_run("evaluate", f"{bundle.name}-{split}")
    out.save_config({"stage": "evaluate", "checkpoint": str(checkpoint), "split": split, "dataset": bundle.name})
    f, chosen = _features(model, scored.samples)
    files = reports.write_reports(out.path, result, predictions=predictions,
                                  features=f if chosen else None,
                                  labels=_truth(chosen, bundle.task)[0] if chosen else None,
                                  metrics_jsonl_paths=[("training", ck_run.metrics_path)], task=bundle.task,
                                  class_ids=bundle.classes, dataset=bundle.name)
    ws.set_latest(out)
    return EvalResult(out, result, files)


# ----------------------------------------------------------------------------------------------
# Table 6 ablation
# ----------------------------------------------------------------------------------------------

#: (method, PA, PI, I, N, D): pre-training variant x fine-tuning head, the rows of the paper's Table 6
#: that clefctl can run (the CLIP/FaRL rows need those weights: give --weights to fill the "init" rows).
ABLATION_ROWS = [
    ("init", False, False, True, False, False), ("init", False, False, True, True, False),
    ("init", False, False, True, True, True),
    ("CLEF", False, True, True, False, False), ("CLEF", True, True, True, False, False),
    ("CLEF", False, True, True, True, False), ("CLEF", True, True, True, True, False),
    ("CLEF", False, True, True, True, True), ("CLEF", True, True, True, True, True),
]


def run_ablation(au_dataset: str = "synthetic-au", fer_dataset: str = "synthetic-fer", fold: int = 1,
                 workspace: str | None = None, weights: str | None = None, arch: str = "clef-tiny",
                 pretrain_dataset: str = "synthetic-au", train_overrides: dict | None = None,
                 progress: bool = True) -> list[dict]:
    """Run the Table 6 grid: pre-training with/without activity text (PA, PI), then fine-tuning with a
    linear head (I), names (N) or names + descriptions (D), on one AU fold and one FER split."""
    from clefctl.engine import TrainConfig
    from clefctl.finetune import FinetuneOptions, run_finetune
    from clefctl.pretrain import PretrainOptions, run_pretrain

    over = dict(train_overrides or {}, progress=progress)
    pre_runs: dict[bool, Run] = {}
    for with_text in (False, True):
        pre_runs[with_text] = run_pretrain(PretrainOptions(
            dataset=pretrain_dataset, arch=arch, weights=weights, no_activity_text=not with_text,
            workspace=workspace, train=TrainConfig(**{**PretrainOptions().train.to_dict(), **over})))
    rows = []
    for method, pa, pi, _i, n, d in ABLATION_ROWS:
        row = {"method": "CLIP" if method == "init" and weights else
               ("random init" if method == "init" else "CLEF"),
               "PA": pa, "PI": pi, "I": True, "N": n, "D": d}
        for key, ds in (("au_f1", au_dataset), ("fer_acc", fer_dataset)):
            init = str(pre_runs[pa].path) if pi else None
            fo = FinetuneOptions(dataset=ds, fold=fold, init=init, weights=None if pi else weights, arch=arch,
                                 head="text" if n else "linear", no_descriptions=not d, workspace=workspace,
                                 train=TrainConfig(**{**FinetuneOptions().train.to_dict(), **over}))
            run = run_finetune(fo)
            import json

            m = json.loads((run.path / "test_metrics.json").read_text())
            row[key] = m.get("mean_f1") if key == "au_f1" else m.get("accuracy")
        rows.append(row)
    return rows
