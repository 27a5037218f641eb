"""The FAISS index of a store: derived data beside it (``<store>.faiss``, ``<store>.faiss.json``,
and for on-disk lists ``<store>.faiss.ivfdata``), chosen for text queries and a memory budget,
built at the end of ``embed`` or by ``clefctl index build`` (never silently by a query), read
memory-mapped, moved to the GPUs where GPU FAISS sees them. Rows are unit vectors, so inner
product = cosine. docs/store.md has the families, the choice and the regimes.

* :mod:`~clefctl.store.index.kinds`: the families, their memory, ``auto`` (:func:`resolve_index_kind`);
* :mod:`~clefctl.store.index.clustering`: spherical k-means and row assignment (bf16 products);
* :mod:`~clefctl.store.index.tuning`: text-like queries and the ``nprobe`` that reaches the recall target;
* :mod:`~clefctl.store.index.build`: plan, memory check, build with a progress bar, save;
* :mod:`~clefctl.store.index.saved`: the saved files, reading them memory-mapped, :class:`StoreIndex`;
* :mod:`~clefctl.store.index.load`: freshness, what a query searches;
* :mod:`~clefctl.store.index.gpu`: GPU FAISS.

Example::

    >>> from clefctl.store import load_index
    >>> idx = load_index("runs/rafdb.h5")                     # doctest: +SKIP
    >>> scores, rows = idx.search(text_vectors, k=10)         # doctest: +SKIP
"""

from clefctl.store.index.build import BuildPlan, available_memory, build_index, plan_build
from clefctl.store.index.kinds import (AUTO_PREFERENCE, FLAT_LIMIT, INDEX_KINDS, KINDS, ONDISK_LIMIT, IndexParams,
                                       default_nlist, default_nprobe, estimate_bytes, float16_bytes, parse_size,
                                       resolve_index_kind)
from clefctl.store.index.load import EXACT_QUERY_LIMIT, ExactIndex, index_for_query, index_status, load_index
from clefctl.store.index.saved import StoreIndex, index_paths, ondisk_path, read_saved

__all__ = ["BuildPlan", "available_memory", "build_index", "index_paths", "ondisk_path", "plan_build",
           "AUTO_PREFERENCE", "FLAT_LIMIT", "INDEX_KINDS", "KINDS", "ONDISK_LIMIT", "IndexParams", "default_nlist",
           "default_nprobe", "estimate_bytes", "float16_bytes", "parse_size", "resolve_index_kind",
           "EXACT_QUERY_LIMIT", "ExactIndex", "StoreIndex", "index_for_query", "index_status", "load_index",
           "read_saved"]
