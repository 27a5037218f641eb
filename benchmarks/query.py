"""Benchmark: text and image queries over a store of 1M 512-d embeddings, the index chosen by
``clefctl index build`` against the previous default (IVFFlat, 4096 lists, nprobe 17), and a
cold ``clefctl query`` on the same store, all in one run.

Prints, for both indexes: recall@10 of image-like and text-like queries against exact search,
single-query latency (median and p99), the index's size against the store's, the build's time and
peak memory (each build runs in its own process: peak RSS from ``wait4``); then the time and
peak memory of a cold ``clefctl query`` process (a query text seen for the first time: tokenizer +
text tower of a ViT-B-16 checkpoint; and the same text again: read from the query-text cache).
Targets (2 CPU cores): text-like recall@10 >= 0.95 at median <= 2 ms, image-like >= 0.95; index
<= the float16 store; build <= 60 s and <= 3 GB; cold query <= 3 s and <= 1.5 GB.

The embeddings are NOT uniform random vectors (on those no index reaches a useful recall, and
real embeddings never look like that). They come from a mixture with the structure of CLIP
image embeddings (:class:`Mixture`): a direction shared by all images (mean cosine between
random pairs ~0.3), ~1000 cluster centres with random weights, inside each an anisotropic
low-rank spread plus small isotropic noise; rows are L2-normalised. Image-like queries are fresh
draws. Text-like queries share another direction (the modality gap) and point at one cluster
each; a third set is fresh image draws shifted by the measured gap. The index is tuned on 128
other text-like vectors (seed 11), written into the store's text cache as the store's "prompt
texts", the way ``embed`` caches a data set's prompts; they are never evaluation queries.

The store's model is a randomly initialised ViT-B-16 saved as a clefctl checkpoint beside it (its
text tower is what a cold query loads; its texts land nowhere near the synthetic rows, so the
cold query measures time and memory, not relevance).

Usage::

    python benchmarks/query.py                       # 1M rows (~3 GB disk, a few minutes)
    python benchmarks/query.py --keep /data/bench1m  # keep the store; prints the clefctl query line
    python benchmarks/query.py --quick --json        # 100k rows
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGETS = {"text_recall_at_10": 0.95, "image_recall_at_10": 0.95, "median_ms": 2.0, "build_s": 60.0,
           "build_peak_rss_mb": 3000.0, "cold_query_s": 3.0, "cold_query_peak_rss_mb": 1500.0}
QUERY_TEXT = "a photo of a face where the lip corners are pulled up"
PREVIOUS = {"train_per_list": 32, "iterations": 10}   # + the old nlist/nprobe rules (4096 / 17 at 1M)


class Mixture:
    """The CLIP-like mixture of the module docstring (torch generator, reproducible by seed).

    Image rows: ``a*m + b*centre[c] + U_c z + noise``, normalised, with ``m`` a direction shared
    by every image, ``c`` a cluster drawn with random weights, ``U_c`` a random rank-``rank``
    basis of the cluster and ``z`` Gaussian with standard deviations ``s * j**-decay``.
    Text-like queries (:meth:`text_queries`) share another direction (the modality gap of CLIP:
    a text and its matching images have cosine ~0.2) and point at one cluster each.
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

    def blocks(self, n: int, seed: int = 1, block: int = 65536):
        """``n`` image-like unit rows (float32), ``block`` at a time."""
        import torch
        import torch.nn.functional as F

        g = torch.Generator().manual_seed(seed)
        for s in range(0, n, block):
            k = min(block, n - s)
            c = torch.multinomial(self.weights, k, replacement=True, generator=g)
            z = torch.randn(k, self.rank, generator=g) * self.scales
            x = self.shared * self.mean + self.centre * self.centres[c] + self._spread(z, c)
            x += self.noise * torch.randn(k, self.d, generator=g)
            yield F.normalize(x, dim=1).numpy()

    def sample(self, n: int, seed: int = 1) -> np.ndarray:
        return np.concatenate(list(self.blocks(n, seed)))

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


