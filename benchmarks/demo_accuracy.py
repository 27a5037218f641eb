"""Benchmark: the CPU demo end to end, and what it learns on held-out synthetic subjects.

The demo protocol (issue 5), on a fresh temporary workspace and cache: generate the embedded
synthetic data with its defaults -> pre-train (Eq. 2) -> fine-tune synthetic-au on subject folds
1..3 (Eq. 6, subject-exclusive) -> fine-tune synthetic-fer (official subject-disjoint split), each
fine-tune starting from the pre-trained model, all with the stages' default options (what
``clefctl pretrain`` / ``clefctl finetune`` do with no flags). Prints per stage the wall and CPU
seconds, optimizer steps and images per second, then the held-out mean AU F1 (mean over the folds)
beside the all-positive baseline, and the FER accuracy beside the majority-class baseline.
Targets (issue 5): AU F1 >= 80, FER accuracy >= 90, whole demo <= 600 s on 2 CPU cores.

    python benchmarks/demo_accuracy.py                   # the full demo protocol
    python benchmarks/demo_accuracy.py --quick           # fold 1, 1/4 of the steps: checks the plumbing (~1 min), learns little
    python benchmarks/demo_accuracy.py --init random     # fine-tune from random weights instead
    python benchmarks/demo_accuracy.py --threads 1       # one intra-op thread (a shared machine)

Wall time depends on the machine's load; CPU seconds (summed over threads) do not, much.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

AU_TARGET, FER_TARGET, TIME_TARGET = 80.0, 90.0, 600.0


class Clock:
    """Wall and process CPU seconds of one stage."""

    def __init__(self, name: str, log: list):
        self.name, self.log = name, log

    def __enter__(self):
        self.t0, self.c0 = time.time(), time.process_time()
        self.extra: dict = {}
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            rec = {"stage": self.name, "wall_s": time.time() - self.t0, "cpu_s": time.process_time() - self.c0,
                   **self.extra}
            self.log.append(rec)
            print(_stage_line(rec), flush=True)
        return False


def _stage_line(r: dict) -> str:
    line = f"  {r['stage']:<16} {r['wall_s']:7.1f} s wall {r['cpu_s']:7.1f} s cpu"
    if r.get("steps"):
        line += (f"   {r['steps']:4d} steps x {r['batch']} ({r['images']} images{' x 2 views' if r.get('views') else ''})"
                 f"  {r['images'] * (2 if r.get('views') else 1) / r['wall_s']:6.0f} img/s wall"
                 f"  {r['images'] * (2 if r.get('views') else 1) / r['cpu_s']:6.0f} img/cpu-s")
    return line


def _steps(run) -> int:
    steps = [r["step"] for r in run.metrics() if r.get("kind") == "epoch"]
    return int(steps[-1]) if steps else 0


def _evaluate(run, bundle, opts, task: str):
    """Scores of the run's model on the held-out part of its split, with clefctl.metrics."""
    from clefctl import metrics as M
    from clefctl.finetune import split_for
    from clefctl.scoring import predict_scores
    from clefctl.model import create

    train, test, _, _ = split_for(bundle, opts)
    model = create(weights=str(run.model_path))
    scored = predict_scores(model, test, model.load_report.extras, task)
    test, scores = scored.samples, scored.scores  # unreadable images are left out, not substituted
    if task == "au":
        y = np.stack([s.aus for s in test])
        mask = np.stack([s.au_mask if s.au_mask is not None else np.ones_like(s.aus) for s in test])
        got = M.au_metrics(y, scores, mask, bundle.classes)
        base = M.all_positive_baseline_au(y, mask, bundle.classes)
        return got, base, len(test)
    y = np.array([s.label for s in test])
    got = M.fer_metrics(y, scores, bundle.classes)
    base = M.majority_baseline_fer([s.label for s in train], y, bundle.classes)
    return got, base, len(test)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fold 1 only and a quarter of the default steps: a ~1 min plumbing check; accuracy stays near the baselines")
    ap.add_argument("--init", choices=("pretrain", "random"), default="pretrain",
                    help="fine-tune from the pre-training run (the protocol) or from random weights")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--workdir", default=None, help="keep cache and workspace here (default: a temp dir)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="clef-demo-"))
    os.environ["CLEF_CACHE"] = str(work / "cache")   # a fresh cache: the data is generated here
    ws = str(work / "runs")

    from clefctl.data import load_dataset, synthetic
    from clefctl.engine import TrainConfig
    from clefctl.finetune import FinetuneOptions, run_finetune
    from clefctl.pretrain import PretrainOptions, run_pretrain
    from clefctl.recipes import resolve_defaults

    log: list[dict] = []
    print(f"demo protocol in {work} ({torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs)"
          f"{' [quick]' if args.quick else ''}", flush=True)
    t_all, c_all = time.time(), time.process_time()
    with Clock("generate data", log):
        synthetic.ensure("synthetic-au", progress=False)
        synthetic.ensure("synthetic-fer", progress=False)
    au_bundle = load_dataset("synthetic-au")
    fer_bundle = load_dataset("synthetic-fer")

    def quick_cfg(base: TrainConfig, arch: str, dataset: str, task: str, n_train: int) -> TrainConfig:
        cfg = TrainConfig(**{**base.to_dict(), "progress": False})
        if args.quick:  # the stage's own defaults, then a quarter of the epochs
            resolve_defaults(cfg, arch, dataset, task, n_train)
            cfg.epochs = max(1.0, round(cfg.epochs / 4))
            cfg.warmup_epochs = min(cfg.warmup_epochs, cfg.epochs / 4)
        return cfg

    init = None
    if args.init == "pretrain":
        po = PretrainOptions(workspace=ws)
        po.train = quick_cfg(po.train, po.arch, po.dataset, "pretrain", len(au_bundle.samples))
        with Clock("pretrain", log) as ck:
            pre = run_pretrain(po)
            ck.extra = {"steps": _steps(pre), "batch": po.train.batch_size,
                        "images": _steps(pre) * po.train.batch_size, "views": True}
        init = pre.name

    folds = [1] if args.quick else [1, 2, 3]
    au_rows = []
    for fold in folds:
        fo = FinetuneOptions(dataset="synthetic-au", fold=fold, init=init, workspace=ws, evaluate=False)
        fo.train = quick_cfg(fo.train, fo.arch, fo.dataset, "au", len(au_bundle.samples) * 2 // 3)
        with Clock(f"finetune AU f{fold}", log) as ck:
            run = run_finetune(fo)
            ck.extra = {"steps": _steps(run), "batch": fo.train.batch_size,
                        "images": _steps(run) * fo.train.batch_size}
        got, base, n = _evaluate(run, au_bundle, fo, "au")
        au_rows.append({"fold": fold, "mean_f1": got["mean_f1"], "baseline_f1": base["mean_f1"],
                        "f1": got["f1"], "test_frames": n})
    fo = FinetuneOptions(dataset="synthetic-fer", init=init, workspace=ws, evaluate=False)
    fo.train = quick_cfg(fo.train, fo.arch, fo.dataset, "fer", sum(s.split == "train" for s in fer_bundle.samples))
    with Clock("finetune FER", log) as ck:
        run = run_finetune(fo)
        ck.extra = {"steps": _steps(run), "batch": fo.train.batch_size, "images": _steps(run) * fo.train.batch_size}
    fer, fer_base, n_fer = _evaluate(run, fer_bundle, fo, "fer")
    total_wall, total_cpu = time.time() - t_all, time.process_time() - c_all

    au_f1 = float(np.mean([r["mean_f1"] for r in au_rows]))
    au_base = float(np.mean([r["baseline_f1"] for r in au_rows]))
    print(f"  {'total':<16} {total_wall:7.1f} s wall {total_cpu:7.1f} s cpu   (target <= {TIME_TARGET:.0f} s "
          "on 2 unloaded cores)")
    print(f"held-out AU mean F1 over {len(au_rows)} fold(s): {au_f1:5.1f}   all-positive baseline {au_base:5.1f}"
          f"   (target >= {AU_TARGET:.0f}: {'met' if au_f1 >= AU_TARGET else 'NOT met'})")
    for r in au_rows:
        worst = sorted(r["f1"].items(), key=lambda kv: kv[1])[:3]
        print(f"  fold {r['fold']}: {r['mean_f1']:5.1f} (baseline {r['baseline_f1']:5.1f}, {r['test_frames']} frames;"
              f" weakest {', '.join(f'{k} {v:.0f}' for k, v in worst)})")
    print(f"held-out FER accuracy: {fer['accuracy']:5.1f}   majority baseline {fer_base['accuracy']:5.1f}"
          f"   macro F1 {fer['macro_f1']:5.1f}   ({n_fer} images; target >= {FER_TARGET:.0f}: "
          f"{'met' if fer['accuracy'] >= FER_TARGET else 'NOT met'})")
    result = {"stages": log, "total_wall_s": total_wall, "total_cpu_s": total_cpu, "threads": torch.get_num_threads(),
              "quick": args.quick, "init": args.init, "au_mean_f1": au_f1, "au_baseline_f1": au_base,
              "au_folds": au_rows, "fer_accuracy": fer["accuracy"], "fer_macro_f1": fer["macro_f1"],
              "fer_majority_accuracy": fer_base["accuracy"]}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
