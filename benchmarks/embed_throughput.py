"""Benchmark: image-embedding throughput of clefctl's inference path vs plain open_clip fp32.

Both paths embed the same images with the same model and batch size:

* baseline: a plain open_clip loop, ``model.encode_image(batch)`` in float32 under ``no_grad``;
* clefctl: :class:`clefctl.model.inference.ImageEncoder` (``ClefModel.encode_images`` with
  ``dtype="auto"``), a copy of the image tower cast to bfloat16
  on CPUs with native bf16 (AVX512-BF16 / AMX), float32 elsewhere (not autocast: bf16 autocast
  is several times slower for CPU inference).

It prints images/s, the speed-up (target >= 1.8x for ViT-B-16 on 2 cores), the cosine between
the two paths' embeddings (target >= 0.995) and each path's fraction of the matmul ceiling,
measured in the same run with a large fp32 and bf16 matmul. With ``--end-to-end`` it also times
``clefctl.embed.embed_into_store`` against the plain loop on image files (decode + preprocess +
encode + store).

Usage::

    python benchmarks/embed_throughput.py                    # ViT-B-16, 24 images, batch 8
    python benchmarks/embed_throughput.py --arch clef-tiny --images 256
    python benchmarks/embed_throughput.py --end-to-end
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def matmul_ceiling(dtype, size: int = 2048, repeats: int = 5) -> float:
    """Best GFLOP/s of a ``size``-cubed matmul in ``dtype``."""
    import torch

    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * size ** 3 / best / 1e9


def flops_per_image(model) -> float:
    """FLOPs of one forward pass of the image tower: torch's flop counter over the linear and
    convolution layers (with PyTorch's fused attention fast path off, so that the attention
    projections are visible to it) plus 4*T^2*W per layer for the attention products."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 3, model.image_size, model.image_size)
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.clip.visual(x)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    visual = model.clip.visual
    tr = getattr(visual, "transformer", None)
    grid = getattr(visual, "grid_size", None)
    attention = 0.0
    if tr is not None and grid is not None:
        tokens = int(grid[0]) * int(grid[1]) + 1
        attention = 4.0 * tokens ** 2 * int(tr.width) * int(tr.layers)
    return float(counter.get_total_flops()) + attention


def timed(fns, batches, repeats: int = 2):
    """Best wall time of each function over ``batches``, runs interleaved (a b a b ...) so that
    load from other processes hits both alike; returns [(seconds, embeddings), ...]."""
    import torch

    for fn in fns:
        fn(batches[0][:2])                               # warm-up (allocations, kernel choice)
    best = [float("inf")] * len(fns)
    outs = [None] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            res = [fn(b) for b in batches]
            best[i] = min(best[i], time.perf_counter() - t)
            outs[i] = torch.cat(res)
    return list(zip(best, outs))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="ViT-B-16")
    ap.add_argument("--weights", default=None, help="weights file (default: random init)")
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2, help="interleaved timed passes (best is kept)")
    ap.add_argument("--end-to-end", action="store_true", help="also time embed_into_store on files")
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from clefctl.data.transforms import transforms_for
    from clefctl.model import create
    from clefctl.model.inference import ImageEncoder, cpu_has_native_bf16

    print(f"clefctl embedding throughput: {args.arch}, {args.images} images, batch {args.batch_size}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"native bf16: {cpu_has_native_bf16()}, load average {os.getloadavg()[0]:.1f}")
    ceil32 = matmul_ceiling(torch.float32)
    ceil16 = matmul_ceiling(torch.bfloat16)
    print(f"matmul ceiling (2048^3): fp32 {ceil32:.0f} GFLOP/s, bf16 {ceil16:.0f} GFLOP/s")

    model = create(args.arch, args.weights)
    flops = flops_per_image(model)
    tf = transforms_for(model, train=False)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)) for _ in range(args.images)]
    pixels = torch.stack([tf(im) for im in images])
    batches = list(torch.split(pixels, args.batch_size))

    clip = model.clip.eval()

    def plain(b):
        with torch.no_grad():
            return F.normalize(clip.encode_image(b), dim=-1)

    enc = ImageEncoder(model)
    (base_s, base), (fast_s, fast) = timed([plain, enc], batches, args.repeats)
    cos = torch.sum(base * fast, dim=1)
    base_rate, fast_rate = args.images / base_s, args.images / fast_s
    ceil_fast = ceil16 if enc.dtype == torch.bfloat16 else ceil32
    print(f"model: {flops / 1e9:.1f} GFLOP per image")
    print(f"open_clip fp32 loop : {base_rate:7.2f} img/s = {base_rate * flops / 1e9 / ceil32:.0%} of the fp32 ceiling")
    print(f"clefctl ({str(enc.dtype).replace('torch.', ''):8s}): {fast_rate:7.2f} img/s = "
          f"{fast_rate * flops / 1e9 / ceil_fast:.0%} of the {'bf16' if ceil_fast is ceil16 else 'fp32'} ceiling")
    ratio = fast_rate / base_rate
    print(f"speed-up {ratio:.2f}x [target >= 1.8x for ViT-B-16: "
          f"{'ok' if ratio >= 1.8 else 'MISSED'}]; cosine to fp32 min {cos.min():.5f} mean {cos.mean():.5f} "
          f"[target >= 0.995: {'ok' if cos.min() >= 0.995 else 'MISSED'}]")
    ok = ratio >= 1.8 and float(cos.min()) >= 0.995

    if args.end_to_end:
        from clefctl.data.records import Sample
        from clefctl.embed import embed_into_store

        with tempfile.TemporaryDirectory() as tmp:
            samples = []
            for i, im in enumerate(images):
                p = Path(tmp) / f"{i:04d}.jpg"
                im.save(p, quality=92)
                samples.append(Sample(id=f"i{i:04d}", subject="", path=str(p)))

            def plain_files():
                out = []
                for s in range(0, len(samples), args.batch_size):
                    ims = [Image.open(x.path).convert("RGB") for x in samples[s:s + args.batch_size]]
                    out.append(plain(torch.stack([model.preprocess(im) for im in ims])))
                return torch.cat(out)

            t = time.perf_counter()
            plain_files()
            plain_e2e = time.perf_counter() - t
            t = time.perf_counter()
            rep = embed_into_store(model, samples, Path(tmp) / "e2e.h5", batch_size=args.batch_size,
                                   chunk_size=max(args.batch_size, 64), progress=False)
            store_e2e = time.perf_counter() - t
            print(f"end to end on {len(samples)} JPEG files: plain loop {len(samples) / plain_e2e:.2f} img/s, "
                  f"embed_into_store {len(samples) / store_e2e:.2f} img/s "
                  f"({plain_e2e / store_e2e:.2f}x; includes the bf16 copy, HDF5 writes and fsyncs; "
                  f"{rep.rows} rows)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