def write_store(path: Path, emb, fingerprint: str = "benchmark@synthetic", d: int | None = None) -> float:
    """Write ``emb`` (an array, or an iterable of row blocks with ``d`` given) as a float16 store in
    65,536-row chunks; returns the seconds it took."""
    from clefctl.data.records import Sample
    from clefctl.store import EmbeddingStore

    blocks = (emb[s:s + 65536] for s in range(0, len(emb), 65536)) if isinstance(emb, np.ndarray) else emb
    d = emb.shape[1] if isinstance(emb, np.ndarray) else d
    t0 = time.perf_counter()
    with EmbeddingStore.create(path, fingerprint, d, "synthetic-mixture", overwrite=True) as st:
        s = 0
        for block in blocks:
            st.append(block, [Sample(id=f"r{s + i:07d}", subject="") for i in range(len(block))])
            s += len(block)
        st.mark_complete()
    return time.perf_counter() - t0


def exact_topk(x: np.ndarray, q: np.ndarray, k: int = 10, block: int = 131072) -> np.ndarray:
    """Exact inner-product top-k rows of ``x`` for every query (blocked matmul + argpartition)."""
    from clefctl.store.index.tuning import ExactTopK

    top = ExactTopK(q, k)
    for s in range(0, len(x), block):
        top.add(x[s:s + block], s)
    return top.rows


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a[:k]) & set(b)) / k for a, b in zip(found, truth)]))


def numpy_query(x: np.ndarray, q: np.ndarray, k: int = 10) -> np.ndarray:
    """The brute-force baseline: one query by float32 matmul + argpartition + sort of the k best."""
    s = x @ q
    top = np.argpartition(-s, k)[:k]
    return top[np.argsort(-s[top])]


def clefctl_cmd() -> list[str]:
    """How users start clefctl: the console script beside this Python, else ``python -m clefctl.cli``."""
    script = Path(sys.executable).parent / "clefctl"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "clefctl.cli"]


def measured(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd`` in its own process: wall seconds, peak RSS (MB), rc, stdout, stderr.

    The peak comes from ``/usr/bin/time -f %M`` where it exists: a child forked from this large
    process would report this process's size as its own peak (Linux keeps the high-water mark of
    the forked copy across exec); else from ``wait4`` with that caveat."""
    timer = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time") else None)
    with tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        full = [timer, "-f", "%M", "-o", tf.name, *cmd] if timer else cmd
        t0 = time.perf_counter()
        p = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=err, env=env or os.environ.copy(), cwd=str(ROOT))
        out = p.stdout.read()
        _, status, usage = os.wait4(p.pid, 0)
        seconds = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        peak_kb = usage.ru_maxrss
        if timer:
            try:
                peak_kb = int(open(tf.name).read().split()[-1])
            except (OSError, ValueError, IndexError):
                pass
        return {"seconds": seconds, "peak_rss_mb": peak_kb / 1024, "rc": p.returncode,
                "stdout": out.decode("utf-8", "replace"), "stderr": err.read().decode("utf-8", "replace")}


def previous_build(store: str, out: str) -> None:
    """The default index before issue 16, built as clefctl built it then: every row read as
    float32 at once, FAISS spherical k-means (4096 lists, 32 rows per list, 10 iterations),
    FAISS's own add (flat assignment), written to ``out``."""
    import faiss

    from clefctl.store import EmbeddingStore

    with EmbeddingStore.open(store) as st:
        emb = np.ascontiguousarray(st.embeddings())
    n, d = emb.shape
    nlist = previous_params(n)["nlist"]
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.spherical = True
    index.cp.niter = PREVIOUS["iterations"]
    index.cp.max_points_per_centroid = PREVIOUS["train_per_list"]
    index.cp.min_points_per_centroid = 1
    n_train = min(n, nlist * PREVIOUS["train_per_list"])
    rng = np.random.default_rng(0)
    index.train(emb if n_train >= n else emb[np.sort(rng.choice(n, n_train, replace=False))])
    index.add(emb)
    faiss.write_index(index, out)


