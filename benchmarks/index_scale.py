"""Indexing a BP4D+-sized label tree: time and peak memory of ``load_dataset("bp4dplus")`` on 1.5M
labelled frames, cold (label files parsed) and warm (from the index cache), same run.

The tree is written by this script: 140 subjects x 10 tasks of ``AUCoding/AU_OCC/{subject}_{task}.csv``
(header ``0,1,...,99`` as in BP4D's files: the frame column and AU columns 1-99, 0/1 for the 12
literature AUs and 9 = not coded elsewhere, with some 9s in the coded AUs too). Writing 1.5M image
files would take minutes and 1.5M inodes, so only ``--real-folders`` frame folders get real (empty)
files; the adapter's listing of every other folder is replaced by a stand-in that lists the frames
its label file names. The real folders' listing time is measured and printed per frame: that part
of a real run's cost is the stand-in's times that.

Each measurement runs in a fresh process (peak RSS of the process: ``ru_maxrss``).

    python benchmarks/index_scale.py                         # 1.5M frames (targets: <= 60 s, <= 2 GB; warm <= 5 s)
    python benchmarks/index_scale.py --frames 200000 --json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TARGETS = {"cold_seconds": 60.0, "cold_peak_gb": 2.0, "warm_seconds": 5.0}
LITERATURE = (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)


def subjects(n: int) -> list[str]:
    half = (n + 1) // 2
    return [f"F{i:03d}" for i in range(1, half + 1)] + [f"M{i:03d}" for i in range(1, n - half + 1)]


def write_tree(root: Path, n_subjects: int, n_tasks: int, frames: int, real_folders: int, listing: Path,
               seed: int = 0) -> dict:
    """Label files for ``frames`` frames in total; empty image files in the first ``real_folders``;
    what the other folders would hold goes to ``listing`` (JSON) for the stand-in lister."""
    rng = np.random.default_rng(seed)
    occ = root / "AUCoding" / "AU_OCC"
    occ.mkdir(parents=True, exist_ok=True)
    folders = [(s, f"T{t}") for s in subjects(n_subjects) for t in range(1, n_tasks + 1)]
    per = np.full(len(folders), frames // len(folders))
    per[: frames % len(folders)] += 1
    header = ",".join(str(c) for c in range(100))
    coded = np.zeros(100, dtype=bool)
    coded[list(LITERATURE)] = True
    stand_in = {}
    for k, ((subject, task), n) in enumerate(zip(folders, per)):
        first = int(rng.integers(1, 2000))
        table = np.full((n, 100), 9, dtype=np.int64)
        table[:, 0] = np.arange(first, first + n)
        table[:, coded] = rng.random((n, coded.sum())) < 0.3
        table[rng.random(n) < 0.02, LITERATURE[0]] = 9
        lines = "\n".join(",".join(map(str, row)) for row in table.tolist())
        (occ / f"{subject}_{task}.csv").write_text(header + "\n" + lines + "\n", encoding="utf-8")
        if k < real_folders:
            d = root / subject / task
            d.mkdir(parents=True, exist_ok=True)
            for f in range(first, first + n):
                (d / f"{f}.jpg").touch()
        else:
            stand_in[str(root / subject / task)] = [first, int(n)]
    listing.write_text(json.dumps(stand_in), encoding="utf-8")
    return {"frames": int(per.sum()), "folders": len(folders), "real_folders": min(real_folders, len(folders))}


def _measure(root: str, cache: str, listing_file: str) -> dict:
    """One load in this (fresh) process, with the stand-in lister for folders without files."""
    os.environ["CLEF_CACHE"] = cache
    from clefctl.data import bp4d, load_dataset

    stand_in = json.loads(Path(listing_file).read_text(encoding="utf-8"))
    real = bp4d._frame_names
    listing = {"seconds": 0.0, "frames": 0}

    def lister(directory):
        if os.path.isdir(directory):
            t0 = time.perf_counter()
            names = real(directory)
            listing["seconds"] += time.perf_counter() - t0
            listing["frames"] += len(names)
            return names
        first, n = stand_in.get(str(directory), (0, 0))  # the folder as written, had it been
        return {f: f"{f}.jpg" for f in range(first, first + n)}
    bp4d._frame_names = lister
    had_cache = any(Path(cache, "index").glob("*.npz"))
    t0 = time.perf_counter()
    bundle = load_dataset("bp4dplus", root=root)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB
    return {"seconds": seconds, "peak_gb": peak, "samples": len(bundle), "missing": len(bundle.missing),
            "listing_us_per_frame": 1e6 * listing["seconds"] / max(1, listing["frames"]),
            "from_cache": had_cache}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=1_500_000)
    ap.add_argument("--subjects", type=int, default=140)
    ap.add_argument("--tasks", type=int, default=10)
    ap.add_argument("--real-folders", type=int, default=20)
    ap.add_argument("--root", default=None, help="Write the tree here (default: a temporary folder).")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--_measure", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._measure:
        print(json.dumps(_measure(*args._measure)))
        return
    with tempfile.TemporaryDirectory(prefix="clef-index-") as tmp:
        root = Path(args.root or tmp) / "BP4D+"
        cache, listing = str(Path(tmp) / "cache"), Path(tmp) / "stand_in.json"
        t0 = time.perf_counter()
        tree = write_tree(root, args.subjects, args.tasks, args.frames, args.real_folders, listing)
        tree["write_seconds"] = time.perf_counter() - t0
        runs = {}
        for name in ("cold", "warm"):
            out = subprocess.run([sys.executable, __file__, "--_measure", str(root), cache, str(listing)],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"the {name} load failed:\n{out.stderr[-4000:]}")
            runs[name] = json.loads(out.stdout.strip().splitlines()[-1])
    load = os.getloadavg()
    result = {"tree": tree, **runs, "targets": TARGETS, "load_average": load,
              "cold_within_target": runs["cold"]["seconds"] <= TARGETS["cold_seconds"]
              and runs["cold"]["peak_gb"] <= TARGETS["cold_peak_gb"],
              "warm_within_target": runs["warm"]["seconds"] <= TARGETS["warm_seconds"]}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{tree['frames']:,} labelled frames in {tree['folders']} label files "
          f"({tree['real_folders']} frame folders on disk, the rest listed by a stand-in); "
          f"written in {tree['write_seconds']:.0f} s; load average {load[0]:.1f}")
    for name in ("cold", "warm"):
        r = runs[name]
        print(f"  {name:<5} {r['seconds']:7.1f} s  peak RSS {r['peak_gb']:.2f} GB  {r['samples']:,} samples"
              f"  from cache: {r['from_cache']}")
    print(f"  real folder listing: {runs['cold']['listing_us_per_frame']:.2f} us per frame")
    print(f"  targets: cold <= {TARGETS['cold_seconds']:.0f} s and <= {TARGETS['cold_peak_gb']:.0f} GB "
          f"({'met' if result['cold_within_target'] else 'NOT met'}), warm <= {TARGETS['warm_seconds']:.0f} s "
          f"({'met' if result['warm_within_target'] else 'NOT met'})")


if __name__ == "__main__":
    main()
