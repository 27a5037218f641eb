"""The one GPU check's measurements (run it through ``benchmarks/gpu_check.sh OUT``, which installs
the missing packages first): each step runs on its own, records its figures or its error in
``OUT/gpu_check.json`` as soon as it ends (so a run cut short keeps what it measured), and
``OUT/gpu_check.md`` gets the table.

Steps: the environment; the ViT-B-16 training step as the engine runs it (bf16 autocast) at batch
64 and at the largest batch that fits (benchmarks/train_step.py); embedding img/s (the model alone
on preprocessed tensors, and ``run_embed`` end to end on JPEG face images); ``clefctl predict`` fps
on a generated 640x360 video at batch 64; a FAISS IVF index built and queried on 1M vectors (on the
GPU when faiss-gpu imports, else faiss-cpu on the same data, said so); peak GPU memory; and a
fine-tune of clef-tiny on synthetic-au under CUDA autocast, whose held-out AU F1 says the AMP path
learns; and ``data prepare`` (the face-crop cache) on BP4D-sized frames with every core. ``--dry-run`` runs every step tiny on the CPU (what the tests can check without a GPU);
``--only a,b`` runs those steps alone.

    python benchmarks/gpu_check.py OUT [--dry-run] [--only environment,faiss]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"train_step": "ViT-B-16 bf16 training >= 1,500 img/s", "embed": "embedding >= 5,000 img/s",
           "predict": ">= 300 fps at batch 64", "faiss": "(no target)", "finetune_amp": "held-out AU F1 > 70",
           "prepare": ">= 20 frames/s a core"}


class Check:
    def __init__(self, out: Path, dry: bool):
        self.out, self.dry = out, dry
        self.device = "cpu" if dry or not torch.cuda.is_available() else "cuda"
        self.tmp = Path(tempfile.mkdtemp(prefix="clef-gpu-check-"))
        self.env = dict(os.environ, CLEF_CACHE=str(self.tmp / "cache"), PYTHONPATH=os.environ.get("PYTHONPATH", ""))
        os.environ["CLEF_CACHE"] = self.env["CLEF_CACHE"]
        self.result = {"date": time.strftime("%Y-%m-%d %H:%M"), "dry_run": dry, "device": self.device, "steps": {}}

    def size(self, real, tiny):
        return tiny if self.dry else real

    def save(self) -> None:
        (self.out / "gpu_check.json").write_text(json.dumps(self.result, indent=2, default=str), encoding="utf-8")

    def peak(self) -> float | None:
        return torch.cuda.max_memory_allocated() / 2 ** 30 if self.device == "cuda" else None

    def run(self, name: str, fn) -> None:
        t0 = time.perf_counter()
        try:
            entry = {"ok": True, **fn()}
        except Exception as exc:  # noqa: BLE001 - one failing step must not hide the others
            entry = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000],
                     "traceback": traceback.format_exc()[-3000:]}
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        self.result["steps"][name] = entry
        self.save()
        print(f"[gpu_check] {name}: {'ok' if entry['ok'] else 'FAILED ' + entry['error']} ({entry['seconds']} s)",
              flush=True)

    def python(self, args: list[str], timeout: float) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=self.env, cwd=ROOT,
                              timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:3])} exited {done.returncode}: {done.stderr[-1500:]}")
        return done


def environment(c: Check) -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cpus": os.cpu_count()}
    if c.device == "cuda":
        p = torch.cuda.get_device_properties(0)
        out.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2 ** 30, 1), capability=f"{p.major}.{p.minor}",
                   bf16=torch.cuda.is_bf16_supported())
    try:
        import open_clip

        out["open_clip"] = open_clip.__version__
    except Exception as exc:  # noqa: BLE001
        out["open_clip"] = f"missing ({exc})"
    out["faiss"] = _faiss_kind()[1]
    return out


def train_step(c: Check) -> dict:
    args = ["benchmarks/train_step.py", "--json", "--device", c.device]
    args += (["--arch", "clef-tiny", "--batch", "8", "--steps", "1", "--warmup", "1"] if c.dry else
             ["--arch", "ViT-B-16", "--batch", "64", "--steps", "8", "--warmup", "3", "--find-max-batch"])
    r = json.loads(c.python(args, 300).stdout)
    ips = r["images_per_s"]
    out = {"arch": r["arch"], "autocast": r["amp"], "batch": r["batch"], "finetune_img_s": ips["clef-finetune"],
           "pretrain_views_s": ips["clef-pretrain"], "clip_baseline_img_s": ips["baseline"],
           "peak_gpu_gib": r.get("peak_gpu_gib")}
    if r.get("max_batch"):
        m = r["max_batch"]
        out.update(max_batch=m["batch"], max_batch_img_s=m["images_per_s"], max_batch_peak_gib=m.get("peak_gpu_gib"))
    return out


def _faces(folder: Path, n: int, c: Check) -> Path:
    """``n`` JPEG face images (224 px synthetic faces, a few rendered and repeated) in folder/face/."""
    from clefctl.data import synthetic

    src = synthetic.write_fer(c.tmp / "fer", subjects=4, images_per_class=3, size=224, seed=0, progress=False)
    rendered = sorted((Path(src) / "Image" / "aligned").glob("*.jpg"))
    (folder / "face").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        shutil.copyfile(rendered[i % len(rendered)], folder / "face" / f"{i:06d}.jpg")
    return folder


def embed(c: Check) -> dict:
    from clefctl.model import create
    from clefctl.embed.run import EmbedOptions, run_embed

    arch = "clef-tiny" if c.dry else "ViT-B-16"
    model = create(arch, device=c.device)
    n, b = c.size(8192, 32), c.size(512, 16)
    x = torch.randn(n, 3, model.image_size, model.image_size)
    model.encode_images(x[:b], batch_size=b, dtype="auto")        # warm-up (and the fp16 copy)
    if c.device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    model.encode_images(x, batch_size=b, dtype="auto")
    if c.device == "cuda":
        torch.cuda.synchronize()
    model_only = n / (time.perf_counter() - t0)
    folder = _faces(c.tmp / "faces", c.size(20000, 64), c)
    opts = EmbedOptions(dataset="folder", dataset_root=str(folder), weights="random", arch=arch, device=c.device,
                        out=str(c.tmp / "store.h5"), batch_size=c.size(256, 16), index="none", progress=False,
                        workspace=str(c.tmp / "ws"))
    t0 = time.perf_counter()
    res = run_embed(opts)
    wall = time.perf_counter() - t0
    return {"arch": arch, "model_only_img_s": model_only, "end_to_end_img_s": res.report.images_per_s,
            "end_to_end_wall_img_s": res.report.rows / wall, "images": res.report.rows,
            "inference_dtype": res.report.inference_dtype, "peak_gpu_gib": c.peak()}


def predict(c: Check) -> dict:
    from clefctl.data.faces.scenes import write_scene_video

    frames = c.size(1500, 24)
    video = c.tmp / "scene.mp4"
    write_scene_video(video, frames=max(20, frames), width=640, height=360, people=3)
    arch = "clef-tiny" if c.dry else "ViT-B-16"
    args = ["-m", "clefctl", "predict", str(video), "--weights", "random", "--arch", arch, "--prompts", "bp4d",
            "--batch-size", "64", "--out", str(c.tmp / "pred.csv"), "--workspace", str(c.tmp / "ws"),
            "--device", c.device, "--json"]
    t0 = time.perf_counter()
    done = c.python(args, 300)
    wall = time.perf_counter() - t0
    summary = json.loads(done.stdout) if done.stdout.strip().startswith("{") else {}
    counted = summary.get("frames") or summary.get("n_frames") or max(20, frames)
    own = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and ("fps" in k or "second" in k)}
    return {"arch": arch, "frames": counted, "wall_fps": counted / wall, "wall_seconds": wall,
            "reported": own, "note": "wall time includes starting Python, loading the model and the video"}


def _faiss_kind() -> tuple[object | None, str]:
    try:
        import faiss
    except Exception as exc:  # noqa: BLE001
        return None, f"not importable ({exc})"
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    return faiss, f"faiss {faiss.__version__}, " + (f"GPU ({gpus} device(s))" if gpus else "CPU only (faiss-cpu)")


def faiss_index(c: Check) -> dict:
    faiss, kind = _faiss_kind()
    if faiss is None:
        raise RuntimeError(f"faiss {kind}")
    n, d, lists = c.size(1_000_000, 20_000), c.size(512, 64), c.size(4096, 64)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(256, d)).astype(np.float32)
    x = (centres[rng.integers(0, 256, n)] + 0.3 * rng.normal(size=(n, d)).astype(np.float32))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    queries = x[rng.choice(n, 1000, replace=False)] + 0.01
    index = faiss.index_factory(d, f"IVF{lists},Flat", faiss.METRIC_INNER_PRODUCT)
    on_gpu = faiss.get_num_gpus() > 0 if hasattr(faiss, "get_num_gpus") else False
    if on_gpu:
        res = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(res, 0, index)
    t0 = time.perf_counter()
    index.train(x[rng.choice(n, min(n, 64 * lists), replace=False)])
    index.add(x)
    build = time.perf_counter() - t0
    if hasattr(index, "nprobe"):
        index.nprobe = 16
    else:
        faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", 16)
    t0 = time.perf_counter()
    index.search(queries, 10)
    search = time.perf_counter() - t0
    flat = faiss.IndexFlatIP(d)
    flat.add(x)
    _, truth = flat.search(queries[:100], 10)
    _, got = index.search(queries[:100], 10)
    recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, got)]))
    return {"faiss": kind, "on_gpu": on_gpu, "vectors": n, "dim": d, "index": f"IVF{lists},Flat nprobe 16",
            "build_seconds": build, "queries_per_s": len(queries) / search, "recall_at_10": recall}


def finetune_amp(c: Check) -> dict:
    from clefctl.engine import TrainConfig, choose_amp
    from clefctl.finetune import FinetuneOptions, run_finetune

    train = TrainConfig(epochs=None, batch_size=None, lr=None, warmup_epochs=None, amp="auto", progress=False,
                        max_steps=3 if c.dry else None)
    data = {"dataset": "synthetic-au"}
    if c.dry:  # a few faces in the same layout instead of generating the default set
        from clefctl.data import synthetic

        data = {"dataset": "bp4d", "dataset_root": str(synthetic.write_au(
            c.tmp / "au", subjects=6, tasks=2, frames_per_task=3, size=64, workers=1, progress=False))}
    run = run_finetune(FinetuneOptions(**data, arch="clef-tiny", init=None, device=c.device,
                                       workspace=str(c.tmp / "ws"), train=train))
    metrics = json.loads((run.path / "test_metrics.json").read_text())
    steps = [r for r in run.metrics() if r.get("kind") == "step"]
    from clefctl.model import create

    amp = choose_amp("auto", torch.device(c.device), create("clef-tiny", device=c.device))
    return {"held_out_mean_f1": metrics["mean_f1"], "steps": run.status().get("steps"),
            "first_loss": steps[0]["loss"], "last_loss": steps[-1]["loss"],
            "autocast": str(amp).replace("torch.", "") if amp else "off", "peak_gpu_gib": c.peak()}


def prepare(c: Check) -> dict:
    """``clefctl data prepare --dataset bp4d`` on BP4D-sized frames with every core of the machine (the
    face-crop cache's build: CPU work, measured here for its scaling over many cores)."""
    from clefctl.data.crops import prepare_dataset
    from clefctl.data.faces.scenes import write_frame_dataset

    root = c.tmp / "BP4D"
    size = c.size((1040, 1392, 520), (260, 348, 150))
    write_frame_dataset(root, subjects=("F001",), tasks=("T1",), frames=c.size(80, 3), width=size[0],
                        height=size[1], face=size[2], quality=92, noise=3)
    occ = root / "AUCoding" / "AU_OCC"
    for k in range(2, c.size(41, 4)):  # more subjects, copies of the first: enough frames to time many workers
        shutil.copytree(root / "F001", root / f"F{k:03d}")
        shutil.copyfile(occ / "F001_T1.csv", occ / f"F{k:03d}_T1.csv")
    report = prepare_dataset("bp4d", root=root, progress=False)
    return {"frames": report.frames, "workers": report.workers, "frames_per_s": report.frames_per_s,
            "frames_per_s_per_worker": report.frames_per_s / max(1, report.workers), "counts": report.counts}


def markdown(result: dict) -> str:
    s = result["steps"]
    env = s.get("environment", {})
    lines = [f"GPU check, {result['date']}, {env.get('gpu', result['device'])}"
             + (" (DRY RUN on CPU: tiny sizes, not figures)" if result["dry_run"] else ""),
             "", "| check | result | target |", "|---|---|---|"]

    def row(name, text):
        e = s.get(name)
        shown = "not run" if e is None else text(e) if e.get("ok") else "failed: " + e.get("error", "")
        lines.append(f"| {name} | {shown} | {TARGETS.get(name, '')} |")
    row("train_step", lambda e: f"{e['finetune_img_s']:.0f} img/s at batch {e['batch']} ({e['autocast']}); "
        + (f"{e['max_batch_img_s']:.0f} img/s at batch {e['max_batch']} (largest that fits)" if "max_batch" in e else
           "largest batch not searched") + f"; CLIP step {e['clip_baseline_img_s']:.0f} img/s")
    row("embed", lambda e: f"{e['model_only_img_s']:.0f} img/s model only, {e['end_to_end_img_s']:.0f} img/s "
        f"end to end ({e['images']} JPEGs, {e['inference_dtype']})")
    row("predict", lambda e: f"{e['wall_fps']:.0f} fps over {e['frames']} frames (wall, with start-up) {e['reported']}")
    row("faiss", lambda e: f"{e['faiss']}: {e['vectors']:,} x {e['dim']} {e['index']} built in "
        f"{e['build_seconds']:.1f} s, {e['queries_per_s']:.0f} queries/s, recall@10 {e['recall_at_10']:.2f}")
    row("finetune_amp", lambda e: f"held-out AU F1 {e['held_out_mean_f1']:.1f} after {e['steps']} steps "
        f"({e['autocast']}), loss {e['first_loss']:.2f} -> {e['last_loss']:.2f}")
    row("prepare", lambda e: f"{e['frames_per_s']:.0f} frames/s with {e['workers']} workers "
        f"({e['frames_per_s_per_worker']:.0f} a worker, pool start included; {e['frames']} frames of 1040x1392)")
    peaks = [e.get(k) for e in s.values() for k in ("peak_gpu_gib", "max_batch_peak_gib") if e.get(k)]
    lines.append(f"| peak GPU memory | {max(peaks):.1f} GiB |  |" if peaks else "| peak GPU memory | n/a |  |")
    return "\n".join(lines) + "\n"


STEPS = {"environment": environment, "train_step": train_step, "embed": embed, "predict": predict,
         "faiss": faiss_index, "finetune_amp": finetune_amp, "prepare": prepare}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--only", default=None, help="Comma-separated steps to run (default: all): " + ", ".join(STEPS))
    args = ap.parse_args()
    only = STEPS if args.only is None else [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = sorted(set(only) - set(STEPS))
    if unknown:
        ap.error(f"unknown step(s) {', '.join(unknown)}; the steps are {', '.join(STEPS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    c = Check(out, args.dry_run)
    if c.device != "cuda" and not c.dry:
        print("[gpu_check] no CUDA device: running the dry run instead", flush=True)
        c.dry = c.result["dry_run"] = True
    try:
        for name in only:
            c.run(name, lambda fn=STEPS[name]: fn(c))
    finally:
        (out / "gpu_check.md").write_text(markdown(c.result), encoding="utf-8")
        shutil.rmtree(c.tmp, ignore_errors=True)
    print((out / "gpu_check.md").read_text(), flush=True)
    sys.exit(0 if all(e.get("ok") for e in c.result["steps"].values()) else 1)


if __name__ == "__main__":
    main()
