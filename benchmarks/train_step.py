"""CLEF training-step throughput: the step the engine runs, against a plain open_clip CLIP step on the
same batch, same run.

CLEF: ``clefctl.engine.Trainer``'s own step (batch to the device, the task's loss under the
autocast the engine chooses for this model and device (``--amp auto``: bf16 on CUDA and for wide
models such as ViT-B-16 on a CPU, none for clef-tiny on a CPU), the loss averaged over ranks,
backward, AdamW (fused where torch has the kernel), the schedule, the logit-scale clamp) for the
fine-tuning task (images vs C label names, Eq. 4/5, plus the name-description loss Eq. 3) and the
pre-training task (two views + activity texts, Eq. 2). Baseline: open_clip's model with the standard
CLIP loss (``open_clip.ClipLoss``) on B images and B captions, under the same autocast and the
same optimizer. Steps alternate (baseline, CLEF, baseline, ...) so machine noise hits both alike;
medians are compared. Pre-training encodes two views, so its image cost per sample doubles by
design: its ratio is printed per *view*.

``--find-max-batch`` (CUDA) doubles the fine-tuning batch until the device runs out of memory and
reports the largest that fits, its images/s and peak memory (benchmarks/gpu_check.sh uses it).

    python benchmarks/train_step.py --arch clef-tiny --batch 64 --steps 12
    python benchmarks/train_step.py --arch ViT-B-16 --batch 16 --steps 4
    python benchmarks/train_step.py --arch ViT-B-16 --device cuda --batch 64 --find-max-batch --json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time

import torch


class _Steps:
    """The engine's step for one task, callable on a batch (a Trainer on a throw-away run)."""

    def __init__(self, model, task, amp: str, batch_size: int, run_dir: str):
        from clefctl.engine import TrainConfig, Trainer
        from clefctl.engine.loop import _LoopState, lr_lambda
        from clefctl.workspace import Workspace

        cfg = TrainConfig(epochs=1, batch_size=batch_size, lr=1e-5, amp=amp, progress=False, log_every=10 ** 9)
        run = Workspace(run_dir).new_run("finetune", "bench")
        self.trainer = Trainer(model, task, cfg, run, {"stage": "bench"})
        self.state = _LoopState()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.trainer.optimizer, lr_lambda(10 ** 6, 0, 1e-5, 1e-6))

    def __call__(self, batch: dict) -> None:
        self.trainer._step(batch, self.state, self.scheduler, lambda *a, **k: None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batches(model, b: int, device, prompts):
    size = model.image_size
    c = len(prompts.classes)
    images = torch.randn(b, 3, size, size)
    ft = {"image": images, "aus": (torch.rand(b, c) > 0.7).float(), "au_mask": torch.ones(b, c)}
    pre = {"image": (images, torch.randn(b, 3, size, size)),
           "activity": torch.randint(0, len(prompts.activity_ids), (b,))}
    return ft, pre


def measure(arch: str, b: int, steps: int, warmup: int, amp: str, device: str | None,
            tasks=("clef-finetune", "clef-pretrain")) -> dict:
    """Median seconds per step of the baseline and the CLEF steps, and what ran (amp dtype, device)."""
    import open_clip

    from clefctl.engine import choose_amp
    from clefctl.engine.loop import _adamw
    from clefctl.finetune import FinetuneTask
    from clefctl.model import create
    from clefctl.pretrain import PretrainTask
    from clefctl.prompts import load_prompts

    torch.manual_seed(0)
    model = create(arch, device=device)
    dev = model.device
    clip = model.clip.train()
    prompts = load_prompts("synthetic-au")
    ft_batch, pre_batch = _batches(model, b, dev, prompts)
    amp_dtype = choose_amp(amp, dev, model)
    captions = model.tokenizer([f"a photo of a person number {i} with a facial expression." for i in range(b)])
    base_images, captions = ft_batch["image"].to(dev), captions.to(dev)
    base_opt = _adamw([{"params": [p for p in clip.parameters() if p.requires_grad]}], 1e-5, dev)
    clip_loss = open_clip.ClipLoss()

    def baseline(_batch):
        with torch.autocast(dev.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            img = clip.encode_image(base_images, normalize=True)
            txt = clip.encode_text(captions, normalize=True)
            loss = clip_loss(img, txt, clip.logit_scale.exp())
        base_opt.zero_grad(set_to_none=True)
        loss.backward()
        base_opt.step()

    with tempfile.TemporaryDirectory(prefix="clef-bench-") as tmp:
        runners = {"baseline": (baseline, None)}
        if "clef-finetune" in tasks:
            runners["clef-finetune"] = (_Steps(model, FinetuneTask(model, prompts, "au", None, 2.0, True, None),
                                               amp, b, tmp), ft_batch)
        if "clef-pretrain" in tasks:
            runners["clef-pretrain"] = (_Steps(model, PretrainTask(model, prompts, prompts.activity_ids, 0.25, True),
                                               amp, b, tmp), pre_batch)
        times = {k: [] for k in runners}
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        for i in range(warmup + steps):
            for name, (fn, batch) in runners.items():
                _sync(dev)
                t0 = time.perf_counter()
                fn(batch)
                _sync(dev)
                if i >= warmup:
                    times[name].append(time.perf_counter() - t0)
    out = {"arch": arch, "batch": b, "device": str(dev), "amp": str(amp_dtype).replace("torch.", "") if amp_dtype
           else "off", "threads": torch.get_num_threads(), "steps": steps,
           "seconds": {k: statistics.median(v) for k, v in times.items()}}
    if dev.type == "cuda":
        out["peak_gpu_gib"] = torch.cuda.max_memory_allocated(dev) / 2 ** 30
    return out


def find_max_batch(arch: str, start: int, steps: int, amp: str, device: str | None, limit: int = 4096) -> dict:
    """The largest fine-tuning batch (start, 2x start, ...) whose step fits the device's memory."""
    best, b = None, start
    while b <= limit:
        try:
            best = measure(arch, b, steps, 1, amp, device, tasks=("clef-finetune",))
        except torch.OutOfMemoryError:
            break
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        b *= 2
    return best or {}


def _print(r: dict) -> None:
    s, b = r["seconds"], r["batch"]
    print(f"arch {r['arch']}, batch {b}, device {r['device']}, autocast {r['amp']} (what the engine uses), "
          f"{r['steps']} timed steps each (medians), torch threads {r['threads']}")
    print(f"  open_clip CLIP step      {b / s['baseline']:8.1f} samples/s")
    for name in ("clef-finetune", "clef-pretrain"):
        if name not in s:
            continue
        views = 2 if name == "clef-pretrain" else 1
        per_view = b * views / s[name]
        print(f"  {name:<24} {b / s[name]:8.1f} samples/s  ({per_view:.1f} images/s); "
              f"overhead vs CLIP per image {100 * (b / s['baseline'] / per_view - 1):+.1f}%")
    if "peak_gpu_gib" in r:
        print(f"  peak GPU memory {r['peak_gpu_gib']:.1f} GiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="clef-tiny")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--amp", default="auto", choices=["auto", "bf16", "off"])
    ap.add_argument("--device", default=None)
    ap.add_argument("--find-max-batch", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    random.seed(0)
    result = measure(args.arch, args.batch, args.steps, args.warmup, args.amp, args.device)
    for name, sec in result["seconds"].items():
        result.setdefault("images_per_s", {})[name] = args.batch * (2 if name == "clef-pretrain" else 1) / sec
    if args.find_max_batch:
        top = find_max_batch(args.arch, args.batch * 2, max(2, args.steps // 2), args.amp, args.device)
        if top:
            top["images_per_s"] = top["batch"] / top["seconds"]["clef-finetune"]
        result["max_batch"] = top
    if args.json:
        print(json.dumps(result, indent=2))
        return
    _print(result)
    if result.get("max_batch"):
        m = result["max_batch"]
        print(f"  largest batch that fits: {m['batch']} ({m['images_per_s']:.0f} images/s, "
              f"peak {m.get('peak_gpu_gib', 0):.1f} GiB)")


if __name__ == "__main__":
    main()
