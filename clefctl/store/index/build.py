"""Building a store's index: plan (family, lists, memory) first, refuse what would not fit, then
train on a sample, add the rows block by block behind a progress bar, tune ``nprobe`` for text
queries, and save ``<store>.faiss`` + ``<store>.faiss.json`` atomically (index first).

Memory while building is the index itself plus a few blocks: the rows are read 65,536 at a
time (never all at once as float32), k-means sees ``nlist * train_per_list`` sampled rows, and
rows are assigned to their lists by :mod:`~clefctl.store.index.clustering` (bf16 products) or on
the GPUs. ``ivf-ondisk`` adds the rows shard by shard into temporary index files and merges their
lists into ``<store>.faiss.ivfdata`` with FAISS's ``merge_ondisk``: only one shard is in memory.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from clefctl.errors import ClefError
from clefctl.paths import atomic_path, free_bytes, write_json_atomic, writing
from clefctl.store._hdf5 import now
from clefctl.store.format import EmbeddingStore
from clefctl.store.index import clustering, gpu as gpu_mod
from clefctl.store.index.files import describe
from clefctl.store.index.kinds import (IVF_KINDS, IndexParams, _size, default_nlist, estimate_bytes, float16_bytes,
                                       ivf_of, make_index, resident_bytes, resolve_index_kind)
from clefctl.store.index.saved import StoreIndex, as_store, index_paths, ondisk_path, read_saved
from clefctl.store.index.tuning import Tuner, cached_text_vectors, tuning_queries

log = logging.getLogger("clefctl.store")

BLOCK_ROWS = 65536             # rows read, assigned and added at a time
SHARD_ROWS = 2_000_000         # ivf-ondisk: rows per temporary shard (~1 GB of 512-d SQ8 codes)
ENCODER_TRAIN_ROWS = 32768     # rows the SQ8 / PQ encoders are trained on


def available_memory() -> int | None:
    """``MemAvailable`` of /proc/meminfo in bytes (None where there is no such file)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def current_rss() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@dataclass
class BuildPlan:
    """What a build will do and need, known before it starts (:func:`plan_build`)."""

    kind: str
    rows: int
    dim: int
    nlist: int | None
    train_rows: int
    index_bytes: int           # the finished index (on disk: the lists' file)
    resident_bytes: int        # what the finished index keeps in memory when searched
    extra_bytes: int           # memory the build needs beyond its process's current size
    store_bytes: int           # the float16 embeddings' size (the default budget)
    available: int | None
    gpus: int

    def describe(self) -> str:
        lists = f", {self.nlist} lists trained on {self.train_rows:,} rows" if self.nlist else ""
        where = "on disk" if self.kind == "ivf-ondisk" else "in memory"
        gpu = f", on {self.gpus} GPU(s)" if self.gpus else ""
        free = f" of {_size(self.available)} available" if self.available is not None else ""
        return (f"building a {self.kind} index over {self.rows:,} rows{lists}{gpu}: index {_size(self.index_bytes)} "
                f"{where} ({self.index_bytes / max(1, self.store_bytes):.2f}x the float16 embeddings), "
                f"about {_size(self.extra_bytes)} more memory while building{free}")


def plan_build(kind: str, n: int, d: int, params: IndexParams, available: int | None = None) -> BuildPlan:
    """The family (``auto`` resolved), lists, training sample and memory of a build."""
    kind = resolve_index_kind(kind, n, d, params, available=available)
    gpus = gpu_mod.gpu_count(params.gpu)
    nlist = max(1, min(int(params.nlist or default_nlist(n)), n)) if kind in IVF_KINDS else None
    train = min(n, nlist * max(1, int(params.train_per_list))) if nlist else 0
    block = BLOCK_ROWS * d * 4 * 3
    if kind in IVF_KINDS:
        block += clustering.BLOCK * nlist * 6 + train * d * 6
    held = estimate_bytes(kind, min(n, SHARD_ROWS) if kind == "ivf-ondisk" else n, d, params)  # on disk: a shard
    return BuildPlan(kind, n, d, nlist, train, estimate_bytes(kind, n, d, params), resident_bytes(kind, n, d, params),
                     int(held + block), float16_bytes(n, d), available, gpus)


