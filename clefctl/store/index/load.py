"""Opening a store's saved index: freshness, memory-mapped reads, GPUs, and what a query does
when there is no fresh index.

A saved index is memory-mapped (:mod:`~clefctl.store.index.saved`): a cold query maps the index
instead of reading all of it.

Before FAISS is given the files, :func:`index_status` compares their sizes and checksums with those
recorded at the save (:mod:`~clefctl.store.index.files`): a cut or changed file makes the index stale,
never a bus error in a query. Queries never build silently (:func:`index_for_query`): a missing or
stale index on a store of
at most :data:`EXACT_QUERY_LIMIT` rows is searched exactly (:class:`ExactIndex`, reading the rows
block by block: the same answer a flat index gives, nothing written); above that it is built
and saved first, after a warning that says so and how to build it ahead (``clefctl index build``).
:func:`load_index` (``embed``, ``serve``) rebuilds a missing or stale index with a log line.
"""

from __future__ import annotations

import json
import logging
import os
import warnings

import numpy as np

from clefctl.store.format import EmbeddingStore
from clefctl.store.index import gpu as gpu_mod
from clefctl.store.index.build import build_index
from clefctl.store.index.files import DAMAGED, damage
from clefctl.store.index.kinds import FLAT_LIMIT, IndexParams
from clefctl.store.index.saved import StoreIndex, as_store, index_paths, ondisk_path, read_saved

log = logging.getLogger("clefctl.store")

EXACT_QUERY_LIMIT = FLAT_LIMIT     # a query without a fresh index searches exactly up to this many rows


class ExactIndex:
    """Exact search over a store's rows without an index (read block by block); ``kind`` "exact"."""

    kind = "exact"

    def __init__(self, store: EmbeddingStore, reason: str = ""):
        self.store = store
        self.meta = {"kind": "exact", "rows": store.count, "reason": reason}
        self.on_gpu = False
        self.mapped = False

    @property
    def ntotal(self) -> int:
        return self.store.count

    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        from clefctl.store.index.tuning import ExactTopK

        q = np.asarray(queries, dtype=np.float32).reshape(-1, self.store.dim)
        top = ExactTopK(q, int(max(1, k)))
        for start, block in self.store.iter_embeddings(65536):
            top.add(block, start)
        return top.scores[:, :k], top.rows[:, :k]

    def set_nprobe(self, nprobe: int) -> None:  # nothing to tune: exact
        return None


def index_status(store: EmbeddingStore, kind: str = "auto", params: IndexParams | None = None) -> tuple[bool, str]:
    """``(fresh, reason)``: whether the saved index matches the store's committed rows (and
    ``kind`` unless auto, and ``params.nlist`` when given)."""
    faiss_path, meta_path = index_paths(store.path)
    if not faiss_path.is_file() or not meta_path.is_file():
        return False, "missing"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False, "unreadable metadata"
    if kind != "auto" and meta.get("kind") != kind:
        return False, f"index is {meta.get('kind')}, {kind} requested"
    if int(meta.get("rows", -1)) != store.count:
        return False, f"built from {meta.get('rows')} rows, the store has {store.count}"
    if meta.get("checksum") != store.checksum():
        return False, "embeddings changed"
    nlist = params.nlist if params is not None else None
    if nlist and meta.get("params", {}).get("nlist") not in (None, nlist):
        return False, f"built with {meta['params']['nlist']} lists, {nlist} requested"
    if meta.get("kind") == "ivf-ondisk" and not ondisk_path(store.path).is_file():
        return False, f"its lists ({ondisk_path(store.path).name}) are missing"
    damaged = damage(faiss_path.parent, meta.get("files"))   # before FAISS opens or maps them
    if damaged:
        return False, damaged
    return True, "fresh"


def load_fresh(st: EmbeddingStore, params: IndexParams) -> "StoreIndex | None":
    """The saved index when it reads back with the store's row count (None otherwise). Call it only
    after :func:`index_status` said fresh: that checks the files' sizes and checksums first."""
    _, meta_path = index_paths(st.path)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        index = read_saved(st.path, meta["kind"])
    except (RuntimeError, OSError, KeyError, json.JSONDecodeError) as exc:
        log.warning("the saved index of %s is unreadable (%s): rebuilding it", st.path, str(exc).splitlines()[0])
        return None
    if index.ntotal != st.count:
        return None
    return StoreIndex(index, meta["kind"], meta, params, mapped=True)


def _to_gpus(result, params: IndexParams):
    gpu_index, on_gpu = gpu_mod.to_gpus(result.index, result.kind, params.gpu)
    if on_gpu:
        result.index, result.on_gpu = gpu_index, True
        if hasattr(gpu_index, "nprobe"):
            gpu_index.nprobe = int(result.params.nprobe)
    return result


def load_index(store: EmbeddingStore | str | os.PathLike, kind: str = "auto", params: IndexParams | None = None, *,
               rebuild: bool = False, text_vectors: np.ndarray | None = None, progress: bool = False,
               announce=None):
    """The store's index: the saved one when fresh (memory-mapped), else built and saved now (a
    log line says why; ``announce`` gets the build's plan, see :func:`build_index`). Moved to the
    GPUs where faiss sees them (``params.gpu``)."""
    params = params or IndexParams()
    st, own = as_store(store)
    try:
        fresh, reason = (False, "rebuild requested") if rebuild else index_status(st, kind, params)
        result = load_fresh(st, params) if fresh else None
        if result is None:
            log.info("building the index of %s (%s)", st.path, reason if fresh is False else "unreadable")
            result = build_index(st, kind, params, text_vectors=text_vectors, progress=progress, announce=announce)
            result.meta["reason"] = reason
    finally:
        if own:
            st.close()
    return _to_gpus(result, params)


def index_for_query(store: EmbeddingStore, kind: str = "auto", params: IndexParams | None = None, *,
                    progress: bool = False):
    """The index a query searches (see the module docstring: fresh -> mapped; missing or stale ->
    exact search up to :data:`EXACT_QUERY_LIMIT` rows, else built after a warning)."""
    params = params or IndexParams()
    fresh, reason = index_status(store, kind, params)
    if fresh:
        loaded = load_fresh(store, params)
        if loaded is not None:
            return _to_gpus(loaded, params)
        reason = "unreadable"
    if reason.startswith(DAMAGED):
        warnings.warn(f"{index_paths(store.path)[0]}: the saved index is {reason}; not using it "
                      f"(`clefctl index build --store {store.path}` rebuilds it)", UserWarning, stacklevel=2)
    if store.count <= EXACT_QUERY_LIMIT and kind in ("auto", "flat"):
        return ExactIndex(store, reason)
    warnings.warn(f"{store.path}: the index is {reason if reason != 'missing' else 'missing'}; building it now before "
                  f"searching (next time run `clefctl index build --store {store.path}` after embedding)",
                  UserWarning, stacklevel=2)
    built = build_index(store, kind, params, progress=progress, announce=lambda line: warnings.warn(line, UserWarning))
    built.meta["reason"] = reason
    return _to_gpus(built, params)


__all__ = ["ExactIndex", "index_status", "load_index", "load_fresh", "index_for_query", "EXACT_QUERY_LIMIT"]
