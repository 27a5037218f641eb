"""The training data path per CPU core: how many 224 px training tensors one core makes from
BP4D-sized frames, and how many cores a model of a given throughput needs, same run.

Rows (one process, one thread: images/s per core; medians of ``--rounds`` interleaved rounds):

* full frame: a 1040x1392 JPEG decoded in full + the paper's training augmentation (random
  resized crop 0.8-1, flip, rotation 10, normalise): the path before issue 15;
* the same through the engine's dataset wrapper (``SampleDataset`` + ``SeededDataset``: the item
  dict and the per-sample seeding), and pre-training's two views of each frame;
* draft: the JPEG decoded reduced in the DCT (PIL ``draft``) as long as its shorter side keeps
  ``decode_size_for(224)`` = 448 px (what training and evaluation do now: 1/2 for these frames),
  bare and through the wrapper;
* crop cache: the 256x256 face crops of clefctl's face-crop cache (``clefctl data prepare --dataset``,
  :func:`clefctl.data.crops.prepare_dataset` on the frames laid out as BP4D) + the same augmentation,
  bare and through the wrapper;
* data prepare: frames/s of the cache's own build on one core (one worker process: reduced decode,
  detection, alignment, crop, JPEG) with each detector in the same round: YuNet (landmark template;
  its file from ``clefctl weights get yunet``, never downloaded here) and Haar (eye-cascade
  levelling); issue 21's target >= 40 frames/s per core (issue 15's was >= 20). The crop-cache rows
  read YuNet's crops.

Also the per-sample cost of the exact-resume seeding (``fork_rng`` + ``manual_seed``, what the
engine did, against the default generator seeded and restored, what it does now) and
``crop_cache_speedup``: images/s per core through the wrapper from the crop cache over the
full-frame path (the issue's target: >= 4).

    python benchmarks/data_path.py                      # --model-img-s 2000: an H200's ViT-B/16 bf16 step
    python benchmarks/data_path.py --images 12 --rounds 3 --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from _yunet import yunet_or_exit  # noqa: E402  (benchmarks/ is the script folder)

FRAME = (1040, 1392)     # width, height of a BP4D frame
SIZE = 224


def write_frames(root: Path, n: int) -> list[Path]:
    """``n`` BP4D-sized JPEG frames in the BP4D layout under ``root`` (one synthetic face of about half
    the frame's width drifting over a background, as in BP4D's recordings; with sensor noise, ~156 KB a
    frame at quality 92)."""
    from clefctl.data.faces.scenes import write_frame_dataset

    truth = write_frame_dataset(root, subjects=("F001",), tasks=("T1",), frames=n, width=FRAME[0], height=FRAME[1],
                                face=520, quality=92, noise=3)
    return [root / rel for rel in sorted(truth, key=lambda r: int(Path(r).stem))]


def prepare_rate(root: Path, cache: Path, settings=None) -> tuple[float, list[Path], dict]:
    """(frames/s of ``clefctl data prepare --dataset bp4d`` with one worker and the detector of
    ``settings`` (a :class:`CropSettings`; None: its default), the crops in frame order, the counts)."""
    from clefctl.data import load_dataset
    from clefctl.data.crops import crop_cache_for, prepare_dataset

    os.environ["CLEF_CACHE"] = str(cache)
    report = prepare_dataset("bp4d", root=root, settings=settings, workers=1, progress=False)
    bundle = load_dataset("bp4d", root=root)
    crops = crop_cache_for(bundle, SIZE, announce=False)
    samples = sorted(crops.apply(bundle.samples), key=lambda s: s.frame)
    return report.frames_per_s, [Path(s.path) for s in samples], dict(report.counts)


def _rate(fn, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - t0)


def seeding_costs(n: int = 3000) -> dict:
    """Microseconds a sample of the old and the new per-sample seeding around a trivial item."""
    from clefctl.engine import SeededDataset

    class Trivial(torch.utils.data.Dataset):
        def __len__(self):
            return n

        def __getitem__(self, i):
            return i

    base, seeded = Trivial(), SeededDataset(Trivial(), seed=0)

    def old(i):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seeded.item_seed(0, i))
            base[i]

    bare = _rate(lambda i: base[i], n)
    return {"old_us": 1e6 / _rate(old, n) - 1e6 / bare,
            "new_us": 1e6 / _rate(lambda i: seeded[(0, i)], n) - 1e6 / bare}


def rows(frames: list[Path], crops: list[Path], per_row: int) -> dict[str, float]:
    """One round: images/s of every row."""
    from clefctl.data.images import decode_size_for
    from clefctl.data.dataset import SampleDataset
    from clefctl.data.records import Sample, open_image
    from clefctl.data.transforms import TwoViews, train_transform
    from clefctl.engine import SeededDataset

    aug = train_transform(SIZE, None, None, scale=(0.8, 1.0), rotation=10)
    decode = decode_size_for(SIZE)  # what training and evaluation decode JPEGs to: 448 px
    full = [Sample(id=str(i), subject="", path=str(p), label=0) for i, p in enumerate(frames)]
    cropped = [Sample(id=str(i), subject="", path=str(p), label=0) for i, p in enumerate(crops)]
    k = len(full)

    def wrapped(samples, transform=aug, decode=None):
        ds = SeededDataset(SampleDataset(samples, transform, task="fer", decode_size=decode), seed=0)
        return lambda i: ds[(0, i % k)]
    return {
        "full frame: decode + augmentation": _rate(lambda i: aug(open_image(full[i % k])), per_row),
        "full frame through the engine's dataset wrapper": _rate(wrapped(full), per_row),
        "full frame, pre-training's two views": _rate(wrapped(full, TwoViews(aug)), per_row),
        "draft (reduced) decode + augmentation": _rate(lambda i: aug(open_image(full[i % k], decode)), per_row),
        "draft through the engine's dataset wrapper": _rate(wrapped(full, decode=decode), per_row),
        "256 px crop-cache crop: decode + augmentation": _rate(lambda i: aug(open_image(cropped[i % k])), per_row),
        "256 px crop-cache crop through the engine's dataset wrapper": _rate(wrapped(cropped), 2 * per_row),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=12, help="Distinct frames written (and cycled through).")
    ap.add_argument("--per-row", type=int, default=60, help="Images timed per row and round.")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--model-img-s", type=float, default=2000.0,
                    help="Training images/s of the model to feed (default: ViT-B/16 bf16 on one H200, estimated).")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from clefctl.data.crops import CropSettings

    yunet = yunet_or_exit()
    detectors = {"yunet": CropSettings(detector="yunet", model=yunet.model), "haar": CropSettings(detector="haar")}
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="clef-data-path-") as tmp:
        frames = write_frames(Path(tmp) / "BP4D", args.images)
        rounds, seeding = [], []
        prepared: dict[str, list[float]] = {k: [] for k in detectors}
        counts: dict[str, dict] = {}
        for k in range(args.rounds):
            for name in ("haar", "yunet"):     # YuNet last: the crop-cache rows read its crops
                rate, crops, counts[name] = prepare_rate(Path(tmp) / "BP4D", Path(tmp) / f"cache{k}-{name}",
                                                         detectors[name])
                prepared[name].append(rate)
            rounds.append(rows(frames, crops, args.per_row))
            seeding.append(seeding_costs())
    table = {name: statistics.median(r[name] for r in rounds) for name in rounds[0]}
    full_wrapped = table["full frame through the engine's dataset wrapper"]
    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores", "load_average": os.getloadavg(), "model_img_s": args.model_img_s,
        "rows": [{"row": name, "images_per_s_per_core": rate, "cores_for_model": args.model_img_s / rate}
                 for name, rate in table.items()],
        "crop_cache_speedup": table["256 px crop-cache crop through the engine's dataset wrapper"] / full_wrapped,
        "draft_speedup": table["draft through the engine's dataset wrapper"] / full_wrapped,
        "seeding_us_per_sample": {k: statistics.median(s[k] for s in seeding) for k in ("old_us", "new_us")},
        "prepare_frames_per_s_per_core": statistics.median(prepared["yunet"]),   # the default detector
        "prepare_by_detector": {name: {"frames_per_s_per_core": statistics.median(v), "rounds": v,
                                       "counts": counts[name]} for name, v in prepared.items()},
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"one core, one thread; {args.images} BP4D-sized {FRAME[0]}x{FRAME[1]} JPEG frames; medians of "
          f"{args.rounds} rounds; load average {result['load_average'][0]:.1f}")
    print(f"  {'to a 224 px training tensor':<56} {'img/s':>7}  cores for {args.model_img_s:.0f} img/s")
    for r in result["rows"]:
        print(f"  {r['row']:<56} {r['images_per_s_per_core']:7.1f}  {r['cores_for_model']:6.1f}")
    s = result["seeding_us_per_sample"]
    print(f"  per-sample seeding: {s['old_us']:.0f} us before (fork_rng + manual_seed), {s['new_us']:.1f} us now "
          f"(target <= 50)")
    for name, p in result["prepare_by_detector"].items():
        rate = p["frames_per_s_per_core"]
        print(f"  data prepare --dataset bp4d (face-crop cache build), one core, {name}: {rate:.1f} frames/s "
              f"(target >= 40: {'ok' if rate >= 40 else 'MISSED'}); outcomes {p['counts']}")
    print(f"  crop_cache_speedup {result['crop_cache_speedup']:.2f}x (target >= 4), "
          f"draft_speedup {result['draft_speedup']:.2f}x")


if __name__ == "__main__":
    main()