def check_fits(plan: BuildPlan, store_path) -> None:
    """Refuse (before anything is built) a build that needs more memory than is available."""
    if plan.available is not None and plan.extra_bytes > plan.available:
        hint = ("choose --kind ivf-ondisk (lists on disk) or --kind ivf-sq8 with a smaller --budget"
                if plan.kind != "ivf-ondisk" else "free some memory or build on a larger machine")
        raise ClefError(f"a {plan.kind} index over {plan.rows:,} rows would need about {_size(plan.extra_bytes)} of "
                        f"memory to build, but only {_size(plan.available)} is available", path=store_path, hint=hint)


def build_index(store: EmbeddingStore | str | os.PathLike, kind: str = "auto", params: IndexParams | None = None,
                *, save: bool = True, text_vectors: np.ndarray | None = None, progress: bool = False,
                announce: Callable[[str], None] | None = None):
    """Build the index of ``kind`` over the store's committed rows and (``save``) write it.

    ``text_vectors``: text embeddings to tune ``nprobe`` on (default: those the store has cached,
    :func:`~clefctl.store.index.tuning.cached_text_vectors`). ``announce`` receives the plan's one
    line (what, how big, how much memory) before the work starts (default: the log). Returns the
    :class:`~clefctl.store.index.saved.StoreIndex`."""
    import faiss

    params = params or IndexParams()
    st, own = as_store(store)
    try:
        n, d = st.count, st.dim
        if n == 0:
            raise ClefError("store has no embeddings to index", path=st.path, hint="run `clefctl embed` first")
        requested = kind
        plan = plan_build(kind, n, d, params, available_memory())
        save = save or plan.kind == "ivf-ondisk"     # its lists live in a file: always written
        (announce or log.info)(plan.describe())
        check_fits(plan, st.path)
        t0, rss0 = time.perf_counter(), current_rss()
        if plan.kind in IVF_KINDS:
            if text_vectors is None:
                text_vectors = cached_text_vectors(st)
            tuner = Tuner(tuning_queries(st, text_vectors))
            index, built = _build_ivf(st, plan, params, tuner, progress)
        else:
            tuner, (index, built) = None, _build_plain(st, plan, params, progress)
        peak = _peak_rss()
        meta = {"kind": plan.kind, "requested": requested, "rows": n, "checksum": st.checksum(), "dim": d,
                "fingerprint": st.fingerprint, "store_uid": st.uid, "params": built, "built": now(),
                "seconds": round(time.perf_counter() - t0, 3), "bytes": plan.index_bytes,
                "resident_bytes": plan.resident_bytes, "float16_bytes": plan.store_bytes,
                "build_extra_rss_mb": round(max(0, peak - rss0) / 2**20, 1), "gpus": plan.gpus,
                "faiss": getattr(faiss, "__version__", "?")}
        if save:
            meta["bytes"] = _save(st.path, index, meta, plan.kind)
    finally:
        if own:
            st.close()
    if save and plan.kind == "ivf-ondisk":  # search the saved lists, not the merge's temporary file
        index = read_saved(st.path, plan.kind)
    return StoreIndex(index, plan.kind, meta, params)


def _peak_rss() -> int:
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    except (ImportError, OSError):
        return current_rss()


def _blocks(st: EmbeddingStore, start: int = 0, stop: int | None = None):
    stop = st.count if stop is None else stop
    for s, block in st.iter_embeddings(BLOCK_ROWS):
        if s + len(block) <= start or s >= stop:
            continue
        a, b = max(start, s), min(stop, s + len(block))
        yield a, np.ascontiguousarray(block[a - s:b - s], dtype=np.float32)


