"""GPU FAISS, used when it imports and sees a GPU (``pip install 'clefctl[gpu]'``: faiss-gpu).

``gpu="auto"`` uses the GPUs faiss sees, ``"no"`` never does, ``"yes"`` refuses to run without
one. On GPUs the build runs k-means (:class:`faiss.Kmeans` with ``gpu=True``), the assignment of
rows to lists and the exact neighbours the tuning measures recall against as GPU flat searches;
searching moves ``flat``, ``ivf`` and ``ivf-sq8`` indexes to the GPUs (FAISS has no GPU version of
the fast-scan, refine, HNSW or on-disk indexes: those search on the CPU). The saved index is
always the CPU index, so a store built on a GPU machine searches anywhere.
"""

from __future__ import annotations

import numpy as np

from clefctl.errors import ClefError

GPU_SEARCH_KINDS = ("flat", "ivf", "ivf-sq8")


def is_gpu_build() -> bool:
    """True when the installed ``faiss`` module is a GPU build (faiss-gpu's files won)."""
    import faiss

    return hasattr(faiss, "StandardGpuResources")


def gpu_count(gpu: str = "auto") -> int:
    """GPUs to use for ``gpu`` (auto | yes | no); ``yes`` without one is a :class:`ClefError`."""
    if gpu not in ("auto", "yes", "no"):
        raise ClefError(f"unknown --gpu value {gpu!r}", hint="use auto, yes or no")
    if gpu == "no":
        return 0
    import faiss

    n = int(getattr(faiss, "get_num_gpus", lambda: 0)()) if is_gpu_build() else 0
    if gpu == "yes" and n == 0:
        why = "no GPU is visible to faiss" if is_gpu_build() else "the installed faiss is the CPU build"
        raise ClefError(f"GPU FAISS requested but {why}",
                        hint="pip install 'clefctl[gpu]' (faiss-gpu 1.15.1, CUDA 12), then "
                             "`pip install --force-reinstall --no-deps faiss-gpu==1.15.1` so its files win over "
                             "faiss-cpu's; or use --gpu no")
    return n


def to_gpus(index, kind: str, gpu: str = "auto"):
    """``(index on the GPUs, True)`` for kinds FAISS can search there, else ``(index, False)``."""
    if kind not in GPU_SEARCH_KINDS or gpu_count(gpu) == 0:
        return index, False
    import faiss

    co = faiss.GpuMultipleClonerOptions()
    co.shard = faiss.get_num_gpus() > 1
    return faiss.index_cpu_to_all_gpus(index, co=co), True


def kmeans(sample: np.ndarray, k: int, iterations: int, seed: int = 0) -> np.ndarray:
    """Spherical k-means on the GPUs (unit centroids)."""
    import faiss

    km = faiss.Kmeans(sample.shape[1], int(k), niter=int(iterations), spherical=True, seed=int(seed), gpu=True,
                      max_points_per_centroid=max(1, -(-len(sample) // int(k))), min_points_per_centroid=1)
    km.train(np.ascontiguousarray(sample, dtype=np.float32))
    c = km.centroids.astype(np.float32)
    return c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)


class GpuFlat:
    """An exact inner-product index on the GPUs over fixed vectors (centroids, a block of rows)."""

    def __init__(self, vectors: np.ndarray):
        import faiss

        cpu = faiss.IndexFlatIP(vectors.shape[1])
        cpu.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self.index = faiss.index_cpu_to_all_gpus(cpu)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), int(k))
