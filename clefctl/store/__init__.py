"""The embedding store: image embeddings of one image set by one model, in one HDF5 file.

* :mod:`clefctl.store.format`: :class:`EmbeddingStore` (the file of docs/store.md: chunked,
  uncompressed float16 or float32 embeddings, ids, paths, subjects, activities, frames, labels,
  face boxes, skipped ids), over :mod:`~clefctl.store.layout` (the HDF5 layout, :class:`Columns`)
  and :mod:`~clefctl.store.textcache` (the text-embedding cache);
* :mod:`clefctl.store._hdf5`: crash recovery, the writer lock, fencing, durable commits;
* :mod:`clefctl.store.embed`: :func:`embed_into_store` (resumable, kill-safe, sharded under
  torchrun and merged by :func:`~clefctl.store.merge.merge_parts`) and :func:`run_embed` (``clefctl embed``);
* :mod:`clefctl.store.index`: the derived FAISS index, chosen for text queries within a memory
  budget (:func:`load_index` / :func:`build_index` / :func:`index_for_query`, ``<store>.faiss`` and
  ``<store>.faiss.json`` beside the file).

Importing this package does not import torch or faiss.

Example::

    >>> from clefctl.model import create
    >>> from clefctl.store import EmbeddingStore, embed_into_store
    >>> m = create("clef-tiny")
    >>> report = embed_into_store(m, bundle, "runs/synthetic-fer.h5")     # doctest: +SKIP
    >>> with EmbeddingStore.open("runs/synthetic-fer.h5", m.fingerprint) as st:  # doctest: +SKIP
    ...     st.count, st.embeddings(slice(0, 4)).shape
"""

from clefctl.store._hdf5 import WriterLock, clear_status_flags, lookup3
from clefctl.store.embed import (STORE_NAME, EmbedOptions, EmbedReport, EmbedResult, embed_into_store,
                                 embed_run_dir, part_path, run_embed, shard_range)
from clefctl.store.format import STORE_SUFFIX, EmbeddingStore, store_filename
from clefctl.store.index import (INDEX_KINDS, ExactIndex, IndexParams, StoreIndex, build_index, default_nlist,
                                 default_nprobe, index_for_query, index_paths, index_status, load_index,
                                 resolve_index_kind)
from clefctl.store.layout import SCHEMA_VERSION, STRING_COLUMNS, Columns
from clefctl.store.merge import merge_parts

__all__ = [
    "SCHEMA_VERSION", "STRING_COLUMNS", "STORE_SUFFIX", "STORE_NAME", "EmbeddingStore", "Columns",
    "WriterLock", "clear_status_flags", "lookup3", "store_filename", "embed_into_store", "EmbedReport",
    "merge_parts", "shard_range", "part_path", "EmbedOptions", "EmbedResult", "run_embed", "embed_run_dir",
    "INDEX_KINDS", "IndexParams", "StoreIndex", "build_index", "load_index", "index_status", "index_paths",
    "resolve_index_kind", "default_nlist", "default_nprobe", "index_for_query", "ExactIndex",
]