def _sample(st: EmbeddingStore, rows: int, seed: int = 0) -> np.ndarray:
    """``rows`` stored rows drawn at random, read in one pass over the store."""
    n = st.count
    pick = np.sort(np.random.default_rng(seed).choice(n, rows, replace=False)) if rows < n else np.arange(n)
    out = np.empty((len(pick), st.dim), dtype=np.float32)
    j = 0
    for s, block in _blocks(st):
        sel = pick[(pick >= s) & (pick < s + len(block))] - s
        out[j:j + len(sel)] = block[sel]
        j += len(sel)
    return out


def _build_plain(st: EmbeddingStore, plan: BuildPlan, params: IndexParams, progress: bool):
    from clefctl.ui import progress_bar

    index = make_index(plan.kind, plan.dim, 0, params)
    with progress_bar(f"index ({plan.kind})", total=plan.rows, enabled=progress) as bar:
        for _, block in _blocks(st):
            index.add(block)
            bar.advance(len(block))
    built = {"hnsw_m": params.hnsw_m, "ef_construction": params.ef_construction} if plan.kind == "hnsw" else {}
    return index, built


def _train_ivf(st: EmbeddingStore, plan: BuildPlan, params: IndexParams, phases: dict):
    """An empty, trained IVF index of ``plan.kind`` and its centroids (``phases``: seconds of each step)."""
    t = time.perf_counter()
    sample = _sample(st, plan.train_rows)
    phases["sample"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    if plan.gpus:
        centroids = gpu_mod.kmeans(sample, plan.nlist, params.kmeans_iterations)
    else:
        centroids = clustering.spherical_kmeans(sample, plan.nlist, iterations=params.kmeans_iterations)
    phases["kmeans"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    index = make_index(plan.kind, plan.dim, len(centroids), params)
    ivf = ivf_of(index)
    ivf.quantizer.add(centroids)
    index.train(sample[:ENCODER_TRAIN_ROWS])   # the quantizer is trained already: this trains the encoder
    phases["encoder"] = round(time.perf_counter() - t, 2)
    return index, centroids


def _assigner(centroids: np.ndarray, gpus: int):
    if gpus:
        flat = gpu_mod.GpuFlat(centroids)
        return lambda x: flat.search(x, 1)[1][:, 0].astype(np.int64)
    return lambda x: clustering.assign(x, centroids)


def _add_rows(index, kind: str, blocks, assign, tuner: Tuner, bar) -> None:
    import faiss

    ivf = ivf_of(index)
    for start, x in blocks:
        if kind == "ivf-pq":                  # fast-scan lists and the refine codes: FAISS's own add
            index.add(x)
        else:                                 # (the arrays stay referenced here while FAISS reads them)
            lists, ids = assign(x), np.arange(start, start + len(x), dtype=np.int64)
            ivf.add_core(len(x), faiss.swig_ptr(x), faiss.swig_ptr(ids), faiss.swig_ptr(lists))
        tuner.add(x, start)
        bar.advance(len(x))


def _build_ivf(st: EmbeddingStore, plan: BuildPlan, params: IndexParams, tuner: Tuner, progress: bool):
    from clefctl.ui import progress_bar

    phases: dict = {}
    index, centroids = _train_ivf(st, plan, params, phases)
    assign = _assigner(centroids, plan.gpus)
    t = time.perf_counter()
    tmpdir = None
    with progress_bar(f"index ({plan.kind}, {plan.nlist} lists)", total=plan.rows, enabled=progress) as bar:
        if plan.kind != "ivf-ondisk":
            _add_rows(index, plan.kind, _blocks(st), assign, tuner, bar)
        else:
            tmpdir = _add_ondisk(st, plan, index, assign, tuner, bar)
    phases["add"] = round(time.perf_counter() - t, 2)   # with the tuning queries' exact neighbours
    try:
        built = _tune(index, plan, params, tuner, phases)
    except BaseException:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    if tmpdir is not None:
        built["_tmpdir"] = str(tmpdir)
    return index, built


def _tune(index, plan: BuildPlan, params: IndexParams, tuner: Tuner, phases: dict) -> dict:
    """``nprobe`` (given, or tuned on the text-like queries) and the build's parameters."""
    t = time.perf_counter()
    ivf = ivf_of(index)
    nlist = int(ivf.nlist)

    def set_nprobe(p: int) -> None:
        ivf.nprobe = int(p)

    if params.nprobe:
        set_nprobe(params.nprobe)
        tuning = {"nprobe": int(params.nprobe), "recall": tuner.recalls(lambda q, k: index.search(q, k)[1]),
                  "note": "nprobe given, not tuned"}
    else:
        tuning = tuner.tune(index, set_nprobe, nlist, float(params.target_recall))
    phases["tune"] = round(time.perf_counter() - t, 2)
    built = {"nlist": nlist, "nprobe": tuning["nprobe"], "train_points": plan.train_rows, "phases_s": phases,
             "tuning": tuning}
    if plan.kind == "ivf-pq":
        built["k_factor"] = float(index.k_factor)
    return built


def _add_ondisk(st: EmbeddingStore, plan: BuildPlan, index, assign, tuner: Tuner, bar) -> Path:
    """``ivf-ondisk``: the rows added shard by shard into temporary index files, whose lists are merged
    into one ``.ivfdata`` file in a temporary folder beside the store (returned; :func:`_save` moves the
    lists into place). A failure (a full disk: one line naming the file) removes the folder."""
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    tmpdir = Path(tempfile.mkdtemp(prefix=".faiss-shards-", dir=Path(st.path).parent))
    again = f"run `clefctl index build --store {st.path}`"
    try:
        empty = faiss.serialize_index(index)
        shards = []
        for s in range(0, plan.rows, SHARD_ROWS):
            shard = faiss.deserialize_index(empty)
            _add_rows(shard, plan.kind, _blocks(st, s, s + SHARD_ROWS), assign, tuner, bar)
            shards.append(str(tmpdir / f"shard-{len(shards)}.faiss"))
            with writing(ondisk_path(st.path), again):     # the file the shards become
                faiss.write_index(shard, shards[-1])
            del shard
        lists = tmpdir / ondisk_path(st.path).name
        need, free = plan.rows * (ivf_of(index).code_size + 8) + (1 << 20), free_bytes(tmpdir)
        if free is not None and free < need:     # FAISS writes the lists through a memory map: a bus error
            raise ClefError(f"the disk is full: the index's lists need {_size(need)}, {_size(free)} is free",
                            path=ondisk_path(st.path), hint=f"free some space, then {again}")
        with writing(lists, again):
            merge_ondisk(index, shards, str(lists))
    except BaseException:
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    return tmpdir


def _save(store_path, index, meta: dict, kind: str) -> int:
    """Write the index (and an on-disk index's lists) then its metadata; returns the index's bytes."""
    import faiss

    faiss_path, meta_path = index_paths(store_path)
    tmpdir = meta["params"].pop("_tmpdir", None)
    again = f"build it with `clefctl index build --store {store_path}` (the store itself is complete and kept)"
    try:
        saved = [faiss_path]
        if kind == "ivf-ondisk":
            os.replace(Path(tmpdir) / ondisk_path(store_path).name, ondisk_path(store_path))
            saved.append(ondisk_path(store_path))
        with atomic_path(faiss_path, again) as tmp:
            faiss.write_index(index, str(tmp))
        size = sum(p.stat().st_size for p in saved)
        meta["bytes"] = int(size)
        meta["files"] = describe(saved)     # checked before FAISS opens them again (files.damage)
        with writing(meta_path, again):
            write_json_atomic(meta_path, meta)
    finally:
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
    return int(size)


__all__ = ["BuildPlan", "build_index", "plan_build", "check_fits", "available_memory",
           "BLOCK_ROWS", "SHARD_ROWS"]