def previous_query(store: str, index_path: str, weights: str) -> None:
    """A text query the way ``clefctl query`` ran one before issue 16: the whole model built (both
    towers), the whole index read into memory, then the search and the hits."""
    import faiss

    from clefctl.model import create
    from clefctl.search.encoding import encode_texts
    from clefctl.search.queries import hits_frame
    from clefctl.store import EmbeddingStore

    model = create("ViT-B-16", weights)
    index = faiss.read_index(index_path)
    with EmbeddingStore.open(store, fingerprint=model.fingerprint) as st:
        index.nprobe = previous_params(st.count)["nprobe"]
        scores, rows = index.search(encode_texts(model, [QUERY_TEXT]), 10)
        print(json.dumps(hits_frame(st, scores[0], rows[0], QUERY_TEXT)[["rank", "id"]].to_dict(orient="records")))


def previous_params(n: int) -> dict:
    """The previous default's lists and probes: ~4*sqrt(n) lists, enough probes to scan ~4000 rows."""
    from clefctl.store.index import default_nlist, default_nprobe

    nlist = min(default_nlist(n), n)
    return {"nlist": nlist, "nprobe": default_nprobe(n, nlist)}


def latency(search, queries: np.ndarray, k: int = 10) -> tuple[float, float, np.ndarray]:
    """Median and p99 ms of single-query searches, and the rows found."""
    search(queries[:1], k)
    lat, found = [], []
    for i in range(len(queries)):
        t = time.perf_counter()
        rows = search(queries[i:i + 1], k)
        lat.append(time.perf_counter() - t)
        found.append(rows[0])
    return 1e3 * float(np.median(lat)), 1e3 * float(np.percentile(lat, 99)), np.array(found)


def evaluate(search, sets: dict) -> dict:
    """Per query set: recall@10 and latency of ``search(queries, k) -> (scores, rows)``."""
    out = {}
    for name, (q, truth) in sets.items():
        med, p99, found = latency(lambda qs, k: search(qs, k)[1], q)
        out[name] = {"recall_at_10": recall_at(found, truth), "median_ms": med, "p99_ms": p99}
    return out


def make_model(folder: Path) -> tuple[str, str]:
    """A random ViT-B-16 saved as a clefctl checkpoint: (path, fingerprint)."""
    from clefctl.model import create, save_checkpoint

    m = create("ViT-B-16")
    path = folder / "model.pt"
    save_checkpoint(path, m, {"stage": "benchmark", "note": "randomly initialised"})
    from clefctl.weights.digest import sha256_file_cached

    return str(path), f"ViT-B-16@sha256:{sha256_file_cached(path)}"


def prepare(folder: Path, n: int, d: int, mixture: Mixture) -> dict:
    """Store (+ config.yaml, model.pt, cached tuning texts) in ``folder``."""
    from clefctl.store import EmbeddingStore
    from clefctl.workspace import Run

    t0 = time.perf_counter()
    weights, fingerprint = make_model(folder)
    model_s = time.perf_counter() - t0
    store = folder / "store.h5"
    secs = write_store(store, mixture.blocks(n), fingerprint, d)
    Run(folder, "embed").save_config({"dataset": "synthetic-mixture", "image_set": "synthetic-mixture",
                                      "arch": "ViT-B-16", "weights": weights, "fingerprint": fingerprint,
                                      "store": "store.h5", "dtype": "float16"})
    tuning = mixture.text_queries(128, seed=11)
    with EmbeddingStore.open(store) as st:
        st.text_embeddings("benchmark-prompt-texts", fingerprint, [f"text {i}" for i in range(len(tuning))],
                           lambda texts: tuning)
    return {"store": store, "weights": weights, "store_s": secs, "model_s": model_s}


