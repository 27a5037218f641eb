"""The FAISS index of a store: derived data beside it (``<store>.faiss`` and
``<store>.faiss.json``), chosen for the row count (exact ``flat`` below 100k rows, ``ivf`` above,
``hnsw`` on request), built at the end of ``embed`` or when stale, moved to the GPUs where faiss
sees them. Rows are unit vectors, so inner product = cosine.

Example::

    >>> from clefctl.store import load_index
    >>> idx = load_index("runs/rafdb.h5")                     # doctest: +SKIP
    >>> scores, rows = idx.search(text_vectors, k=10)         # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clefctl.errors import ClefError
from clefctl.paths import atomic_path, write_json_atomic
from clefctl.store._hdf5 import now
from clefctl.store.format import EmbeddingStore

log = logging.getLogger("clefctl.store")

FLAT_LIMIT = 100_000           # index="auto": exact search below this many vectors, IVF above


INDEX_KINDS = ("auto", "flat", "hnsw", "ivf")


def index_paths(store_path: str | os.PathLike) -> tuple[Path, Path]:
    """``(<store>.faiss, <store>.faiss.json)``."""
    return Path(f"{store_path}.faiss"), Path(f"{store_path}.faiss.json")


def resolve_index_kind(kind: str, n: int) -> str:
    """``auto`` -> exact ``flat`` below 100k vectors, ``ivf`` above."""
    if kind not in INDEX_KINDS:
        raise ClefError(f"unknown index kind {kind!r}", hint="use auto, flat, hnsw or ivf")
    if kind == "auto":
        return "flat" if n < FLAT_LIMIT else "ivf"
    return kind


def default_nprobe(n: int, nlist: int) -> int:
    """IVF lists probed per query: enough to scan ~4000 vectors, between 16 and 128 (17 for 1M
    rows in 4096 lists, 41 for 100k in 1024: small lists need more probes for the same recall)."""
    if n <= 0:
        return 16
    return int(min(nlist, max(16, min(128, math.ceil(4000 * nlist / n)))))


def default_nlist(n: int) -> int:
    """IVF lists: ~4*sqrt(n) rounded to a power of two (1024 for 100k, 4096 for 1M), 16-65536."""
    if n <= 0:
        return 16
    return int(min(65536, max(16, 2 ** round(math.log2(4 * math.sqrt(n))))))


@dataclass
class IndexParams:
    """Index construction/search settings (IVF: nlist, nprobe, training sample; HNSW: m, efs)."""

    nlist: int | None = None          # None: default_nlist(n)
    nprobe: int | None = None         # None: default_nprobe(n, nlist), saved with the index
    train_per_list: int = 32          # k-means training points per list
    kmeans_iterations: int = 10
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 96
    gpu: str = "auto"                 # auto | yes | no

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class StoreIndex:
    """A FAISS inner-product index over a store's rows (cosine: the rows are unit vectors)."""

    def __init__(self, index, kind: str, meta: dict, params: IndexParams):
        self.index = index
        self.kind = kind
        self.meta = meta
        self.params = copy.copy(params)
        if self.params.nprobe is None:
            self.params.nprobe = int(meta.get("params", {}).get("nprobe", 16))
        self.on_gpu = False
        self._apply_search_params(index)

    def _apply_search_params(self, index) -> None:
        import faiss

        if self.kind == "ivf":
            try:
                faiss.extract_index_ivf(index).nprobe = int(self.params.nprobe)
            except (RuntimeError, AttributeError):
                index.nprobe = int(self.params.nprobe)
        elif self.kind == "hnsw":
            index.hnsw.efSearch = int(self.params.ef_search)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """(scores (Q, k) float32, rows (Q, k) int64); rows are -1 where fewer than k exist."""
        q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32).reshape(-1, self.index.d))
        k = int(max(1, min(k, max(1, self.ntotal))))
        scores, rows = self.index.search(q, k)
        return scores, rows.astype(np.int64)

    def set_nprobe(self, nprobe: int) -> None:
        self.params.nprobe = int(nprobe)
        self._apply_search_params(self.index)



def _faiss_gpus(gpu: str) -> int:
    if gpu == "no":
        return 0
    import faiss

    n = int(getattr(faiss, "get_num_gpus", lambda: 0)())
    if gpu == "yes" and n == 0:
        raise ClefError("GPU FAISS requested but no GPU is visible to faiss",
                        hint="install faiss-gpu (pip install clefctl[gpu]) or use --gpu no")
    return n


def _to_gpu(index, kind: str, gpu: str):
    n = _faiss_gpus(gpu)
    if n == 0 or kind == "hnsw":  # FAISS has no GPU HNSW
        return index, False
    import faiss

    co = faiss.GpuMultipleClonerOptions()
    co.shard = n > 1
    return faiss.index_cpu_to_all_gpus(index, co=co), True


