"""Benchmark: nearest-neighbour queries over a store of 1M 512-d embeddings.

Prints the median single-query latency of the store's FAISS index, its recall@10 against exact
search, and its speed-up over a numpy brute-force search (float32 matmul + argpartition)
measured in the same run. Targets (2 CPU cores): median <= 2 ms, recall@10 >= 0.95, >= 50x
faster than numpy.

The embeddings are NOT uniform random vectors (on those no index reaches a useful recall, and
real embeddings never look like that). They come from a mixture with the structure of CLIP
image embeddings (see :func:`structured_embeddings`): a direction shared by all images (mean
cosine between random pairs ~0.3, as for CLIP embeddings of one domain), ~1000 cluster centres
(identities / scenes) with random weights, and inside each cluster an anisotropic low-rank
spread (rank 32, standard deviations decaying as j^-1/2, i.e. a low intrinsic dimension)
plus small isotropic noise; every row is L2-normalised. Queries are fresh draws from the same
mixture (not rows of the store).

Usage::

    python benchmarks/query.py                 # 1M rows (needs ~7 GB RAM, a few minutes)
    python benchmarks/query.py --n 100000      # smaller
    python benchmarks/query.py --quick         # 100k rows, fewer queries
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class Mixture:
    """The CLIP-like mixture of the module docstring (torch generator, reproducible by seed).

    Image rows: ``a*m + b*centre[c] + U_c z + noise``, normalised, with ``m`` a direction shared
    by every image, ``c`` a cluster drawn with random weights, ``U_c`` a random rank-``rank``
    basis of the cluster and ``z`` Gaussian with standard deviations ``s * j**-decay``.
    Text-like queries (:meth:`text_queries`) share another direction (the modality gap of CLIP:
    a text and its matching images have cosine ~0.3) and point at one cluster each.
    """

    def __init__(self, d: int = 512, clusters: int = 1000, rank: int = 48, seed: int = 0,
                 shared: float = 0.8, centre: float = 0.45, spread: float = 0.3,
                 decay: float = 0.4, noise: float = 0.03):
        import torch
        import torch.nn.functional as F

        g = torch.Generator().manual_seed(seed)
        self.d, self.clusters, self.rank = d, clusters, rank
        self.shared, self.centre, self.noise = shared, centre, noise
        self.mean = F.normalize(torch.randn(d, generator=g), dim=0)
        self.text_mean = F.normalize(torch.randn(d, generator=g), dim=0)
        self.centres = F.normalize(torch.randn(clusters, d, generator=g), dim=1)
        self.bases = torch.randn(clusters, rank, d, generator=g) / d ** 0.5
        self.scales = spread * torch.arange(1, rank + 1, dtype=torch.float32) ** -decay
        self.weights = torch.rand(clusters, generator=g) + 0.5

    def _spread(self, z, c):
        import torch

        out = torch.zeros(z.shape[0], self.d)
        order = torch.argsort(c, stable=True)
        start = 0
        for cl, cnt in enumerate(torch.bincount(c, minlength=self.clusters).tolist()):
            if cnt:
                idx = order[start:start + cnt]
                out[idx] = z[idx] @ self.bases[cl]
                start += cnt
        return out

    def sample(self, n: int, seed: int = 1, block: int = 65536) -> np.ndarray:
        """``n`` image-like unit rows (float32)."""
        import torch
        import torch.nn.functional as F

        g = torch.Generator().manual_seed(seed)
        out = np.empty((n, self.d), np.float32)
        out_t = torch.from_numpy(out)
        for s in range(0, n, block):
            k = min(block, n - s)
            c = torch.multinomial(self.weights, k, replacement=True, generator=g)
            z = torch.randn(k, self.rank, generator=g) * self.scales
            x = self.shared * self.mean + self.centre * self.centres[c] + self._spread(z, c)
            x += self.noise * torch.randn(k, self.d, generator=g)
            out_t[s:s + k] = F.normalize(x, dim=1)
        return out

    def text_queries(self, n: int, seed: int = 2) -> np.ndarray:
        """``n`` text-like queries: the text direction plus one cluster's centre and spread."""
        import torch
        import torch.nn.functional as F

        g = torch.Generator().manual_seed(seed)
        c = torch.multinomial(self.weights, n, replacement=True, generator=g)
        z = torch.randn(n, self.rank, generator=g) * self.scales
        x = 0.9 * self.text_mean + 0.5 * (self.centre * self.centres[c] + self._spread(z, c))
        x += 0.005 * torch.randn(n, self.d, generator=g)
        return F.normalize(x, dim=1).numpy()


