"""The store file: :class:`EmbeddingStore` over one HDF5 file (layout in :mod:`clefctl.store.layout`
and docs/store.md) and the conventional file name.

Commit protocol (details in docs/store.md): the file is written in HDF5 SWMR mode, which keeps
the bytes on disk a consistent HDF5 file at every instant; each chunk's rows are written and
flushed *before* the committed row count (the ``state`` dataset) is written and flushed. Readers
use only rows below the committed count, so they never see a half-written chunk, and after a
``kill -9`` a rerun clears the crashed writer's status flags (what ``h5clear -s`` does) and
continues after the last committed chunk.

Example::

    >>> from clefctl.store import EmbeddingStore
    >>> with EmbeddingStore.open("runs/synthetic-fer.h5", m.fingerprint) as st:  # doctest: +SKIP
    ...     st.count, st.embeddings(slice(0, 4)).shape
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from clefctl.data.landmarks import LANDMARK_COLUMNS
from clefctl.errors import ClefError
from clefctl.paths import atomic_path
from clefctl.store._hdf5 import (WriterLock, fence, first_line, fsync_h5, h5py_module, open_reader,
                                 open_writer_h5, write_error)
from clefctl.store.layout import (DTYPES, LANDMARKS, MEDIA_COLUMNS, STRING_COLUMNS, Columns, check_schema, grow,
                                  normalise, read_rows, read_strings, read_strings_at, write_skeleton, write_strings)
from clefctl.store.provenance import MODEL_ATTR, parse_record
from clefctl.store.textcache import TextCache

log = logging.getLogger("clefctl.store")

CHECKSUM_ROWS = 4096           # rows hashed at each end of the store for the index checksum
STORE_SUFFIX = ".h5"
STORE_NAME = "store.h5"        # the store's file name inside an embed run folder


def store_filename(fingerprint: str, image_set: str) -> str:
    """The conventional file name of the store of ``image_set`` embedded by ``fingerprint``:
    ``<image set>--<arch>-<12 hex of the fingerprint's sha256>.h5`` (one file per pair)."""
    arch = re.sub(r"[^A-Za-z0-9_.+-]+", "-", fingerprint.split("@")[0]).strip("-") or "model"
    digest = hashlib.sha256(fingerprint.encode("utf-8")).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9_.+-]+", "-", image_set).strip("-") or "images"
    return f"{slug}--{arch}-{digest}{STORE_SUFFIX}"


# ----------------------------------------------------------------------------------------------
# The store
# ----------------------------------------------------------------------------------------------


