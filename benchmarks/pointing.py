"""Benchmark: pointing accuracy of relevancy maps on synthetic-au faces (``clefctl explain --pointing``).

For each AU, images where the AU is active are explained against the AU's label-name text ("a
photo of a person with lip corner puller."); a hit is the hottest patch of the image map (Chefer
et al. 2021 relevancy) overlapping the AU's face region, which the generator records per image
(``synthetic.json`` region boxes, ``clefctl.data.synthetic.au_regions``). Reported per AU: hit
rate and its chance (the share of patches overlapping the region), the share of relevancy mass
inside the region and its chance (the region's share of the image), and, as a control, both for
a randomly initialised model of the same architecture: a model fine-tuned on synthetic-au should
point at the right region far more often than both.

Images come from the fine-tuning run's held-out fold when the run has one (else all subjects).

Usage::

    python benchmarks/pointing.py                                # latest fine-tuning run, 50 images per AU
    python benchmarks/pointing.py --checkpoint clef_runs/finetune/RUN --n 100 --json
    python benchmarks/pointing.py --aus AU12,AU4 --dataset-root ~/.cache/clefctl/synthetic-au
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    from clefctl import explain as ex
    from clefctl.errors import ClefError
    from clefctl.model import create

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="latest", help="latest, a model.pt, a run folder or run name")
    ap.add_argument("--workspace", default=None)
    ap.add_argument("--n", type=int, default=50, help="images per AU")
    ap.add_argument("--aus", default=",".join(ex.POINTING_AUS))
    ap.add_argument("--dataset-root", default=None, help="a synthetic-au set (default: the run's / cached)")
    ap.add_argument("--all-subjects", action="store_true", help="not only the run's held-out subjects")
    ap.add_argument("--no-control", action="store_true", help="skip the random-initialisation control")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        loaded = ex.load_model(args.checkpoint, args.workspace, device=args.device)
        if loaded.warning:
            print(f"warning: {loaded.warning}", file=sys.stderr)
        model = loaded.model
        prompts = ex.prompt_set_for(model, loaded.run_dir)
        root = ex.synthetic_au_root(args.dataset_root, loaded.run_dir)
        subjects, which = (None, "all subjects") if args.all_subjects else ex.held_out_subjects(loaded.run_dir)
        aus = [a.strip() for a in args.aus.split(",") if a.strip()]
        t0 = time.perf_counter()
        res = ex.pointing_accuracy(model, root, aus, args.n, prompts=prompts, subjects=subjects, seed=args.seed,
                                   progress=not args.json)
        seconds = time.perf_counter() - t0
        control = None
        if not args.no_control and not loaded.source.startswith("random"):
            rnd = create(model.arch, None, args.device)
            control = ex.pointing_accuracy(rnd, root, aus, args.n, prompts=prompts, subjects=subjects,
                                           seed=args.seed, progress=not args.json)
    except ClefError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def clean(v):
        return None if isinstance(v, float) and math.isnan(v) else v

    summary = ex.pointing_summary(res)
    if args.json:
        print(json.dumps({"model": loaded.source, "fingerprint": model.fingerprint, "data": str(root),
                          "subjects": which, "seconds": round(seconds, 2),
                          "aus": {k: {kk: clean(vv) for kk, vv in v.items()} for k, v in res.items()},
                          "summary": {k: clean(v) for k, v in summary.items()},
                          "control": None if control is None else
                          {k: {"hit_rate": clean(v["hit_rate"]), "mass": clean(v["mass"])}
                           for k, v in control.items()}}, indent=2))
        return 0
    print(f"model: {loaded.source} ({model.fingerprint})\ndata: {root}, {which}")
    head = (f"{'AU':<6}{'hit rate':>10}{'chance':>9}{'random init':>13}{'mass':>8}{'area':>8}"
            f"{'rand. mass':>12}{'n':>6}  text")
    print(head)
    print("-" * len(head))

    def pct(v) -> str:
        return "-" if v is None or v != v else f"{100 * v:.1f}%"

    def row(label, r, c, n, text):
        print(f"{label:<6}{pct(r['hit_rate']):>10}{pct(r['chance_patches']):>9}"
              f"{pct(c['hit_rate']) if c else '':>13}{pct(r['mass']):>8}{pct(r['chance']):>8}"
              f"{pct(c['mass']) if c else '':>12}{n:>6}  {text}")

    for au, r in res.items():
        row(au, r, None if control is None else control[au], r["n"], r["text"])
    if summary["n"]:
        s = {k.removeprefix("mean_"): v for k, v in summary.items()}
        c = None if control is None else {k.removeprefix("mean_"): v
                                          for k, v in ex.pointing_summary(control).items()}
        row("mean", s, c, summary["n"], "")
    print("hit: the hottest patch overlaps the AU's region; chance: share of patches that do; mass: share of "
          "the map's relevancy inside the region; area: the region's share of the image")
    print(f"{summary['n']} explained images in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
