"""CLEF training-step throughput against a plain open_clip CLIP step on the same batch, same run.

Baseline: one forward + backward + AdamW step of open_clip's model with the standard CLIP loss
(``open_clip.ClipLoss``) on B images and B captions. CLEF: the fine-tuning step of
``clefctl.finetune.FinetuneTask`` (images vs C label names, Eq. 4/5, plus the name-description
loss Eq. 3, total Eq. 6) and the pre-training step of ``clefctl.pretrain.PretrainTask`` (two views +
activity texts, Eq. 2), both through the same optimizer. Steps alternate (baseline, CLEF, baseline,
...) so machine noise hits both alike; medians are compared. CLEF's fine-tuning step encodes C + C
texts instead of B captions, and pre-training encodes two views, so its image cost per sample
doubles by design: the printed ratio for pre-training is per *view*.

    python benchmarks/train_step.py --arch clef-tiny --batch 64 --steps 12
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="clef-tiny")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()

    import open_clip

    from clefctl.finetune import FinetuneTask
    from clefctl.model import create
    from clefctl.pretrain import PretrainTask
    from clefctl.prompts import load_prompts

    torch.manual_seed(0)
    model = create(args.arch)
    clip = model.clip.train()
    size = model.image_size
    b = args.batch
    images = torch.randn(b, 3, size, size)
    views = (images, torch.randn(b, 3, size, size))
    au_prompts = load_prompts("synthetic-au")
    c = len(au_prompts.classes)
    captions = model.tokenizer([f"a photo of a person number {i} with a facial expression." for i in range(b)])
    opt = torch.optim.AdamW(clip.parameters(), lr=1e-5)
    clip_loss = open_clip.ClipLoss()
    ft = FinetuneTask(model, au_prompts, "au", None, 2.0, True, None)
    pre = PretrainTask(model, au_prompts, au_prompts.activity_ids, 0.25, True)
    ft_batch = {"image": images, "aus": (torch.rand(b, c) > 0.7).float(), "au_mask": torch.ones(b, c)}
    pre_batch = {"image": views, "activity": torch.randint(0, len(au_prompts.activity_ids), (b,))}

    def baseline():
        img = clip.encode_image(images, normalize=True)
        txt = clip.encode_text(captions, normalize=True)
        return clip_loss(img, txt, clip.logit_scale.exp())

    steps = {"baseline": baseline,
             "clef-finetune": lambda: ft.loss(ft_batch, random.Random(0))[0],
             "clef-pretrain": lambda: pre.loss(pre_batch, random.Random(0))[0]}
    times = {k: [] for k in steps}
    for i in range(args.warmup + args.steps):
        for name, fn in steps.items():
            t0 = time.perf_counter()
            loss = fn()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["baseline"])
    print(f"arch {args.arch}, batch {b}, {args.steps} timed steps each (medians), torch threads "
          f"{torch.get_num_threads()}")
    print(f"  open_clip CLIP step      {b / base:8.1f} samples/s")
    for name in ("clef-finetune", "clef-pretrain"):
        t = statistics.median(times[name])
        views_per_sample = 2 if name == "clef-pretrain" else 1
        per_view = b * views_per_sample / t
        print(f"  {name:<24} {b / t:8.1f} samples/s  ({per_view:.1f} images/s); "
              f"overhead vs CLIP per image {100 * (b / base / per_view - 1):+.1f}%")


if __name__ == "__main__":
    main()
