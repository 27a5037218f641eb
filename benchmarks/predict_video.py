"""Benchmark: the face pipeline and ``clefctl predict`` on a generated video with known faces.

The video (:func:`clefctl.data.faces.scenes.write_scene_video`, 640x360 at 25 fps) shows three
synthetic faces drifting in their lanes with changing expressions; one walks out of the frame and
comes back after about two seconds, and for a stretch the scene is empty. Ground-truth boxes and
person ids are known. The script prints, each against its target from issue 13:

* the face pipeline's cost per frame on one core (detection + alignment + tracking + crops),
  next to the old per-frame path measured in the same run (:class:`FaceCropper` on the full frame,
  default and fallback cascades and the eyes on every frame): target <= 15 ms;
* detection recall on frames with a face (>= 0.95), frames with a false positive (<= 1%) and ID
  switches (at most one per re-entry);
* ``predict`` end to end with ``clef-tiny`` (zero-shot, AU and expression prompt sets), frames per
  second on the threads given (target >= 40 fps on 2 cores), and the time the face pipeline adds
  to the model-only time of encoding the same crops (with ``--arch ViT-B-16``, on the bf16 path:
  target <= 30%);
* peak memory (max RSS, each run in its own process) of ``predict`` on the video and on one 10x
  as long, and of the pipeline alone with 224-pixel crops (target: the long one <= 1.2x).

Usage::

    python benchmarks/predict_video.py                       # 300 frames, clef-tiny, 1 torch thread
    python benchmarks/predict_video.py --frames 150 --no-memory
    python benchmarks/predict_video.py --arch ViT-B-16 --frames 60 --no-memory --no-baseline
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def face_pipeline(video: Path) -> tuple[dict, dict]:
    """One core, no model: the pipeline's per-frame cost and its faces (frame -> [(id, box)])."""
    import cv2

    from clefctl.data.faces import PipelineStats, iter_faces

    cv2.setNumThreads(1)
    stats = PipelineStats()
    t0 = time.perf_counter()
    found = {ff.frame: [(f.face_id, f.box) for f in ff.faces] for ff in iter_faces([video], size=64, stats=stats)}
    wall = time.perf_counter() - t0
    return {"frames": stats.frames, "wall_s": wall, "face_ms": 1000 * stats.face_seconds / stats.frames,
            "decode_ms": 1000 * stats.seconds["decode"] / stats.frames,
            "detect_ms": 1000 * stats.seconds["detect"] / stats.frames, "key_frames": stats.key_frames,
            "seconds": stats.to_dict()["seconds"]}, found


def old_path(video: Path, frames: int) -> float:
    """ms per frame of the old per-frame step: FaceCropper.crop on the full frame (one core)."""
    import cv2

    from clefctl.data.faces import FaceCropper, iter_video_frames

    cv2.setNumThreads(1)
    cropper = FaceCropper(size=64)
    t = 0.0
    n = 0
    for _, _, rgb in iter_video_frames(video, max_frames=frames):
        t0 = time.perf_counter()
        cropper.crop(rgb)
        t += time.perf_counter() - t0
        n += 1
    return 1000 * t / max(1, n)


def end_to_end(video: Path, out: Path, arch: str, batch: int) -> dict:
    from clefctl.predict import predict

    weights = "random"
    return predict([video], out, weights=weights, arch=arch, prompts=("bp4d", "rafdb"), batch_size=batch,
                   progress=False, timeline=False, workspace=str(out.parent / "ws"))


def model_only(arch: str, crops: int, batch: int) -> float:
    """Seconds to encode ``crops`` face-sized inputs with the same model and dtype, in batches."""
    import numpy as np

    from clefctl.data.faces import model_encoder
    from clefctl.model import create

    model = create(arch)
    enc = model_encoder(model, "auto")
    rng = np.random.default_rng(0)
    pool = [rng.integers(0, 255, (model.image_size, model.image_size, 3), dtype=np.uint8) for _ in range(batch)]
    enc(pool[:2])  # warm-up: the inference copy
    t0 = time.perf_counter()
    done = 0
    while done < crops:
        k = min(batch, crops - done)
        enc(pool[:k])
        done += k
    return time.perf_counter() - t0


_PEAK = """
def _peak_mib():
    try:  # the high-water mark of this process image (ru_maxrss keeps the forking parent's across exec)
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
"""


