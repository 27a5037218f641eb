"""A saved index, as both the build (:mod:`~clefctl.store.index.build`) and the reads
(:mod:`~clefctl.store.index.load`) see it: where its files lie beside the store (:func:`index_paths`,
:func:`ondisk_path`), reading it back memory-mapped (:func:`read_saved`) and the
:class:`StoreIndex` a search goes through.

A saved index is read with FAISS's ``IO_FLAG_MMAP_IFC`` (the codes stay in the file and pages are
read when a search touches them), an ``ivf-ondisk`` index with its lists in
``<store>.faiss.ivfdata`` (``IO_FLAG_ONDISK_SAME_DIR``).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np

from clefctl.store.format import EmbeddingStore
from clefctl.store.index.kinds import IndexParams, ivf_of


def index_paths(store_path: str | os.PathLike) -> tuple[Path, Path]:
    """``(<store>.faiss, <store>.faiss.json)``."""
    return Path(f"{store_path}.faiss"), Path(f"{store_path}.faiss.json")


def ondisk_path(store_path: str | os.PathLike) -> Path:
    """``<store>.faiss.ivfdata``: the lists of an ``ivf-ondisk`` index."""
    return Path(f"{store_path}.faiss.ivfdata")


def read_saved(store_path, kind: str):
    """The saved FAISS index, memory-mapped (see the module docstring)."""
    import faiss

    faiss_path, _ = index_paths(store_path)
    flags = faiss.IO_FLAG_ONDISK_SAME_DIR if kind == "ivf-ondisk" else faiss.IO_FLAG_MMAP_IFC
    return faiss.read_index(str(faiss_path), flags)


def as_store(store) -> tuple[EmbeddingStore, bool]:
    """``store`` open (an :class:`EmbeddingStore`, or a path opened now) and whether we opened it."""
    if isinstance(store, EmbeddingStore):
        return store, False
    return EmbeddingStore.open(store), True


class StoreIndex:
    """A FAISS inner-product index over a store's rows (cosine: the rows are unit vectors)."""

    def __init__(self, index, kind: str, meta: dict, params: IndexParams | None = None, *, mapped: bool = False):
        self.index = index
        self.kind = kind
        self.meta = meta
        self.params = copy.copy(params or IndexParams())
        self.mapped = mapped
        if self.params.nprobe is None:
            self.params.nprobe = int(meta.get("params", {}).get("nprobe", 16))
        self.on_gpu = False
        self._apply_search_params(index)

    def _apply_search_params(self, index) -> None:
        import faiss

        if self.kind == "hnsw":
            faiss.downcast_index(index).hnsw.efSearch = int(self.params.ef_search)
            return
        ivf = ivf_of(index) if not self.on_gpu else None
        if ivf is not None:
            ivf.nprobe = int(self.params.nprobe)
        elif hasattr(index, "nprobe"):
            index.nprobe = int(self.params.nprobe)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def nbytes(self) -> int:
        """The index's size as saved (bytes)."""
        return int(self.meta.get("bytes", 0))

    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """(scores (Q, k) float32, rows (Q, k) int64); rows are -1 where fewer than k exist."""
        q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32).reshape(-1, self.index.d))
        k = int(max(1, min(k, max(1, self.ntotal))))
        scores, rows = self.index.search(q, k)
        return scores, rows.astype(np.int64)

    def set_nprobe(self, nprobe: int) -> None:
        self.params.nprobe = int(nprobe)
        self._apply_search_params(self.index)


__all__ = ["index_paths", "ondisk_path", "read_saved", "as_store", "StoreIndex"]