def ground_truth(store: Path, sets: dict) -> dict:
    from clefctl.store import EmbeddingStore
    from clefctl.store.index.tuning import ExactTopK

    q = np.concatenate(list(sets.values()))
    top = ExactTopK(q, 10)
    with EmbeddingStore.open(store) as st:
        for start, block in st.iter_embeddings(65536):
            top.add(block, start)
    out, a = {}, 0
    for name, qs in sets.items():
        out[name] = (qs, top.rows[a:a + len(qs)])
        a += len(qs)
    return out


def run(args) -> dict:
    import faiss

    from clefctl.store import EmbeddingStore
    from clefctl.store.index import StoreIndex, read_saved

    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="clef-query-bench-", dir=args.dir))
    folder.mkdir(parents=True, exist_ok=True)
    res: dict = {"n": args.n, "dim": args.dim, "cpus": os.cpu_count(), "load_average": os.getloadavg()[0],
                 "faiss": faiss.__version__, "folder": str(folder)}
    mixture = Mixture(args.dim)
    prep = prepare(folder, args.n, args.dim, mixture)
    store = prep["store"]
    image_q = mixture.sample(args.queries, seed=7)
    text_q = mixture.text_queries(args.queries)
    with EmbeddingStore.open(store) as st:
        rows_mean = st.embeddings(np.arange(0, st.count, max(1, st.count // 8192))).mean(0)
    gap = text_q.mean(0) - rows_mean
    gap_q = mixture.sample(args.queries, seed=9) + gap
    gap_q /= np.linalg.norm(gap_q, axis=1, keepdims=True)
    t0 = time.perf_counter()
    sets = ground_truth(store, {"image": image_q, "text": text_q, "gap": gap_q})
    res["exact_s"] = time.perf_counter() - t0
    res["store_bytes"] = store.stat().st_size
    res["float16_bytes"] = 2 * args.n * args.dim

    # the new default: the real command, in its own process
    new = measured(clefctl_cmd() + ["index", "build", "--store", str(store), "--json"])
    if new["rc"] != 0:
        raise SystemExit(f"clefctl index build failed:\n{new['stderr'][-2000:]}")
    report = json.loads(new["stdout"])
    meta = json.loads(Path(f"{store}.faiss.json").read_text())
    index = StoreIndex(read_saved(store, meta["kind"]), meta["kind"], meta)   # as a query opens it
    res["new"] = {"kind": report["kind"], "params": report["params"], "index_bytes": report["bytes"],
                  "build_s": new["seconds"], "build_peak_rss_mb": new["peak_rss_mb"],
                  "tuning_recall": report.get("recall_at_10"), **evaluate(index.search, sets)}
    index = None

    # the previous default, built as before, in its own process
    old_path = folder / "previous.faiss"
    if not args.skip_previous:
        old = measured([sys.executable, str(Path(__file__).resolve()), "--previous-build", str(store), str(old_path)])
        if old["rc"] != 0:
            raise SystemExit(f"previous build failed:\n{old['stderr'][-2000:]}")
        old_index = faiss.read_index(str(old_path))
        old_index.nprobe = previous_params(args.n)["nprobe"]
        res["previous"] = {"kind": "ivf", "params": previous_params(args.n),
                           "index_bytes": old_path.stat().st_size, "build_s": old["seconds"],
                           "build_peak_rss_mb": old["peak_rss_mb"],
                           **evaluate(old_index.search, sets)}
        old_index = None
        q = measured([sys.executable, str(Path(__file__).resolve()), "--previous-query", str(store), str(old_path),
                      prep["weights"]])
        if q["rc"] != 0:
            raise SystemExit(f"previous query failed:\n{q['stderr'][-2000:]}")
        res["previous"]["cold_query"] = {"seconds": q["seconds"], "peak_rss_mb": q["peak_rss_mb"]}
        old_path.unlink()

    # numpy brute force (the speed-up's baseline)
    with EmbeddingStore.open(store) as st:
        x = st.embeddings()
    numpy_query(x, image_q[0])
    lat = []
    for i in range(min(args.numpy_queries, len(image_q))):
        t = time.perf_counter()
        numpy_query(x, image_q[i])
        lat.append(time.perf_counter() - t)
    res["numpy_ms"] = 1e3 * float(np.median(lat))
    del x

    # cold clefctl query: a new text (text tower loaded), then the same text (cached)
    cmd = clefctl_cmd() + ["query", QUERY_TEXT, "--store", str(store), "-k", "10", "--json"]
    for label in ("cold_query", "cold_query_cached"):
        q = measured(cmd)
        if q["rc"] != 0:
            raise SystemExit(f"clefctl query failed:\n{q['stderr'][-2000:]}")
        res[label] = {"seconds": q["seconds"], "peak_rss_mb": q["peak_rss_mb"]}
    res["query_line"] = f'clefctl query "{QUERY_TEXT}" --store {store}'
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return res


def flat_keys(res: dict) -> dict:
    """The keys ``--json`` promises, for the new default (and ``previous`` with the same keys)."""
    def keys(r: dict, cold: bool) -> dict:
        out = {"text_recall_at_10": r["text"]["recall_at_10"], "image_recall_at_10": r["image"]["recall_at_10"],
               "gap_recall_at_10": r["gap"]["recall_at_10"], "median_ms": r["text"]["median_ms"],
               "p99_ms": r["text"]["p99_ms"], "image_median_ms": r["image"]["median_ms"],
               "image_p99_ms": r["image"]["p99_ms"], "index_bytes": r["index_bytes"],
               "store_bytes": res["store_bytes"], "float16_bytes": res["float16_bytes"], "build_s": r["build_s"],
               "build_peak_rss_mb": r["build_peak_rss_mb"], "kind": r["kind"], "params": r["params"]}
        if cold:
            out.update({"cold_query_s": res["cold_query"]["seconds"],
                        "cold_query_peak_rss_mb": res["cold_query"]["peak_rss_mb"],
                        "cold_query_cached_s": res["cold_query_cached"]["seconds"],
                        "cold_query_cached_peak_rss_mb": res["cold_query_cached"]["peak_rss_mb"]})
        return out

    out = {"n": res["n"], "dim": res["dim"], "load_average": res["load_average"], **keys(res["new"], True),
           "build_phases_s": res["new"]["params"].get("phases_s"), "numpy_ms": res["numpy_ms"],
           "query_line": res["query_line"], "targets": TARGETS}
    if "previous" in res:
        out["previous"] = keys(res["previous"], False)
        out["previous"]["cold_query_s"] = res["previous"]["cold_query"]["seconds"]
        out["previous"]["cold_query_peak_rss_mb"] = res["previous"]["cold_query"]["peak_rss_mb"]
    return out


def report(flat: dict) -> list[str]:
    def row(name, r):
        return (f"  {name:<9} {r['kind']:<8} text {r['text_recall_at_10']:.3f}  image {r['image_recall_at_10']:.3f}  "
                f"gap {r['gap_recall_at_10']:.3f} | text median {r['median_ms']:.2f} ms p99 {r['p99_ms']:.2f} | "
                f"image median {r['image_median_ms']:.2f} ms | index {r['index_bytes'] / 1e6:,.0f} MB = "
                f"{r['index_bytes'] / flat['store_bytes']:.2f}x store | build {r['build_s']:.1f} s, "
                f"peak {r['build_peak_rss_mb']:,.0f} MB")

    mb = flat["store_bytes"] / 1e6
    lines = [f"query benchmark: {flat['n']:,} x {flat['dim']} float16 rows ({mb:,.0f} MB store), "
             f"load average {flat['load_average']:.1f} at the start",
             f"  new: {flat['kind']} {flat['params']}"]
    lines.append(row("new", flat))
    if "previous" in flat:
        lines.append(row("previous", flat["previous"]))
    lines.append(f"  numpy brute force {flat['numpy_ms']:.1f} ms/query = "
                 f"{flat['numpy_ms'] / flat['median_ms']:.0f}x the new index's text-query median")
    lines.append(f"  cold clefctl query: new text {flat['cold_query_s']:.2f} s, "
                 f"peak {flat['cold_query_peak_rss_mb']:,.0f} MB; cached text {flat['cold_query_cached_s']:.2f} s, "
                 f"peak {flat['cold_query_cached_peak_rss_mb']:,.0f} MB")

    def ok(good):
        return "ok" if good else "MISSED"
    t, f = TARGETS, flat
    lines.append("targets: " + ", ".join([
        f"text recall@10 >= {t['text_recall_at_10']} [{ok(f['text_recall_at_10'] >= t['text_recall_at_10'])}]",
        f"image >= {t['image_recall_at_10']} [{ok(f['image_recall_at_10'] >= t['image_recall_at_10'])}]",
        f"text median <= {t['median_ms']} ms [{ok(f['median_ms'] <= t['median_ms'])}]",
        f"index <= store [{ok(f['index_bytes'] <= f['store_bytes'])}]",
        f"build <= {t['build_s']:.0f} s [{ok(f['build_s'] <= t['build_s'])}]",
        f"build peak <= {t['build_peak_rss_mb'] / 1e3:.0f} GB [{ok(f['build_peak_rss_mb'] <= t['build_peak_rss_mb'])}]",
        f"cold query <= {t['cold_query_s']:.0f} s [{ok(f['cold_query_s'] <= t['cold_query_s'])}]",
        f"cold peak <= {t['cold_query_peak_rss_mb'] / 1000:.1f} GB "
        f"[{ok(f['cold_query_peak_rss_mb'] <= t['cold_query_peak_rss_mb'])}]"]))
    if "previous" in flat:
        p = flat["previous"]
        lines.append(f"  previous cold query (whole model, whole index read): {p['cold_query_s']:.2f} s, "
                     f"peak {p['cold_query_peak_rss_mb']:,.0f} MB")
        lines.append(f"vs previous default: cold query {p['cold_query_s'] / flat['cold_query_s']:.1f}x faster, "
                     f"{p['cold_query_peak_rss_mb'] / flat['cold_query_peak_rss_mb']:.1f}x less memory; "
                     f"build {p['build_s'] / flat['build_s']:.1f}x faster, index "
                     f"{p['index_bytes'] / flat['index_bytes']:.1f}x smaller, build peak "
                     f"{p['build_peak_rss_mb'] / flat['build_peak_rss_mb']:.1f}x lower")
    lines.append(f"try it: {flat['query_line']}")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="stored embeddings")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=200, help="queries per set for latency and recall")
    ap.add_argument("--numpy-queries", type=int, default=20, help="queries timed for the numpy baseline")
    ap.add_argument("--quick", action="store_true", help="100k rows, 100 queries")
    ap.add_argument("--keep", default=None, help="leave the store (and its model, index, config) in this folder")
    ap.add_argument("--dir", default=None, help="parent folder of the temporary store (without --keep)")
    ap.add_argument("--skip-previous", action="store_true", help="do not build the previous default")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--previous-build", nargs=2, metavar=("STORE", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--previous-query", nargs=3, metavar=("STORE", "INDEX", "WEIGHTS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.previous_build:
        previous_build(*args.previous_build)
        return 0
    if args.previous_query:
        previous_query(*args.previous_query)
        return 0
    if args.quick:
        args.n, args.queries = min(args.n, 100_000), 100
    import torch

    torch.set_num_threads(1)   # data generation only; faiss and numpy keep their own threads
    flat = flat_keys(run(args))
    if args.json:
        print(json.dumps(flat, indent=2, default=str))
    else:
        print("\n".join(report(flat)))
    good = (flat["text_recall_at_10"] >= TARGETS["text_recall_at_10"] and flat["median_ms"] <= TARGETS["median_ms"]
            and flat["image_recall_at_10"] >= TARGETS["image_recall_at_10"])
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