def structured_embeddings(n: int, d: int = 512, seed: int = 0) -> np.ndarray:
    """``n`` image-like rows of the default :class:`Mixture` (the store of the benchmarks)."""
    return Mixture(d, seed=seed).sample(n)


def write_store(path: Path, emb: np.ndarray, fingerprint: str = "benchmark@synthetic") -> float:
    """Write ``emb`` as a float16 store (65,536-row chunks); returns the seconds it took."""
    from clefctl.data.records import Sample
    from clefctl.store import EmbeddingStore

    t0 = time.perf_counter()
    with EmbeddingStore.create(path, fingerprint, emb.shape[1], "synthetic-mixture", overwrite=True) as st:
        for s in range(0, len(emb), 65536):
            block = emb[s:s + 65536]
            st.append(block, [Sample(id=f"r{s + i:07d}", subject="") for i in range(len(block))])
        st.mark_complete()
    return time.perf_counter() - t0


def exact_topk(x: np.ndarray, q: np.ndarray, k: int = 10, block: int = 131072) -> np.ndarray:
    """Exact inner-product top-k rows of ``x`` for every query (blocked matmul + argpartition)."""
    best_s = np.full((len(q), k), -np.inf, np.float32)
    best_i = np.zeros((len(q), k), np.int64)
    for s in range(0, len(x), block):
        sc = q @ x[s:s + block].T                          # (Q, b)
        part = np.argpartition(-sc, min(k, sc.shape[1] - 1), axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(sc, part, 1)], 1)
        cand_i = np.concatenate([best_i, part + s], 1)
        top = np.argpartition(-cand_s, k - 1, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, top, 1), np.take_along_axis(cand_i, top, 1)
    return best_i


