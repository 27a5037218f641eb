"""Joining the part files that ranks write under torchrun into one store (:func:`merge_parts`):
concatenation in the order given, written under a temporary name and renamed into place."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from clefctl.errors import ClefError
from clefctl.paths import atomic_path
from clefctl.store._hdf5 import WriterLock
from clefctl.store.format import EmbeddingStore
from clefctl.store.layout import Columns, write_skeleton


def merge_parts(part_paths: Sequence[str | os.PathLike], out_path: str | os.PathLike, *,
                base: str | os.PathLike | None = None, block_rows: int = 65536) -> Path:
    """Concatenate complete part stores, in the order given, into one complete store.

    ``base`` (optional, may be incomplete) is an existing store whose rows come first; it may be
    ``out_path`` itself. The parts must share model fingerprint, dimension, dtype, task and
    classes. The merged file is written under a temporary name and renamed over ``out_path``,
    so a crash leaves the old file and the parts untouched.
    """
    out_path = Path(out_path)
    sources = ([Path(base)] if base is not None else []) + [Path(p) for p in part_paths]
    if not sources:
        raise ClefError("no part files to merge")
    metas, record = [], None
    for i, p in enumerate(sources):
        with EmbeddingStore.open(p) as st:
            if not st.complete and not (base is not None and i == 0):
                raise ClefError(f"part file is incomplete ({st.consumed} inputs consumed)", path=p,
                                hint="rerun the embedding to finish it before merging")
            metas.append((st.fingerprint, st.dim, st.dtype, st.task, tuple(st.classes), st.image_set))
            record = record if i else st.model_record
    if len(set(m[:5] for m in metas)) != 1:
        raise ClefError("part files come from different models or label sets; cannot merge: "
                        + "; ".join(f"{p.name}: {m[0]} {m[1]}-d {m[2]}" for p, m in zip(sources, metas)))
    fingerprint, dim, dtype, task, classes, image_set = metas[0]
    lock = WriterLock(out_path)
    own_lock = lock.try_acquire()
    try:
        with atomic_path(out_path) as tmp:
            write_skeleton(tmp, fingerprint, dim, image_set, dtype, task, list(classes),
                           {"model": record} if record else {}, shown_as=out_path)
            out = EmbeddingStore._open_writer(tmp, WriterLock(tmp).acquire())
            try:
                for p in sources:
                    with EmbeddingStore.open(p) as st:
                        _copy_rows(st, out, block_rows)
                out.mark_complete()
            finally:
                out.close()
            Path(str(tmp) + ".lock").unlink(missing_ok=True)
    finally:
        if own_lock:
            lock.release()
    return out_path


def _copy_rows(src: EmbeddingStore, dst: EmbeddingStore, block_rows: int) -> None:
    n = src.count
    skipped = src.skipped_ids
    if n == 0:
        dst.append_columns(Columns.empty(src.dim, dst.dtype), skipped)
        return
    images = src._h5["images"]
    for start in range(0, n, block_rows):
        stop = min(n, start + block_rows)
        dst.append_columns(Columns.read(images, start, stop), skipped if stop == n else ())