class EmbeddingStore(TextCache):
    """One HDF5 embedding store (schema in docs/store.md). Build with :meth:`create` / :meth:`open`.

    ``mode="r"`` opens an SWMR reader: it sees the rows committed when it opened or last called
    :meth:`refresh`, never a half-written chunk, also while another process appends. ``mode="a"``
    is the single writer (it holds ``<store>.lock``); :meth:`append` commits one chunk.
    Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: Path, h5, mode: str, lock: WriterLock | None):
        self.path = Path(path)
        self._h5 = h5
        self.mode = mode
        self._lock = lock
        a = h5.attrs
        self.fingerprint = str(a["model_fingerprint"])
        self.dim = int(a["dim"])
        self.image_set = str(a["image_set"])
        self.dtype = str(a["dtype"])
        self.task = str(a["task"])
        self.classes = list(json.loads(str(a["classes"])))
        self.created = str(a["created"])
        self.uid = str(a["store_uid"])
        self.schema_version = int(a["clefctl_store"])
        self.text_cache_hits = 0
        self.text_cache_misses = 0
        self.last_text_cache_hit: bool | None = None
        self._ids_cache: list[str] | None = None
        self._handles: dict = {}           # writer: datasets kept open between commits
        self._broken: BaseException | None = None   # writer: the write that failed
        self._state = (0, 0, 0)
        self.refresh()

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike, fingerprint: str, dim: int, image_set: str,
               dtype: str = "float16", *, task: str = "", classes: Sequence[str] = (),
               overwrite: bool = False, extra_attrs: dict | None = None) -> "EmbeddingStore":
        """Create an empty store and return it open for appending (``mode="a"``).

        ``task`` is ``"fer"`` (one class index per row), ``"au"`` (multi-hot AU labels and a
        coded mask over ``classes``) or ``""`` (no labels). An existing file is refused unless
        ``overwrite``. The file is built under a temporary name and renamed into place, so a
        crash during creation never leaves a half-initialised store.
        """
        path = Path(path)
        if dtype not in DTYPES:
            raise ClefError(f"unknown embedding dtype {dtype!r}", hint="use float16 or float32")
        if task not in ("", "au", "fer", "activity"):
            raise ClefError(f"unknown task {task!r}: expected au, fer or none")
        if int(dim) <= 0:
            raise ClefError(f"embedding dimension must be positive, got {dim}")
        lock = WriterLock(path).acquire()
        try:
            if path.exists() and not overwrite:
                raise ClefError("store already exists", path=path,
                                hint="open it to append, choose another path, or overwrite it")
            with atomic_path(path) as tmp:
                write_skeleton(tmp, fingerprint, int(dim), image_set, dtype,
                                task if task != "activity" else "", list(classes), extra_attrs or {},
                                shown_as=path)
            return cls._open_writer(path, lock)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def open(cls, path: str | os.PathLike, fingerprint: str | None = None,
             mode: str = "r") -> "EmbeddingStore":
        """Open an existing store for reading (``"r"``) or appending (``"a"``).

        With ``fingerprint`` set, a store embedded by another model is refused with a
        :class:`ClefError` naming both fingerprints. Appending recovers a store whose writer
        was killed (its uncommitted tail is ignored and later overwritten).
        """
        path = Path(path)
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', not {mode!r}")
        if not path.is_file():
            raise ClefError("embedding store not found", path=path,
                            hint="create it with `clefctl embed`")
        if mode == "a":
            lock = WriterLock(path).acquire()
            try:
                store = cls._open_writer(path, lock)
            except BaseException:
                lock.release()
                raise
        else:
            h5 = open_reader(path)
            check_schema(h5, path)
            store = cls(path, h5, "r", None)
        if fingerprint is not None and fingerprint != store.fingerprint:
            store.close()
            raise ClefError(f"store was embedded with model {store.fingerprint}, but the model "
                            f"given is {fingerprint}", path=path,
                            hint="embed the images again with this model (a new store file), or "
                                 "load the model that made this store")
        return store

    @classmethod
    def _open_writer(cls, path: Path, lock: WriterLock) -> "EmbeddingStore":
        return cls(path, open_writer_h5(path, check_schema, log), "a", lock)

    # -- state ----------------------------------------------------------------------------------

    def refresh(self) -> "EmbeddingStore":
        """Reader: see the rows committed since opening. (A writer is always current.)"""
        if self.mode == "r":
            st = self._h5["state"]
            st.refresh()
            state = tuple(int(v) for v in st[:3])
            if state != self._state:
                for ds in self._datasets():
                    ds.refresh()
                self._ids_cache = None
            self._state = state
        else:
            self._state = tuple(int(v) for v in self._h5["state"][:3])
        return self

    def _datasets(self):
        h5py = h5py_module()
        out = []

        def visit(_name, obj):
            if isinstance(obj, h5py.Dataset):
                out.append(obj)
        self._h5["images"].visititems(visit)
        self._h5["skipped"].visititems(visit)
        return out

    @property
    def count(self) -> int:
        """Committed image rows."""
        return self._state[0]

    def __len__(self) -> int:
        return self.count

    @property
    def skipped_count(self) -> int:
        return self._state[1]

    @property
    def complete(self) -> bool:
        """True once the embedding job that filled the store consumed all of its inputs."""
        return bool(self._state[2])

    @property
    def consumed(self) -> int:
        """Inputs processed so far: embedded rows plus skipped (unreadable) images."""
        return self._state[0] + self._state[1]

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def attrs(self) -> dict:
        return {k: (v.item() if hasattr(v, "item") else v) for k, v in self._h5.attrs.items()}

    @property
    def model_record(self) -> dict | None:
        """What loads the model that made the store (:mod:`clefctl.store.provenance`); None for
        stores written before it was recorded."""
        return parse_record(self._h5.attrs.get(MODEL_ATTR))

    def info(self) -> dict:
        """A JSON-able summary."""
        return {"path": str(self.path), "fingerprint": self.fingerprint, "dim": self.dim,
                "image_set": self.image_set, "dtype": self.dtype, "task": self.task,
                "classes": self.classes, "rows": self.count, "skipped": self.skipped_count,
                "complete": self.complete, "created": self.created, "schema": self.schema_version,
                "model": self.model_record}

    # -- reading --------------------------------------------------------------------------------

    def _rows(self, rows) -> np.ndarray:
        n = self.count
        if rows is None:
            return np.arange(n)
        if isinstance(rows, slice):
            return np.arange(n)[rows]
        arr = np.asarray(rows, dtype=np.int64).reshape(-1)
        if arr.size and (arr.min() < -n or arr.max() >= n):
            raise IndexError(f"row index out of range for a store of {n} rows")
        return np.where(arr < 0, arr + n, arr)

    def embeddings(self, rows=None, dtype=np.float32) -> np.ndarray:
        """Committed embeddings (all, a slice, or rows in any order) as ``dtype`` (float32)."""
        idx = self._rows(rows)
        ds = self._h5["images/embedding"]
        if rows is None or isinstance(rows, slice) and (rows.step in (None, 1)):
            if idx.size == 0:
                return np.zeros((0, self.dim), dtype=dtype)
            a, b = int(idx[0]), int(idx[-1]) + 1
            out = np.empty((b - a, self.dim), dtype=dtype)
            block = 65536
            buf = np.empty((min(block, b - a), self.dim), dtype=ds.dtype)
            for s in range(a, b, block):  # block-wise: no full-size temporary in the stored dtype
                k = min(block, b - s)
                ds.read_direct(buf, np.s_[s:s + k], np.s_[0:k])
                out[s - a:s - a + k] = buf[:k]
            return out
        return np.asarray(read_rows(ds, idx), dtype=dtype)

    def iter_embeddings(self, block_rows: int = 65536, raw: bool = False) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, block)`` over the committed rows; ``raw=True`` keeps the stored dtype
        and reuses one buffer (copy it if you keep it)."""
        ds = self._h5["images/embedding"]
        n = self.count
        buf = np.empty((min(block_rows, max(n, 1)), self.dim), dtype=ds.dtype)
        for start in range(0, n, block_rows):
            k = min(block_rows, n - start)
            ds.read_direct(buf, np.s_[start:start + k], np.s_[0:k])
            yield start, (buf[:k] if raw else buf[:k].astype(np.float32))

    @property
    def ids(self) -> list[str]:
        """Committed row ids, in row order."""
        if self._ids_cache is None or len(self._ids_cache) != self.count:
            self._ids_cache = read_strings(self._h5["images/id"], 0, self.count)
        return self._ids_cache

    @property
    def paths(self) -> list[str]:
        """Committed rows' image paths, resolved as :meth:`resolve_path` does ("" = none)."""
        return [self.resolve_path(p) for p in read_strings(self._h5["images/path"], 0, self.count)]

    def column(self, name: str, rows=None) -> list[str]:
        """A string column (id, path, subject, activity, split) for ``rows`` (paths resolved
        as :meth:`resolve_path` does)."""
        if name not in STRING_COLUMNS:
            raise KeyError(name)
        idx = self._rows(rows)
        values = read_strings_at(self._h5[f"images/{name}"], idx)
        return [self.resolve_path(v) for v in values] if name == "path" else values

    def resolve_path(self, stored: str) -> str:
        """The image file of a stored path. Stores written before paths were made absolute
        can hold paths relative to the folder ``embed`` ran in: such a path is used
        as it is when it exists from the current folder, else it is tried against the store's
        folder and each folder above it (where ``embed`` usually ran: the default workspace
        ``./clef_runs`` lies below it). A path found nowhere is returned unchanged."""
        if not stored or os.path.isabs(stored) or os.path.exists(stored):
            return stored
        for base in self._path_bases:
            candidate = os.path.join(base, stored)
            if os.path.exists(candidate):
                return candidate
        return stored

    @functools.cached_property
    def _path_bases(self) -> list[str]:
        folder = Path(os.path.abspath(self.path)).parent
        return [str(folder)] + [str(p) for p in folder.parents]

    def row_of(self, sample_id: str) -> int:
        """The row of ``sample_id`` (ClefError when absent)."""
        try:
            return self.ids.index(sample_id)
        except ValueError:
            raise ClefError(f"no image with id {sample_id!r} in this store ({self.count} rows)",
                            path=self.path) from None

    @property
    def skipped_ids(self) -> list[str]:
        """Ids of the images that could not be read (embedding skipped them)."""
        return read_strings(self._h5["skipped/id"], 0, self.skipped_count)

    def labels(self, rows=None) -> dict[str, np.ndarray]:
        """``{"label": (n,) int32}`` and, for AU stores, ``"aus"``/``"au_mask"`` (n, C) uint8."""
        idx = self._rows(rows)
        g = self._h5["images"]
        out = {"label": read_rows(g["label"], idx)}
        if "aus" in g:
            out["aus"] = read_rows(g["aus"], idx)
            out["au_mask"] = read_rows(g["au_mask"], idx)
        return out

    def label_texts(self, rows=None) -> list[str]:
        """A readable label per row: the FER class name, or the coded-present AU ids."""
        lab = self.labels(rows)
        out = []
        if "aus" in lab:
            for a, m in zip(lab["aus"], lab["au_mask"]):
                out.append(" ".join(c for c, x, y in zip(self.classes, a, m) if x and y))
        else:
            for v in lab["label"]:
                v = int(v)
                out.append("" if v < 0 else (self.classes[v] if v < len(self.classes) else str(v)))
        return out

    def metadata(self, rows=None):
        """A pandas DataFrame, one row per store row: row, id, path (resolved as
        :meth:`resolve_path` does), subject, activity, frame, split, label (+ label_name) or one
        column per AU (1/0, NaN when not coded), box_x/y/w/h, and the face columns of photos and
        videos: source (the file the row came from: its path), timestamp (seconds, NaN = none),
        face_id (-1 = none) and the landmarks lmk_x_0..4 / lmk_y_0..4 (source pixels, NaN = none;
        stores older than these columns read as none)."""
        import pandas as pd

        idx = self._rows(rows)
        g = self._h5["images"]
        data: dict[str, object] = {"row": idx}
        for name in STRING_COLUMNS:
            data[name] = read_strings_at(g[name], idx)
        data["path"] = [self.resolve_path(v) for v in data["path"]]
        frame = read_rows(g["frame"], idx)
        data["frame"] = pd.array([None if f < 0 else int(f) for f in frame], dtype="Int64")
        lab = self.labels(idx)
        if "aus" in lab:
            for j, c in enumerate(self.classes):
                col = lab["aus"][:, j].astype(np.float32)
                col[lab["au_mask"][:, j] == 0] = np.nan
                data[c] = col
        else:
            data["label"] = lab["label"]
            if self.classes:
                data["label_name"] = [self.classes[v] if 0 <= v < len(self.classes) else ""
                                      for v in lab["label"]]
        box = read_rows(g["box"], idx)
        for j, name in enumerate(("box_x", "box_y", "box_w", "box_h")):
            data[name] = box[:, j]
        data["source"] = data["path"]
        for name, (kind, none) in MEDIA_COLUMNS.items():
            data[name] = read_rows(g[name], idx) if name in g else np.full(idx.size, none, dtype=kind)
        lmk = read_rows(g[LANDMARKS], idx) if LANDMARKS in g else np.full((idx.size, 10), np.nan, np.float32)
        for j, name in enumerate(LANDMARK_COLUMNS):
            data[name] = lmk[:, j]
        return pd.DataFrame(data)

    def checksum(self) -> str:
        """Identity of the committed embeddings for derived files (the FAISS index): sha256 of
        the store uid, the row count and the first and last 4096 rows' bytes."""
        h = hashlib.sha256()
        n = self.count
        h.update(f"{self.uid}:{n}:{self.dim}:{self.dtype}".encode())
        ds = self._h5["images/embedding"]
        if n:
            h.update(np.ascontiguousarray(ds[0:min(n, CHECKSUM_ROWS)]).tobytes())
            h.update(np.ascontiguousarray(ds[max(0, n - CHECKSUM_ROWS):n]).tobytes())
        return h.hexdigest()

    # -- writing --------------------------------------------------------------------------------

    def _need_writer(self) -> None:
        if self.mode != "a":
            raise ClefError("store is open read-only", path=self.path,
                            hint="open it with mode='a' to append")
        if self._broken is not None or self._h5 is None:
            raise ClefError("store is closed for writing" + (" after a failed write"
                                                             if self._broken is not None else ""),
                            path=self.path, hint="open it again to continue")

    def _ds(self, name: str):
        """A dataset the writer keeps open until :meth:`close`. Datasets opened per commit and
        dropped would be closed by the garbage collector, which writes their cached chunks and
        swallows a failure of that write (h5py cannot raise from ``__dealloc__``): rows lost
        silently. Kept open, their chunks are written by the checked ``flush()`` of the commit."""
        ds = self._handles.get(name)
        if ds is None:
            ds = self._handles[name] = self._h5[name]
        return ds

    @contextlib.contextmanager
    def _writing(self):
        """Run writes of one commit; the first HDF5 or OS write error fences the file (see
        :func:`~clefctl.store._hdf5.fence`), closes the store and raises a :class:`ClefError`
        (for a full disk: "the disk is full", and that rerunning resumes). Committed rows stay
        committed."""
        self._need_writer()
        try:
            yield
        except (OSError, RuntimeError) as exc:
            self._broken = exc
            self._abandon()
            raise write_error(exc, self.path, self.count) from exc

    def append(self, embeddings, samples: Sequence, skipped_ids: Sequence[str] = ()) -> int:
        """Commit one chunk: ``embeddings`` (k, D) for ``samples`` (k :class:`Sample` records,
        metadata taken from them) and the ids of images skipped as unreadable. The rows are
        L2-normalised, written, flushed, and only then counted. Returns the committed count."""
        emb = normalise(np.asarray(embeddings))
        if emb.ndim != 2 or emb.shape[1] != self.dim or emb.shape[0] != len(samples):
            raise ClefError(f"append got embeddings of shape {tuple(emb.shape)} for {len(samples)} "
                            f"samples; the store holds {self.dim}-d rows")
        n_cls = self.n_classes if self.task == "au" else 0
        return self.append_columns(Columns.from_samples(emb, samples, n_cls), skipped_ids)

    def append_columns(self, cols: Columns, skipped_ids: Sequence[str] = ()) -> int:
        """Commit one chunk given as :class:`Columns` (embeddings are stored as given, cast to
        the store dtype; :meth:`append` normalises first).

        Every write, the flush and the fsync of the rows are checked before the committed count
        is written (and flushed and fsynced in turn); a failure raises :class:`ClefError` and
        leaves the count at the previous commit (see :meth:`_writing`)."""
        self._need_writer()
        n0, s0, _ = self._state
        k = len(cols)
        if k and cols.embedding.shape[1] != self.dim:
            raise ClefError(f"rows have dimension {cols.embedding.shape[1]}, the store {self.dim}")
        skipped = [str(s) for s in skipped_ids]
        with self._writing():
            if k:
                end = n0 + k
                columns = [("embedding", cols.embedding.astype(self.dtype, copy=False)),
                           ("frame", cols.frame), ("label", cols.label), ("box", cols.box)]
                columns += [(name, cols.media(name)) for name in MEDIA_COLUMNS if name in self._h5["images"]]
                if LANDMARKS in self._h5["images"]:
                    columns.append((LANDMARKS, cols.landmark_rows()))
                if "aus" in self._h5["images"]:
                    n_cls = self._ds("images/aus").shape[1]
                    for name, arr in (("aus", cols.aus), ("au_mask", cols.au_mask)):
                        columns.append((name, arr if arr is not None else np.zeros((k, n_cls), np.uint8)))
                for name, arr in columns:
                    ds = self._ds(f"images/{name}")
                    grow(ds, end)
                    ds[n0:end] = arr
                for name in STRING_COLUMNS:
                    self._write_strings(f"images/{name}", n0, cols.strings[name])
            if skipped:
                self._write_strings("skipped/id", s0, skipped)
            self._h5.flush()                          # 1. the chunk's rows are on disk ...
            fsync_h5(self._h5)
            self._write_state(n0 + k, s0 + len(skipped), self._state[2])  # 2. ... before counted
        self._ids_cache = None
        return self.count

    def _write_strings(self, prefix: str, row0: int, values: Sequence[str]) -> None:
        write_strings(self._ds(f"{prefix}/utf8"), self._ds(f"{prefix}/end"), row0, values)

    def _write_state(self, rows: int, skipped: int, complete: int) -> None:
        """Write, flush and fsync ``/state``; only then does this object count the new state."""
        self._ds("state")[0:3] = np.array([rows, skipped, complete], dtype=np.int64)
        self._h5.flush()
        fsync_h5(self._h5)
        self._state = (rows, skipped, complete)

    def mark_complete(self, complete: bool = True) -> None:
        """Record (written, flushed and fsynced) that every input of the embedding job has been
        consumed."""
        with self._writing():
            self._write_state(self._state[0], self._state[1], int(bool(complete)))

    def _abandon(self) -> None:
        """After a failed write: fence and close the file, release the writer lock. (The open
        datasets are dropped only after the fence: dropping them closes them, which writes.)"""
        h5, self._h5 = self._h5, None
        try:
            if h5 is not None:
                fence(h5)
        finally:
            self._handles.clear()
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    # -- closing --------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the file (a writer also releases its lock). A writer whose last close-time
        write fails is fenced (:func:`~clefctl.store._hdf5.fence`) instead: every commit was
        flushed already, so only the "open for writing" flags stay set, which the next open
        clears."""
        if self._h5 is None:
            return
        h5 = self._h5
        if self.mode != "a":
            self._h5 = None
            h5.close()
            return
        try:
            h5.close()                  # every commit was flushed: nothing is left to write
            self._h5 = None
        except (OSError, RuntimeError) as exc:
            self._broken = exc
            log.warning("closing the store %s failed (%s); its committed rows are kept and the "
                        "next open repairs the file", self.path, first_line(exc))
        finally:
            self._abandon()

    @property
    def closed(self) -> bool:
        return self._h5 is None

    def __enter__(self) -> "EmbeddingStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # pragma: no cover - best effort
        # close() never retries a failed write (that is what made HDF5 crash): a broken writer
        # is fenced and closed already, a healthy one closes normally.
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        return (f"EmbeddingStore({str(self.path)!r}, rows={self.count}, dim={self.dim}, "
                f"model={self.fingerprint!r}, mode={self.mode!r})")