def peak_rss(code: str) -> float:
    """Peak resident memory (MiB) of a fresh Python process running ``code``."""
    script = ("import json, sys; sys.path.insert(0, %r)\n%s\n%s\nprint(json.dumps(_peak_mib()))"
              % (str(ROOT), _PEAK, code))
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return float(res.stdout.strip().splitlines()[-1])


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=300, help="frames of the short video (the long one has 10x)")
    ap.add_argument("--arch", default="clef-tiny", help="model for predict (random weights, zero-shot)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads for predict (1: the face "
                    "pipeline and the model share one core; on a shared machine 2 OpenMP threads spin-wait)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--no-baseline", action="store_true", help="skip the old per-frame path")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs (they write a 10x video)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    import torch

    from clefctl.data.faces.scenes import score_faces, write_scene_video

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="clef-predict-bench-"))
    video = tmp / "scene.mp4"
    t0 = time.perf_counter()
    truth = write_scene_video(video, frames=args.frames)
    print(f"scene: {args.frames} frames 640x360 @ {truth.fps:g} fps, 3 faces, re-entry frames {truth.leave}, "
          f"empty frames {truth.empty} (written in {time.perf_counter() - t0:.1f} s); load {os.getloadavg()}")
    fig: dict = {"frames": args.frames, "load": os.getloadavg()}

    pipe, found = face_pipeline(video)
    score = score_faces(truth, found)
    fig.update(pipeline=pipe, accuracy=score)
    line = (f"face pipeline (1 core): {pipe['face_ms']:.2f} ms/frame detection+alignment+tracking "
            f"({pipe['detect_ms']:.2f} ms detection, {pipe['key_frames']} key frames), decode {pipe['decode_ms']:.2f} ms "
            f"[target <= 15 ms: {_verdict(pipe['face_ms'] <= 15)}]")
    if not args.no_baseline:
        old = old_path(video, min(60, args.frames))
        fig["old_path_ms"] = old
        line += f"; old per-frame path {old:.1f} ms/frame ({old / pipe['face_ms']:.1f}x)"
    print(line)
    print(f"detection recall {score['recall']:.3f} [>= 0.95: {_verdict(score['recall'] >= 0.95)}], "
          f"false-positive frames {score['false_positive_frames']:.3%} [<= 1%: "
          f"{_verdict(score['false_positive_frames'] <= 0.01)}], ID switches {score['id_switches']} for "
          f"{score['reentries']} re-entry [<= 1 per re-entry: {_verdict(score['id_switches'] <= score['reentries'])}]"
          f"; ids per person {score['ids_per_person']}")

    summary = end_to_end(video, tmp / "pred.csv", args.arch, args.batch_size)
    model_s = model_only(args.arch, summary["faces"], args.batch_size)
    overhead = (summary["seconds"] - model_s) / model_s
    fig.update(predict={k: summary[k] for k in ("fps", "seconds", "frames", "faces", "detection_share",
                                                 "face_pipeline_share", "model_share", "timings",
                                                 "inference_dtype")}, model_only_s=model_s, overhead=overhead)
    target = (f"[>= 40 fps on 2 cores: {_verdict(summary['fps'] >= 40)}]" if args.arch == "clef-tiny" else
              f"[pipeline adds <= 30% to model-only: {_verdict(overhead <= 0.30)}]")
    print(f"predict {args.arch} ({summary['inference_dtype']}, {args.threads} threads): {summary['fps']:.1f} fps end "
          f"to end {target}; {summary['faces']} faces; model-only {model_s:.2f} s vs end to end "
          f"{summary['seconds']:.2f} s: the rest adds {overhead:.0%}; detection {summary['detection_share']:.0%} "
          f"of the time")

    if not args.no_memory:
        long_video = tmp / "long.mp4"
        write_scene_video(long_video, frames=10 * args.frames)
        rss = {}
        for name, v in (("short", video), ("long", long_video)):
            rss[name] = peak_rss(
                "import torch; torch.set_num_threads(%d)\nfrom clefctl.predict import predict\n"
                "predict([%r], %r, weights='random', arch=%r, prompts=('bp4d', 'rafdb'), progress=False, "
                "timeline=False, workspace=%r)" % (args.threads, str(v), str(tmp / f"{name}.csv"), args.arch,
                                                   str(tmp / "ws")))
            rss[name + "_224"] = peak_rss(
                "import numpy as np\nfrom clefctl.data.faces import iter_faces\n"
                "enc = lambda crops: np.ones((len(crops), 8), np.float32)\n"
                "for ff in iter_faces([%r], size=224, encoders=[enc]): pass" % str(v))
        fig["memory_mib"] = rss
        r1, r2 = rss["long"] / rss["short"], rss["long_224"] / rss["short_224"]
        print(f"peak memory: predict {rss['short']:.0f} MiB ({args.frames} frames) vs {rss['long']:.0f} MiB "
              f"({10 * args.frames} frames) = {r1:.2f}x; pipeline with 224-px crops {rss['short_224']:.0f} vs "
              f"{rss['long_224']:.0f} MiB = {r2:.2f}x [<= 1.2x: {_verdict(max(r1, r2) <= 1.2)}]")
    if args.json:
        Path(args.json).write_text(json.dumps(fig, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