def numpy_query(x: np.ndarray, q: np.ndarray, k: int = 10) -> np.ndarray:
    """The baseline: one query by float32 matmul + argpartition + sort of the k best."""
    s = x @ q
    top = np.argpartition(-s, k)[:k]
    return top[np.argsort(-s[top])]


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a[:k]) & set(b)) / k for a, b in zip(found, truth)]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="stored embeddings")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=200, help="queries for latency and recall")
    ap.add_argument("--numpy-queries", type=int, default=20, help="queries timed for the numpy baseline")
    ap.add_argument("--index", default="auto", choices=["auto", "flat", "hnsw", "ivf"])
    ap.add_argument("--nlist", type=int, default=None, help="IVF lists (default: clefctl's rule)")
    ap.add_argument("--nprobe", type=int, default=None, help="IVF lists probed (default: clefctl's)")
    ap.add_argument("--quick", action="store_true", help="100k rows, 100 queries")
    ap.add_argument("--dir", default=None, help="folder for the store (default: a temporary one)")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.queries = min(args.n, 100_000), 100

    import faiss
    import torch

    from clefctl.store import EmbeddingStore, IndexParams, build_index, resolve_index_kind

    torch.set_num_threads(1)   # data generation only; faiss and numpy keep their own threads
    print(f"clefctl query benchmark: {args.n:,} x {args.dim} float16 rows; faiss {faiss.__version__}, "
          f"{faiss.omp_get_max_threads()} threads; {os.cpu_count()} CPUs; "
          f"load average {os.getloadavg()[0]:.1f}")
    t0 = time.perf_counter()
    mixture = Mixture(args.dim)
    base = mixture.sample(args.n)
    queries = mixture.sample(args.queries, seed=7)          # image-like queries, not in the store
    text_q = mixture.text_queries(args.queries)              # text-like (other modality) queries
    print(f"data: CLIP-like mixture ({mixture.clusters} clusters, rank-{mixture.rank} spread, shared "
          f"direction) made in {time.perf_counter() - t0:.1f} s; mean cosine of random pairs "
          f"{float(np.mean(np.sum(base[:2000:2] * base[1:2000:2], 1))):.2f}")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "bench.h5"
        secs = write_store(path, base)
        del base
        print(f"store: wrote {path.stat().st_size / 2**30:.2f} GiB in {secs:.1f} s")
        with EmbeddingStore.open(path) as st:
            t0 = time.perf_counter()
            x = st.embeddings()                      # what the index sees: fp16 rounded, as float32
            print(f"store: read {len(x):,} rows as float32 in {time.perf_counter() - t0:.1f} s")
            t0 = time.perf_counter()
            truth = exact_topk(x, queries, 10)
            text_truth = exact_topk(x, text_q, 10)
            print(f"exact top-10 of {2 * len(queries)} queries (blocked matmul): "
                  f"{time.perf_counter() - t0:.1f} s; text-like queries' best cosine "
                  f"{float(np.mean(np.sum(x[text_truth[:, 0]] * text_q, 1))):.2f}")
            nq = min(args.numpy_queries, len(queries))
            numpy_query(x, queries[0])
            lat_np = []
            for i in range(nq):
                t = time.perf_counter()
                numpy_query(x, queries[i])
                lat_np.append(time.perf_counter() - t)
            np_ms = 1e3 * float(np.median(lat_np))
            del x
            params = IndexParams()
            if args.nlist:
                params.nlist = args.nlist
            if args.nprobe:
                params.nprobe = args.nprobe
            kind = resolve_index_kind(args.index, st.count)
            t0 = time.perf_counter()
            index = build_index(st, kind, params)
            print(f"index: {kind} {index.meta['params']} built in {time.perf_counter() - t0:.1f} s")

        def measure(qs, gt):
            found, lat = [], []
            index.search(qs[:1], 10)
            for i in range(len(qs)):
                t = time.perf_counter()
                _, rows = index.search(qs[i:i + 1], 10)
                lat.append(time.perf_counter() - t)
                found.append(rows[0])
            return (1e3 * float(np.median(lat)), 1e3 * float(np.percentile(lat, 90)),
                    recall_at(np.array(found), gt))

        med, p90, rec = measure(queries, truth)
        t_med, _, t_rec = measure(text_q, text_truth)
        if kind == "ivf":
            chosen = index.params.nprobe
            print("nprobe sweep (image-like: median ms, recall@10 | text-like recall@10):")
            for probe in (4, 8, 16, 32, 64):
                index.set_nprobe(probe)
                m, _, r = measure(queries, truth)
                print(f"  nprobe {probe:3d}: {m:6.2f} ms  {r:.3f} | {measure(text_q, text_truth)[2]:.3f}")
            index.set_nprobe(chosen)
    speed = np_ms / med
    print()
    print(f"numpy brute force (float32 matmul + argpartition): median {np_ms:.1f} ms/query ({nq} queries)")
    print(f"clefctl {kind} index {index.meta['params']}, nprobe {index.params.nprobe if kind == 'ivf' else '-'}: "
          f"median {med:.3f} ms/query (p90 {p90:.3f} ms), recall@10 {rec:.3f}, {speed:.0f}x faster "
          f"than numpy")
    print(f"text-like queries (out of the image distribution): median {t_med:.3f} ms, recall@10 {t_rec:.3f}")
    ok = med <= 2.0 and rec >= 0.95 and speed >= 50
    print(f"targets: median <= 2 ms [{'ok' if med <= 2.0 else 'MISSED'}], recall@10 >= 0.95 "
          f"[{'ok' if rec >= 0.95 else 'MISSED'}], >= 50x numpy [{'ok' if speed >= 50 else 'MISSED'}]")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
