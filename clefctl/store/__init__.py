"""The embedding store: image embeddings of one image set by one model, in one HDF5 file.

* :mod:`clefctl.store.format`: :class:`EmbeddingStore` (the file of docs/store.md: chunked,
  uncompressed float16 or float32 embeddings, ids, paths, subjects, activities, frames, labels,
  face boxes, skipped ids), over :mod:`~clefctl.store.layout` (the HDF5 layout, :class:`Columns`)
  and :mod:`~clefctl.store.textcache` (the text-embedding cache);
* :mod:`clefctl.store._hdf5`: crash recovery, the writer lock, fencing, durable commits;
* :mod:`clefctl.store.provenance`: the model a store records (what loads the model that made it);
* :mod:`clefctl.store.merge`: :func:`merge_parts` (part stores joined into one);
* :mod:`clefctl.store.index`: the derived FAISS index, chosen for text queries within a memory
  budget (:func:`load_index` / :func:`build_index` / :func:`index_for_query`, ``<store>.faiss`` and
  ``<store>.faiss.json`` beside the file).

Storage only: filling a store with a model's embeddings is the embed job (:mod:`clefctl.embed`), which
imports this package, never the other way round. Importing this package does not import torch or faiss.

Example::

    >>> from clefctl.store import EmbeddingStore
    >>> with EmbeddingStore.open("runs/synthetic-fer.h5", m.fingerprint) as st:  # doctest: +SKIP
    ...     st.count, st.embeddings(slice(0, 4)).shape
"""

from clefctl.store._hdf5 import WriterLock, clear_status_flags, lookup3
from clefctl.store.format import STORE_NAME, STORE_SUFFIX, EmbeddingStore, store_filename
from clefctl.store.index import (INDEX_KINDS, ExactIndex, IndexParams, StoreIndex, build_index, default_nlist,
                                 default_nprobe, index_for_query, index_paths, index_status, load_index,
                                 resolve_index_kind)
from clefctl.store.layout import SCHEMA_VERSION, STRING_COLUMNS, Columns
from clefctl.store.merge import merge_parts

__all__ = [
    "SCHEMA_VERSION", "STRING_COLUMNS", "STORE_SUFFIX", "STORE_NAME", "EmbeddingStore", "Columns",
    "WriterLock", "clear_status_flags", "lookup3", "store_filename", "merge_parts",
    "INDEX_KINDS", "IndexParams", "StoreIndex", "build_index", "load_index", "index_status", "index_paths",
    "resolve_index_kind", "default_nlist", "default_nprobe", "index_for_query", "ExactIndex",
]