def _build_faiss(emb: np.ndarray, kind: str, params: IndexParams):
    import faiss

    n, d = emb.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
        index.add(emb)
        return index, {}
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, int(params.hnsw_m), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(params.ef_construction)
        index.add(emb)
        return index, {"hnsw_m": params.hnsw_m, "ef_construction": params.ef_construction}
    nlist = int(params.nlist or default_nlist(n))
    nlist = max(1, min(nlist, n))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    # Spherical k-means: unit centroids. Plain k-means under inner product lets large-norm
    # centroids swallow many points (unbalanced lists: slow probes).
    index.cp.spherical = True
    index.cp.niter = int(params.kmeans_iterations)
    index.cp.max_points_per_centroid = max(1, int(params.train_per_list))
    index.cp.min_points_per_centroid = 1
    n_train = min(n, nlist * int(params.train_per_list))
    rng = np.random.default_rng(0)
    train = emb if n_train >= n else emb[np.sort(rng.choice(n, n_train, replace=False))]
    gpu_index, on_gpu = _to_gpu(index, "ivf", params.gpu)
    gpu_index.train(train)
    gpu_index.add(emb)
    if on_gpu:
        index = faiss.index_gpu_to_cpu(gpu_index)
    nprobe = int(params.nprobe) if params.nprobe else default_nprobe(n, nlist)
    return index, {"nlist": nlist, "nprobe": nprobe, "train_points": int(n_train)}


def build_index(store: EmbeddingStore | str | os.PathLike, kind: str = "auto",
                params: IndexParams | None = None, *, save: bool = True) -> StoreIndex:
    """Build the index of ``kind`` over the store's committed rows and (``save``) write
    ``<store>.faiss`` and ``<store>.faiss.json`` atomically, index first."""
    import faiss

    params = params or IndexParams()
    st, own = _as_store(store)
    try:
        n = st.count
        if n == 0:
            raise ClefError("store has no embeddings to index", path=st.path,
                            hint="run `clefctl embed` first")
        kind = resolve_index_kind(kind, n)
        t0 = time.perf_counter()
        emb = np.ascontiguousarray(st.embeddings())
        index, built_params = _build_faiss(emb, kind, params)
        meta = {"kind": kind, "rows": n, "checksum": st.checksum(), "dim": st.dim,
                "fingerprint": st.fingerprint, "store_uid": st.uid, "params": built_params,
                "built": now(), "seconds": round(time.perf_counter() - t0, 3),
                "faiss": getattr(faiss, "__version__", "?")}
        if save:
            faiss_path, meta_path = index_paths(st.path)
            with atomic_path(faiss_path) as tmp:
                faiss.write_index(index, str(tmp))
            write_json_atomic(meta_path, meta)
    finally:
        if own:
            st.close()
    out = StoreIndex(index, kind, meta, params)
    return out


def index_status(store: EmbeddingStore, kind: str = "auto") -> tuple[bool, str]:
    """``(fresh, reason)``: whether the saved index matches the store's committed rows."""
    faiss_path, meta_path = index_paths(store.path)
    if not faiss_path.is_file() or not meta_path.is_file():
        return False, "missing"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False, "unreadable metadata"
    want = resolve_index_kind(kind, store.count)
    if meta.get("kind") != want:
        return False, f"index is {meta.get('kind')}, {want} requested"
    if int(meta.get("rows", -1)) != store.count:
        return False, f"built from {meta.get('rows')} rows, the store has {store.count}"
    if meta.get("checksum") != store.checksum():
        return False, "embeddings changed"
    return True, "fresh"


def load_index(store: EmbeddingStore | str | os.PathLike, kind: str = "auto",
               params: IndexParams | None = None, *, rebuild: bool = False) -> StoreIndex:
    """The store's index: the saved one when fresh, else built (and saved) now. On machines
    where faiss sees GPUs the index is moved to them for searching (``params.gpu``)."""
    import faiss

    params = params or IndexParams()
    st, own = _as_store(store)
    try:
        fresh, reason = (False, "rebuild requested") if rebuild else index_status(st, kind)
        index = None
        if fresh:
            faiss_path, meta_path = index_paths(st.path)
            try:
                index = faiss.read_index(str(faiss_path))
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                if index.ntotal != st.count:
                    index, reason = None, "index size does not match its metadata"
            except RuntimeError as exc:
                index, reason = None, f"unreadable index ({exc})"
        if index is None:
            log.info("building %s index for %s (%s)", resolve_index_kind(kind, st.count), st.path, reason)
            built = build_index(st, kind, params)
            built.meta["reason"] = reason
            result = built
        else:
            result = StoreIndex(index, meta["kind"], meta, params)
    finally:
        if own:
            st.close()
    gpu_index, on_gpu = _to_gpu(result.index, result.kind, params.gpu)
    if on_gpu:
        result.index, result.on_gpu = gpu_index, True
        result._apply_search_params(gpu_index)
    return result


def _as_store(store) -> tuple[EmbeddingStore, bool]:
    if isinstance(store, EmbeddingStore):
        return store, False
    return EmbeddingStore.open(store), True
