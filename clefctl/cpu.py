"""What this CPU computes natively: :func:`cpu_has_native_bf16`, which decides the bfloat16 image
encoding (:func:`clefctl.model.inference.inference_dtype`) and the bf16 products of an IVF index
build (:mod:`clefctl.store.index.clustering`). Imports nothing of clefctl, and torch only when
``/proc/cpuinfo`` cannot say."""

from __future__ import annotations

import functools
import time


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bfloat16 matmuls natively (AVX512-BF16 or AMX-BF16 flags,
    or, where /proc/cpuinfo is unavailable, a bf16 matmul measured >= 1.3x faster than fp32)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags") or line.startswith("Features"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    except OSError:
        pass
    import torch

    def best(dtype) -> float:
        a = torch.randn(256, 1024).to(dtype)
        b = torch.randn(1024, 1024).to(dtype)
        a @ b
        times = []
        for _ in range(3):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
        return min(times)

    try:
        return best(torch.float32) / best(torch.bfloat16) >= 1.3
    except RuntimeError:
        return False


__all__ = ["cpu_has_native_bf16"]
