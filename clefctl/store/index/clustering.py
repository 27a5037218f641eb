"""The IVF partition: spherical k-means on a sample of the rows, and every row's nearest centroid.

Both are matrix products of the rows with the centroids (1M rows x 4096 centroids x 512 = 4.3
TFLOP for the assignment alone, most of an IVF build). On a CPU with native bfloat16 (avx512_bf16 /
AMX) they run as bf16 products, which such CPUs compute faster than float32: k-means assigns with
them directly, and :func:`assign` keeps the 4 best centroids of each row by the bf16 scores and
picks the best of those in float32 (the exact assignment unless the true nearest centroid is not
among the bf16 top 4; ``tests/test_index.py`` checks equality). Elsewhere they run in float32.
With GPU FAISS the build uses FAISS's own GPU k-means and flat search instead
(:mod:`clefctl.store.index.gpu`).
"""

from __future__ import annotations

import numpy as np

BLOCK = 16384              # rows per matrix product
RESCORE = 4                # bf16 candidates re-scored in float32 per row


def _matmul_dtype():
    import torch

    from clefctl.cpu import cpu_has_native_bf16

    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def spherical_kmeans(sample: np.ndarray, k: int, *, iterations: int = 10, seed: int = 0) -> np.ndarray:
    """``k`` unit centroids of the unit rows ``sample`` (float32 (k, d)).

    Lloyd iterations with centroids renormalised each time (plain k-means under inner product lets
    large-norm centroids swallow points: unbalanced lists, slow probes); an emptied cluster is
    re-seeded with the row that fits its centroid worst. Starts from ``k`` distinct random rows.
    (Running the first iterations on a third of the sample saves a third of the time but cost
    text-like queries recall on the benchmark: every iteration sees every sampled row.)"""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(sample, dtype=np.float32))
    n, d = x.shape
    k = max(1, min(int(k), n))
    g = torch.Generator().manual_seed(int(seed))
    c = x[torch.randperm(n, generator=g)[:k]].clone()
    dt = _matmul_dtype()
    xl = x.to(dt)
    for _ in range(max(1, int(iterations))):
        ct = c.to(dt).T.contiguous()
        best = [(xl[s:s + BLOCK] @ ct).max(dim=1) for s in range(0, n, BLOCK)]
        owner = torch.cat([b.indices for b in best])
        sums = torch.zeros(k, d).index_add_(0, owner, x)
        empty = torch.nonzero(torch.bincount(owner, minlength=k) == 0).flatten()
        if empty.numel():  # re-seeded with the rows that fit their centroid worst
            worst = torch.argsort(torch.cat([b.values for b in best]).float())[:empty.numel()]
            sums[empty] = x[worst]
        c = torch.nn.functional.normalize(sums, dim=1)
    return c.numpy()


def assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(n,) int64: the nearest centroid (inner product) of each unit row of ``x`` (see the module
    docstring for how bf16 products stay exact)."""
    import torch

    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    c = torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32))
    dt = _matmul_dtype()
    if dt == torch.float32 or len(c) <= RESCORE:
        ct = c.T.contiguous()
        return torch.cat([(xt[s:s + BLOCK] @ ct).argmax(dim=1) for s in range(0, len(xt), BLOCK)]).numpy()
    ct = c.to(dt).T.contiguous()
    out = []
    for s in range(0, len(xt), BLOCK):
        block = xt[s:s + BLOCK]
        top = (block.to(dt) @ ct).topk(RESCORE, dim=1).indices
        exact = torch.einsum("nd,nkd->nk", block, c[top])
        out.append(top.gather(1, exact.argmax(dim=1, keepdim=True))[:, 0])
    return torch.cat(out).numpy().astype(np.int64)
