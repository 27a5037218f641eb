"""The embedding store: image embeddings of one image set by one model, in one HDF5 file.

Owns :class:`EmbeddingStore` (the file format of docs/store.md: chunked, uncompressed float16 or
float32 embeddings, ids, paths, subjects, activities, frames, labels, face boxes, skipped ids and a
text-embedding cache), :func:`embed_into_store` (resumable, kill-safe image embedding, sharded under
torchrun and merged by :func:`merge_parts`), :func:`fast_image_encoder` (the inference fast path:
a bfloat16 copy of the image tower on CPUs with native bf16) and the derived FAISS index
(:func:`load_index` / :func:`build_index`, stored beside the file as ``<store>.faiss`` and
``<store>.faiss.json``).

Commit protocol (details in docs/store.md): the file is written in HDF5 SWMR mode, which keeps
the bytes on disk a consistent HDF5 file at every instant; each chunk's rows are written and
flushed *before* the committed row count (the ``state`` dataset) is written and flushed. Readers
use only rows below the committed count, so they never see a half-written chunk, and after a
``kill -9`` a rerun clears the crashed writer's status flags (what ``h5clear -s`` does) and
continues after the last committed chunk.

Example::

    >>> from clefctl.model import create
    >>> from clefctl.store import EmbeddingStore, embed_into_store
    >>> m = create("clef-tiny")
    >>> report = embed_into_store(m, bundle, "runs/synthetic-fer.h5")     # doctest: +SKIP
    >>> with EmbeddingStore.open("runs/synthetic-fer.h5", m.fingerprint) as st:  # doctest: +SKIP
    ...     st.count, st.embeddings(slice(0, 4)).shape
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import errno
import functools
import hashlib
import json
import logging
import math
import os
import re
import shutil
import struct
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from clefctl.errors import ClefError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
STRING_COLUMNS = ("id", "path", "subject", "activity", "split")
DTYPES = ("float16", "float32")
CHUNK_BYTES = 1 << 20          # target size of one embedding chunk (HDF5 reads whole chunks)
META_CHUNK_ROWS = 4096         # chunk rows of the small per-row columns
BLOB_CHUNK = 1 << 16           # chunk bytes of the UTF-8 string blobs
FLAT_LIMIT = 100_000           # index="auto": exact search below this many vectors, IVF above
CHECKSUM_ROWS = 4096           # rows hashed at each end of the store for the index checksum
STORE_SUFFIX = ".h5"
TEXT_CACHE_ROOM = 16 << 20     # free disk space the (non-SWMR) text-cache write needs beyond its data


# ----------------------------------------------------------------------------------------------
# Crash recovery and the single-writer lock
# ----------------------------------------------------------------------------------------------

_M32 = 0xFFFFFFFF


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M32


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 ``hashlittle``: the checksum HDF5 puts on its metadata."""
    length = len(data)
    a = b = c = (0xDEADBEEF + length + initval) & _M32
    i = 0
    while length > 12:
        x, y, z = struct.unpack_from("<III", data, i)
        a, b, c = (a + x) & _M32, (b + y) & _M32, (c + z) & _M32
        a = (a - c) & _M32; a ^= _rot(c, 4); c = (c + b) & _M32      # noqa: E702 - the mix() steps
        b = (b - a) & _M32; b ^= _rot(a, 6); a = (a + c) & _M32      # noqa: E702
        c = (c - b) & _M32; c ^= _rot(b, 8); b = (b + a) & _M32      # noqa: E702
        a = (a - c) & _M32; a ^= _rot(c, 16); c = (c + b) & _M32     # noqa: E702
        b = (b - a) & _M32; b ^= _rot(a, 19); a = (a + c) & _M32     # noqa: E702
        c = (c - b) & _M32; c ^= _rot(b, 4); b = (b + a) & _M32      # noqa: E702
        length -= 12
        i += 12
    if length == 0:
        return c
    x, y, z = struct.unpack("<III", data[i:] + b"\0" * (12 - length))
    a, b, c = (a + x) & _M32, (b + y) & _M32, (c + z) & _M32
    c ^= b; c = (c - _rot(b, 14)) & _M32                             # noqa: E702 - final()
    a ^= c; a = (a - _rot(c, 11)) & _M32                             # noqa: E702
    b ^= a; b = (b - _rot(a, 25)) & _M32                             # noqa: E702
    c ^= b; c = (c - _rot(b, 16)) & _M32                             # noqa: E702
    a ^= c; a = (a - _rot(c, 4)) & _M32                              # noqa: E702
    b ^= a; b = (b - _rot(a, 14)) & _M32                             # noqa: E702
    c ^= b; c = (c - _rot(b, 24)) & _M32                             # noqa: E702
    return c


_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def clear_status_flags(path: str | os.PathLike) -> bool:
    """Repair the superblock left by a writer that died (``h5clear -s --increment=0``).

    An HDF5 file written with the version-3 superblock records "open for (SWMR) writing" in
    its status flags; after a ``kill -9`` the flags stay set and HDF5 refuses to open the file
    for writing. This clears them and raises the stored end-of-file address to the real file
    size (space the dead writer allocated is then never handed out twice), recomputing the
    superblock checksum. Only call it when no process is writing the file (the store's writer
    lock guarantees that). Returns True when the file was changed.
    """
    with open(path, "r+b") as f:
        head = bytearray(f.read(48))
        if len(head) < 48 or bytes(head[:8]) != _SIGNATURE or head[8] not in (2, 3):
            raise ClefError("not an HDF5 file with a version 2/3 superblock; cannot clear its "
                            "writer flags", path=path)
        if head[9] != 8 or head[10] != 8:
            raise ClefError("unexpected HDF5 superblock layout (offset size != 8)", path=path)
        stored = struct.unpack_from("<I", head, 44)[0]
        if stored != lookup3(bytes(head[:44])):
            raise ClefError("the HDF5 superblock checksum does not match: the file is damaged",
                            path=path, hint="delete it and embed again")
        size = os.fstat(f.fileno()).st_size
        eof = struct.unpack_from("<Q", head, 28)[0]
        if head[11] == 0 and eof >= size:
            return False
        head[11] = 0
        struct.pack_into("<Q", head, 28, max(eof, size))
        struct.pack_into("<I", head, 44, lookup3(bytes(head[:44])))
        f.seek(0)
        f.write(head)
        f.flush()
        os.fsync(f.fileno())
    return True


class WriterLock:
    """An exclusive advisory lock on ``<store>.lock`` held by the one process writing a store.

    Released by the kernel when the process dies, so a crashed writer never blocks a rerun.
    ``acquire(wait=False)`` raises :class:`ClefError` naming the holder when busy.
    """

    def __init__(self, store_path: str | os.PathLike):
        self.path = Path(str(store_path) + ".lock")
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX: no advisory locks; single writer assumed
            self._fd = -1
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {os.uname().nodename if hasattr(os, 'uname') else ''}\n".encode())
        self._fd = fd
        return True

    def acquire(self) -> "WriterLock":
        if not self.try_acquire():
            try:
                holder = self.path.read_text().split()[0]
            except (OSError, IndexError):
                holder = "?"
            raise ClefError(f"another process (pid {holder}) is writing this store",
                            path=str(self.path)[:-5],
                            hint="wait for it to finish, or stop it; a crashed writer frees the lock")
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        if self._fd >= 0:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "WriterLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _is_flag_error(exc: Exception) -> bool:
    """HDF5 refused the file because its superblock says a writer has it open (a live writer
    that has not switched to SWMR yet, or a dead one)."""
    text = str(exc)
    return ("already open for write" in text or "consistency flags" in text
            or "not already open for SWMR writing" in text)


def _is_lock_error(exc: Exception) -> bool:
    return "unable to lock file" in str(exc)


# ----------------------------------------------------------------------------------------------
# Failed writes (a full disk, I/O errors)
# ----------------------------------------------------------------------------------------------

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _fence(h5) -> None:
    """Stop every further write of a failed HDF5 writer from reaching its file, then close it.

    After a failed write HDF5 keeps the unwritten chunks and metadata dirty and retries them
    when the objects or the file are closed; those retries fail again inside h5py's
    ``__dealloc__`` (where the error is swallowed) and the library then crashes (a segfault
    at exit). Pointing the file's descriptor at the null device first makes the retries
    succeed without touching the file, which therefore stays exactly as a process killed at
    the failure would have left it: a consistent SWMR file whose ``/state`` names the last
    commit, recovered by the next open like after a ``kill -9``."""
    try:
        fd = h5.id.get_vfd_handle()
    except Exception:  # noqa: BLE001 - a closed or non-POSIX file: nothing to fence
        fd = None
    if isinstance(fd, int) and fd > 2:
        null = os.open(os.devnull, os.O_RDWR)
        try:
            os.dup2(null, fd)
        finally:
            os.close(null)
    with contextlib.suppress(Exception):
        h5.close()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _error_number(exc: BaseException) -> int | None:
    """The errno of an OSError, or the one HDF5 writes into its message ("errno = 28")."""
    if isinstance(getattr(exc, "errno", None), int):
        return exc.errno
    m = re.search(r"errno = (\d+)", str(exc))
    return int(m.group(1)) if m else None


def _write_error(exc: BaseException, path, committed: int) -> ClefError:
    """The :class:`ClefError` for a failed store write (the disk is full, or another error)."""
    code = _error_number(exc)
    again = "run the same command again: it resumes after the last committed chunk"
    kept = (f"the {committed} rows committed before are kept" if committed
            else "no rows were committed yet")
    if code in _DISK_FULL or "No space left on device" in str(exc):
        return ClefError(f"the disk is full: writing the embedding store failed; {kept}",
                         path=path, hint=f"free some space, then {again}")
    reason = os.strerror(code) if code else _first_line(exc)
    return ClefError(f"writing the embedding store failed ({reason}); {kept}", path=path,
                     hint=f"fix the cause, then {again}")


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------


def _h5py():
    import h5py

    return h5py


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _chunk_rows(dim: int, itemsize: int) -> int:
    return int(min(8192, max(64, CHUNK_BYTES // max(1, dim * itemsize))))


def store_filename(fingerprint: str, image_set: str) -> str:
    """The conventional file name of the store of ``image_set`` embedded by ``fingerprint``:
    ``<image set>--<arch>-<12 hex of the fingerprint's sha256>.h5`` (one file per pair)."""
    arch = re.sub(r"[^A-Za-z0-9_.+-]+", "-", fingerprint.split("@")[0]).strip("-") or "model"
    digest = hashlib.sha256(fingerprint.encode("utf-8")).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9_.+-]+", "-", image_set).strip("-") or "images"
    return f"{slug}--{arch}-{digest}{STORE_SUFFIX}"


def _normalise(emb: np.ndarray) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float32)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    if emb.size and (not np.all(np.isfinite(norms)) or np.any(norms == 0)):
        raise ClefError("embeddings to store contain zero, NaN or infinite rows",
                        hint="the model produced invalid outputs; check the weights")
    return emb / np.maximum(norms, 1e-12)


def _grow(ds, rows: int) -> None:
    if ds.shape[0] < rows:
        ds.resize(rows, axis=0)


def _text_key(prompt_hash: str, text_fingerprint: str, texts: Sequence[str]) -> str:
    payload = json.dumps([prompt_hash, text_fingerprint, list(texts)], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


@dataclass
class Columns:
    """One block of store rows as arrays (what :meth:`EmbeddingStore.append_columns` writes).

    :meth:`from_samples` stores image paths made absolute (against the current folder), so that
    the store can be read from any folder."""

    embedding: np.ndarray                       # (k, D), the store's dtype or float32
    strings: dict[str, list[str]]               # STRING_COLUMNS -> k strings
    frame: np.ndarray                           # (k,) int64, -1 = none
    label: np.ndarray                           # (k,) int32, -1 = none
    box: np.ndarray                             # (k, 4) int32, -1 = none
    aus: np.ndarray | None = None               # (k, C) uint8
    au_mask: np.ndarray | None = None           # (k, C) uint8

    def __len__(self) -> int:
        return int(self.embedding.shape[0])

    @classmethod
    def from_samples(cls, embedding: np.ndarray, samples: Sequence, n_classes: int) -> "Columns":
        k = len(samples)
        strings = {
            "id": [str(s.id) for s in samples],
            "path": ["" if s.path is None else os.path.abspath(str(s.path)) for s in samples],
            "subject": [s.subject or "" for s in samples],
            "activity": [s.activity or "" for s in samples],
            "split": [s.split or "" for s in samples],
        }
        frame = np.array([-1 if s.frame is None else int(s.frame) for s in samples], dtype=np.int64)
        label = np.array([-1 if s.label is None else int(s.label) for s in samples], dtype=np.int32)
        box = np.full((k, 4), -1, dtype=np.int32)
        for i, s in enumerate(samples):
            if s.box is not None:
                box[i] = [int(v) for v in s.box]
        aus = mask = None
        if n_classes:
            aus = np.zeros((k, n_classes), dtype=np.uint8)
            mask = np.zeros((k, n_classes), dtype=np.uint8)
            for i, s in enumerate(samples):
                if s.aus is not None:
                    a = np.asarray(s.aus, dtype=np.float32).reshape(-1)
                    if a.shape[0] != n_classes:
                        raise ClefError(f"sample {s.id!r} has {a.shape[0]} AU labels, the store "
                                        f"expects {n_classes}")
                    aus[i] = a > 0.5
                    mask[i] = 1 if s.au_mask is None else (np.asarray(s.au_mask).reshape(-1) > 0.5)
        return cls(np.asarray(embedding), strings, frame, label, box, aus, mask)


# ----------------------------------------------------------------------------------------------
# The store
# ----------------------------------------------------------------------------------------------


class EmbeddingStore:
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
            from clefctl.paths import atomic_path

            with atomic_path(path) as tmp:
                _write_skeleton(tmp, fingerprint, int(dim), image_set, dtype,
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
            h5 = _open_reader(path)
            _check_schema(h5, path)
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
        try:
            h5 = _open_h5_append(path)
        except OSError as exc:
            if not _is_flag_error(exc):
                raise ClefError(f"cannot open the store for writing: {exc}", path=path) from None
            # We hold the writer lock, so the process that set the flags is gone: a crash.
            log.warning("store %s was left open by a writer that stopped (killed, or after a "
                        "failed write); continuing after the last committed chunk", path)
            clear_status_flags(path)
            h5 = _open_h5_append(path)
        _check_schema(h5, path)
        try:
            h5.swmr_mode = True
        except (ValueError, OSError) as exc:  # pragma: no cover - files not made by create()
            h5.close()
            raise ClefError(f"store cannot be written in SWMR mode ({exc})", path=path,
                            hint="it was not written by clefctl; embed again into a new file")
        return cls(path, h5, "a", lock)

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
        h5py = _h5py()
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

    def info(self) -> dict:
        """A JSON-able summary."""
        return {"path": str(self.path), "fingerprint": self.fingerprint, "dim": self.dim,
                "image_set": self.image_set, "dtype": self.dtype, "task": self.task,
                "classes": self.classes, "rows": self.count, "skipped": self.skipped_count,
                "complete": self.complete, "created": self.created, "schema": self.schema_version}

    # -- reading --------------------------------------------------------------------------------

    def _strings(self, group, start: int, stop: int) -> list[str]:
        if stop <= start:
            return []
        ends = group["end"][start:stop].astype(np.int64)
        b0 = int(group["end"][start - 1]) if start > 0 else 0
        blob = group["utf8"][b0:int(ends[-1])].tobytes()
        offs = np.concatenate([[0], ends - b0]).tolist()
        if blob.isascii():  # byte offsets = character offsets: decode once
            text = blob.decode("ascii")
            return [text[offs[i]:offs[i + 1]] for i in range(stop - start)]
        return [blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(stop - start)]

    def _strings_at(self, group, rows: np.ndarray) -> list[str]:
        if len(rows) == 0:
            return []
        lo, hi = int(rows.min()), int(rows.max()) + 1
        if len(rows) > 64 or hi - lo <= 4 * len(rows) + 64:
            span = self._strings(group, lo, hi)
            return [span[r - lo] for r in rows]
        return [self._strings(group, int(r), int(r) + 1)[0] for r in rows]

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

    def _read_rows(self, ds, rows: np.ndarray) -> np.ndarray:
        """Rows of ``ds`` in the given order (contiguous runs are read as slices)."""
        if rows.size == 0:
            return np.zeros((0,) + ds.shape[1:], dtype=ds.dtype)
        if rows.size > 1 and np.all(np.diff(rows) == 1):
            return ds[int(rows[0]):int(rows[-1]) + 1]
        order = np.argsort(rows, kind="stable")
        uniq, inverse = np.unique(rows[order], return_inverse=True)
        lo, hi = int(uniq[0]), int(uniq[-1]) + 1
        if hi - lo <= 4 * uniq.size + 1024:
            block = ds[lo:hi][uniq - lo]
        else:
            block = ds[uniq]  # h5py fancy indexing: sorted, unique
        out = np.empty((rows.size,) + ds.shape[1:], dtype=ds.dtype)
        out[order] = block[inverse]
        return out

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
        return np.asarray(self._read_rows(ds, idx), dtype=dtype)

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
            self._ids_cache = self._strings(self._h5["images/id"], 0, self.count)
        return self._ids_cache

    @property
    def paths(self) -> list[str]:
        """Committed rows' image paths, resolved as :meth:`resolve_path` does ("" = none)."""
        return [self.resolve_path(p) for p in self._strings(self._h5["images/path"], 0, self.count)]

    def column(self, name: str, rows=None) -> list[str]:
        """A string column (id, path, subject, activity, split) for ``rows`` (paths resolved
        as :meth:`resolve_path` does)."""
        if name not in STRING_COLUMNS:
            raise KeyError(name)
        idx = self._rows(rows)
        values = self._strings_at(self._h5[f"images/{name}"], idx)
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
        return self._strings(self._h5["skipped/id"], 0, self.skipped_count)

    def labels(self, rows=None) -> dict[str, np.ndarray]:
        """``{"label": (n,) int32}`` and, for AU stores, ``"aus"``/``"au_mask"`` (n, C) uint8."""
        idx = self._rows(rows)
        g = self._h5["images"]
        out = {"label": self._read_rows(g["label"], idx)}
        if "aus" in g:
            out["aus"] = self._read_rows(g["aus"], idx)
            out["au_mask"] = self._read_rows(g["au_mask"], idx)
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
        column per AU (1/0, NaN when not coded), box_x/y/w/h."""
        import pandas as pd

        idx = self._rows(rows)
        g = self._h5["images"]
        data: dict[str, object] = {"row": idx}
        for name in STRING_COLUMNS:
            data[name] = self._strings_at(g[name], idx)
        data["path"] = [self.resolve_path(v) for v in data["path"]]
        frame = self._read_rows(g["frame"], idx)
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
        box = self._read_rows(g["box"], idx)
        for j, name in enumerate(("box_x", "box_y", "box_w", "box_h")):
            data[name] = box[:, j]
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
        :func:`_fence`), closes the store and raises a :class:`ClefError` (for a full disk:
        "the disk is full", and that rerunning resumes). Committed rows stay committed."""
        self._need_writer()
        try:
            yield
        except (OSError, RuntimeError) as exc:
            self._broken = exc
            self._abandon()
            raise _write_error(exc, self.path, self.count) from exc

    def append(self, embeddings, samples: Sequence, skipped_ids: Sequence[str] = ()) -> int:
        """Commit one chunk: ``embeddings`` (k, D) for ``samples`` (k :class:`Sample` records,
        metadata taken from them) and the ids of images skipped as unreadable. The rows are
        L2-normalised, written, flushed, and only then counted. Returns the committed count."""
        emb = _normalise(np.asarray(embeddings))
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
                if "aus" in self._h5["images"]:
                    n_cls = self._ds("images/aus").shape[1]
                    for name, arr in (("aus", cols.aus), ("au_mask", cols.au_mask)):
                        columns.append((name, arr if arr is not None else np.zeros((k, n_cls), np.uint8)))
                for name, arr in columns:
                    ds = self._ds(f"images/{name}")
                    _grow(ds, end)
                    ds[n0:end] = arr
                for name in STRING_COLUMNS:
                    self._write_strings(f"images/{name}", n0, cols.strings[name])
            if skipped:
                self._write_strings("skipped/id", s0, skipped)
            self._h5.flush()                          # 1. the chunk's rows are on disk ...
            self._fsync()
            self._write_state(n0 + k, s0 + len(skipped), self._state[2])  # 2. ... before counted
        self._ids_cache = None
        return self.count

    def _write_strings(self, prefix: str, row0: int, values: Sequence[str]) -> None:
        utf8, ends = self._ds(f"{prefix}/utf8"), self._ds(f"{prefix}/end")
        enc = [v.encode("utf-8") for v in values]
        lens = np.fromiter((len(e) for e in enc), dtype=np.int64, count=len(enc))
        base = int(ends[row0 - 1]) if row0 > 0 else 0
        blob = b"".join(enc)
        if blob:
            _grow(utf8, base + len(blob))
            utf8[base:base + len(blob)] = np.frombuffer(blob, dtype=np.uint8)
        _grow(ends, row0 + len(enc))
        ends[row0:row0 + len(enc)] = base + np.cumsum(lens)

    def _write_state(self, rows: int, skipped: int, complete: int) -> None:
        """Write, flush and fsync ``/state``; only then does this object count the new state."""
        self._ds("state")[0:3] = np.array([rows, skipped, complete], dtype=np.int64)
        self._h5.flush()
        self._fsync()
        self._state = (rows, skipped, complete)

    def _fsync(self) -> None:
        """Push the flushed bytes to the disk (commit durability; HDF5's flush stops at the OS).
        A failing fsync (EIO, ENOSPC on delayed allocation) raises; only a file system that
        cannot sync this descriptor at all is tolerated."""
        if os.environ.get("CLEF_STORE_NO_FSYNC"):
            return
        try:
            fd = self._h5.id.get_vfd_handle()
        except (TypeError, ValueError, AttributeError):  # pragma: no cover - VFDs without an fd
            return
        if not isinstance(fd, int):  # pragma: no cover
            return
        try:
            os.fsync(fd)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise

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
                _fence(h5)
        finally:
            self._handles.clear()
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    # -- text-embedding cache -------------------------------------------------------------------

    def text_embeddings(self, prompt_hash: str, text_fingerprint: str, texts: Sequence[str],
                        encode_fn: Callable[[list[str]], object]) -> np.ndarray:
        """Embeddings (T, D) float32 of ``texts``, cached in the store under
        (prompt-set hash, text-encoder fingerprint, texts).

        A hit returns the cached array without calling ``encode_fn``; a miss calls
        ``encode_fn(texts)`` and stores the result when the file can be written now (no other
        process has it open; otherwise the result is returned uncached). ``last_text_cache_hit``
        and the ``text_cache_hits`` / ``text_cache_misses`` counters say which happened.
        """
        texts = [str(t) for t in texts]
        key = _text_key(prompt_hash, text_fingerprint, texts)
        grp = self._h5.get(f"text/{key}")
        if grp is not None:
            cached = np.asarray(grp["embedding"][...], dtype=np.float32)
            stored = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in grp["texts"][...]]
            if stored == texts and cached.shape == (len(texts), self.dim):
                self.text_cache_hits += 1
                self.last_text_cache_hit = True
                return cached
        out = encode_fn(texts)
        emb = out.detach().cpu().numpy() if hasattr(out, "detach") else np.asarray(out)
        emb = np.asarray(emb, dtype=np.float32)
        if emb.shape != (len(texts), self.dim):
            raise ClefError(f"text encoder returned shape {tuple(emb.shape)} for {len(texts)} texts; "
                            f"the store holds {self.dim}-d embeddings",
                            hint="use the model the store was embedded with")
        self.text_cache_misses += 1
        self.last_text_cache_hit = False
        self._cache_texts(key, prompt_hash, text_fingerprint, texts, emb)
        return emb

    def _cache_texts(self, key, prompt_hash, text_fingerprint, texts, emb) -> bool:
        if self.mode != "r":
            return False  # an SWMR writer cannot add objects; the next reader caches it
        lock = WriterLock(self.path)
        try:
            if not lock.try_acquire():
                return False
        except OSError:
            return False
        h5py = _h5py()
        # Not an SWMR write: a write failing half-way (a full disk) could damage the file, so
        # the cache is only written with room to spare, and a failed write is fenced.
        try:
            room = shutil.disk_usage(self.path.parent).free >= emb.nbytes + TEXT_CACHE_ROOM
        except OSError:
            room = False
        if not room:
            lock.release()
            log.debug("text embeddings not cached in %s: too little free disk space", self.path)
            return False
        self._h5.close()
        try:
            try:
                f = h5py.File(self.path, "a", libver="latest")
            except OSError as exc:  # read-only file system, readers holding the file, ...
                log.debug("text embeddings not cached in %s: %s", self.path, exc)
                return False
            try:
                top = f.require_group("text")
                if key in top:
                    del top[key]
                g = top.create_group(key)
                g.create_dataset("embedding", data=emb.astype(np.float32))
                g.create_dataset("texts", data=np.array(texts, dtype=object),
                                 dtype=h5py.string_dtype())
                g.attrs.update({"prompt_hash": prompt_hash, "text_fingerprint": text_fingerprint,
                                "created": _now(), "count": len(texts)})
                f.flush()
                f.close()
            except (OSError, RuntimeError) as exc:
                _fence(f)
                log.warning("text embeddings not cached in %s: %s", self.path, _first_line(exc))
                return False
            return True
        finally:
            lock.release()
            self._h5 = _open_reader(self.path)
            self._state = (-1, -1, -1)
            self.refresh()

    def text_cache_keys(self) -> list[str]:
        return sorted(self._h5["text"].keys()) if "text" in self._h5 else []

    # -- closing --------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the file (a writer also releases its lock). A writer whose last close-time
        write fails is fenced (:func:`_fence`) instead: every commit was flushed already, so
        only the "open for writing" flags stay set, which the next open clears."""
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
                        "next open repairs the file", self.path, _first_line(exc))
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


def _open_h5_append(path: Path):
    # HDF5's own file lock is off for the writer: readers that opened first hold a shared
    # lock, and the one-writer rule is kept by WriterLock instead.
    return _h5py().File(path, "a", libver="latest", locking=False)


def _open_reader(path: Path, wait_s: float = 10.0):
    """An SWMR reader (consistent while a writer appends); recovers a dead writer's flags."""
    h5py = _h5py()
    deadline = time.monotonic() + wait_s
    recovered = False
    while True:
        try:
            return h5py.File(path, "r", libver="latest", swmr=True)
        except OSError as exc:
            if _is_lock_error(exc) and time.monotonic() < deadline:
                time.sleep(0.05)  # a text-cache write holds the file for a moment
                continue
            if _is_flag_error(exc) and not recovered:
                lock = WriterLock(path)
                if lock.try_acquire():  # nobody writes: the flags are a dead writer's
                    try:
                        clear_status_flags(path)
                    finally:
                        lock.release()
                    recovered = True
                    continue
                if time.monotonic() < deadline:
                    time.sleep(0.02)  # a live writer between opening and switching to SWMR
                    continue
            if not _is_flag_error(exc):
                try:  # an HDF5 file without SWMR support (older superblock): plain read
                    return h5py.File(path, "r")
                except OSError:
                    pass
            else:
                raise ClefError("store is being written by another process that is not in SWMR "
                                "mode", path=path, hint="wait for it to finish") from None
            raise ClefError(f"cannot read the embedding store: {exc}", path=path,
                            hint="is it an HDF5 file written by clefctl?") from None


def _check_schema(h5, path) -> None:
    version = h5.attrs.get("clefctl_store")
    if version is None:
        h5.close()
        raise ClefError("not a clefctl embedding store (no clefctl_store attribute)", path=path)
    if int(version) > SCHEMA_VERSION:
        h5.close()
        raise ClefError(f"store schema {int(version)} is newer than this clefctl understands "
                        f"({SCHEMA_VERSION})", path=path, hint="upgrade clefctl")


def _write_skeleton(path: Path, fingerprint: str, dim: int, image_set: str, dtype: str, task: str,
                    classes: list[str], extra_attrs: dict, shown_as=None) -> None:
    """Write an empty store to ``path`` (a temporary file; ``shown_as`` names the store in
    errors). A failed write (a full disk) is fenced and raised as :class:`ClefError`."""
    try:
        f = _h5py().File(path, "w", libver="latest")
    except OSError as exc:
        raise _write_error(exc, shown_as or path, 0) from exc
    try:
        _fill_skeleton(f, fingerprint, dim, image_set, dtype, task, classes, extra_attrs)
        f.flush()
        f.close()
    except (OSError, RuntimeError) as exc:
        _fence(f)
        raise _write_error(exc, shown_as or path, 0) from exc


def _fill_skeleton(f, fingerprint: str, dim: int, image_set: str, dtype: str, task: str,
                   classes: list[str], extra_attrs: dict) -> None:
    itemsize = np.dtype(dtype).itemsize
    f.attrs.update({
        "clefctl_store": SCHEMA_VERSION, "model_fingerprint": fingerprint, "dim": dim,
        "image_set": image_set, "created": _now(), "dtype": dtype, "task": task,
        "classes": json.dumps(classes), "store_uid": uuid.uuid4().hex,
    })
    for k, v in extra_attrs.items():
        f.attrs[k] = v if isinstance(v, (int, float, str)) else json.dumps(v, default=str)
    st = f.create_dataset("state", shape=(3,), dtype=np.int64, chunks=(3,))
    st[:] = 0
    g = f.create_group("images")
    g.create_dataset("embedding", shape=(0, dim), maxshape=(None, dim), dtype=dtype,
                     chunks=(_chunk_rows(dim, itemsize), dim))
    g.create_dataset("frame", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(META_CHUNK_ROWS,))
    g.create_dataset("label", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(META_CHUNK_ROWS,))
    g.create_dataset("box", shape=(0, 4), maxshape=(None, 4), dtype=np.int32,
                     chunks=(META_CHUNK_ROWS, 4))
    if task == "au" and classes:
        c = len(classes)
        for name in ("aus", "au_mask"):
            g.create_dataset(name, shape=(0, c), maxshape=(None, c), dtype=np.uint8,
                             chunks=(META_CHUNK_ROWS, c))
    for name in STRING_COLUMNS:
        _create_strings(g, name)
    _create_strings(f.create_group("skipped"), "id")
    f.create_group("text")


def _create_strings(parent, name: str) -> None:
    g = parent.create_group(name)
    g.create_dataset("utf8", shape=(0,), maxshape=(None,), dtype=np.uint8, chunks=(BLOB_CHUNK,))
    g.create_dataset("end", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(META_CHUNK_ROWS,))


# ----------------------------------------------------------------------------------------------
# The inference fast path
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bfloat16 matmuls natively (AVX512-BF16 or AMX-BF16 flags,
    or, where /proc/cpuinfo is unavailable, a bf16 matmul measured >= 1.3x faster than fp32)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags") or line.startswith("Features"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    except OSError:
        pass
    import torch

    def best(dtype) -> float:
        a = torch.randn(256, 1024).to(dtype)
        b = torch.randn(1024, 1024).to(dtype)
        a @ b
        times = []
        for _ in range(3):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
        return min(times)

    try:
        return best(torch.float32) / best(torch.bfloat16) >= 1.3
    except RuntimeError:
        return False


def inference_dtype(device, dtype: str = "auto"):
    """The torch dtype :func:`fast_image_encoder` runs in: ``auto`` -> bfloat16 on CPUs with
    native bf16, float16 on CUDA, float32 elsewhere. ``$CLEF_INFERENCE_DTYPE`` overrides auto."""
    import torch

    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype == "auto":
        dtype = os.environ.get("CLEF_INFERENCE_DTYPE", "auto") or "auto"
    if dtype != "auto":
        if dtype not in names:
            raise ClefError(f"unknown inference dtype {dtype!r}", hint="use auto, float32, bfloat16 or float16")
        return names[dtype]
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.float16
    if dev.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


class ImageEncoder:
    """Callable ``(B, 3, H, W) float32 pixels -> (B, D) unit float32`` on CPU.

    Runs the model's image tower, or a copy of it cast to ``dtype`` (the model itself is left
    untouched). Plain weight casting, not autocast: bf16 autocast is several times *slower* for
    CPU inference, a bf16 copy about twice as fast as fp32 on CPUs with AVX512-BF16/AMX.
    """

    def __init__(self, model, dtype="auto"):
        import torch

        self.model = model
        self.device = torch.device(getattr(model, "device", "cpu"))
        self.dtype = inference_dtype(self.device, dtype) if isinstance(dtype, str) else dtype
        visual = model.clip.visual
        param_dtype = next(visual.parameters()).dtype
        if self.dtype == param_dtype:
            self.visual = visual
        else:
            self.visual = copy.deepcopy(visual).to(self.dtype)
        self.visual.eval()

    def __call__(self, pixels):
        import torch
        import torch.nn.functional as F

        with torch.inference_mode():
            x = pixels.to(self.device, non_blocking=True).to(self.dtype)
            out = self.visual(x)
            if isinstance(out, (tuple, list)):
                out = out[0]
            return F.normalize(out.float(), dim=-1).cpu()

    def __repr__(self) -> str:
        return f"ImageEncoder(dtype={self.dtype}, device={self.device})"


def fast_image_encoder(model, dtype: str = "auto") -> ImageEncoder:
    """The image-embedding function :func:`embed_into_store` uses (see :class:`ImageEncoder`)."""
    return ImageEncoder(model, dtype)


# ----------------------------------------------------------------------------------------------
# Embedding a set of images (resumable, kill-safe, sharded under torchrun)
# ----------------------------------------------------------------------------------------------


@dataclass
class EmbedReport:
    """What :func:`embed_into_store` did."""

    path: str
    rows: int                      # rows in the store now
    skipped: int                   # unreadable images (in the store's skipped list)
    embedded_now: int              # rows added by this call
    resumed_from: int              # inputs already consumed when this call started
    complete: bool
    seconds: float
    images_per_s: float
    skipped_ids: list[str] = field(default_factory=list)
    inference_dtype: str = "float32"
    parts: list[str] = field(default_factory=list)   # part files merged (torchrun)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _bundle_fields(samples, image_set, task, classes):
    if hasattr(samples, "samples") and hasattr(samples, "classes"):
        bundle = samples
        image_set = image_set or bundle.name
        task = bundle.task if task is None else task
        classes = list(bundle.classes) if classes is None else list(classes)
        samples = list(bundle.samples)
    else:
        samples = list(samples)
        if task is None:
            if any(s.aus is not None for s in samples[:1000]):
                task = "au"
            elif any(s.label is not None for s in samples[:1000]):
                task = "fer"
            else:
                task = ""
        if classes is None:
            classes = []
            if task == "au":
                first = next((s for s in samples if s.aus is not None), None)
                classes = [f"AU{j}" for j in range(len(first.aus))] if first is not None else []
    if task == "activity":
        task = ""
    return samples, image_set or "images", task, list(classes)


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous share ``[start, stop)`` of ``n`` items (sizes differ by <= 1)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def part_path(store_path: str | os.PathLike, rank: int, world: int) -> Path:
    """The part file rank ``rank`` of ``world`` writes under torchrun."""
    return Path(f"{store_path}.part-{rank}-of-{world}{STORE_SUFFIX}")


def embed_into_store(model, samples, store_path: str | os.PathLike, batch_size: int = 64,
                     chunk_size: int = 1024, progress: bool = True, *, image_set: str | None = None,
                     task: str | None = None, classes: Sequence[str] | None = None,
                     dtype: str = "float16", inference: str = "auto", num_workers: int | None = None,
                     overwrite: bool = False, transform=None) -> EmbedReport:
    """Embed ``samples`` (a :class:`DatasetBundle` or a list of :class:`Sample`) into the store at
    ``store_path``, resuming after the last committed chunk when the store exists.

    Images go through the model's eval transform and :func:`fast_image_encoder` in batches of
    at most ``batch_size``, cut at multiples of ``chunk_size``: a chunk is committed each time
    the inputs consumed reach a multiple of ``chunk_size`` (and at the end). Unreadable images
    are skipped, counted and recorded (a rerun does not retry them). A rerun with another model
    or another image list is refused (``overwrite=True`` starts again). Under torchrun each rank
    embeds a contiguous shard into a part file and rank 0 merges them in order.

    A failed write (a full disk, an I/O error) raises :class:`ClefError` naming the store; the
    rows committed before stay intact, nothing later is counted, and running the same call again
    (after freeing space) resumes after the last committed chunk. Image paths are stored absolute.
    """
    from clefctl import distributed

    samples, image_set, task, classes = _bundle_fields(samples, image_set, task, classes)
    if batch_size < 1 or chunk_size < 1:
        raise ClefError("batch size and chunk size must be at least 1")
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        seen, dupes = set(), []
        for i in ids:
            if i in seen and len(dupes) < 3:
                dupes.append(i)
            seen.add(i)
        raise ClefError(f"sample ids are not unique (e.g. {', '.join(map(repr, dupes))}); a store "
                        "needs one row per id")
    store_path = Path(store_path)
    world, rank = distributed.world_size(), distributed.rank()
    kwargs = dict(batch_size=batch_size, chunk_size=chunk_size, image_set=image_set, task=task,
                  classes=classes, dtype=dtype, inference=inference, num_workers=num_workers,
                  transform=transform)
    if world <= 1:
        return _embed_single(model, samples, store_path, progress=progress, overwrite=overwrite,
                             **kwargs)

    # torchrun: shard what the (possibly partial) final store does not hold yet.
    if overwrite and rank == 0 and store_path.exists():
        store_path.unlink()
    distributed.barrier()
    base_consumed = 0
    if store_path.exists():
        with EmbeddingStore.open(store_path) as st:
            _check_compatible(st, model, image_set, task, classes, dtype)
            base_consumed = st.consumed
            _check_prefix(st, samples)
            base_complete = st.complete and st.consumed == len(samples)
        if base_complete:
            distributed.barrier()
            return _report_of(store_path, 0, len(samples), 0.0, "n/a")
    remaining = samples[base_consumed:]
    start, stop = shard_range(len(remaining), rank, world)
    mine = part_path(store_path, rank, world)
    part_report = _embed_single(model, remaining[start:stop], mine, progress=progress and rank == 0,
                                overwrite=overwrite, part=f"{rank}/{world}", **kwargs)
    distributed.barrier()
    parts = [part_path(store_path, r, world) for r in range(world)]
    if rank == 0:
        t0 = time.perf_counter()
        merge_parts(parts, store_path, base=store_path if store_path.exists() else None)
        for p in parts:
            p.unlink(missing_ok=True)
            Path(str(p) + ".lock").unlink(missing_ok=True)
        log.info("merged %d part files in %.1f s", world, time.perf_counter() - t0)
    distributed.barrier()
    report = _report_of(store_path, part_report.embedded_now, base_consumed,
                        part_report.seconds, part_report.inference_dtype)
    report.parts = [str(p) for p in parts]
    return report


def _report_of(path: Path, embedded_now: int, resumed_from: int, seconds: float, infer: str) -> EmbedReport:
    with EmbeddingStore.open(path) as st:
        return EmbedReport(str(path), st.count, st.skipped_count, embedded_now, resumed_from,
                           st.complete, seconds, embedded_now / seconds if seconds > 0 else 0.0,
                           st.skipped_ids, infer)


def _check_compatible(st: EmbeddingStore, model, image_set, task, classes, dtype) -> None:
    if st.fingerprint != model.fingerprint:
        raise ClefError(f"store was embedded with model {st.fingerprint}, but the model given is "
                        f"{model.fingerprint}", path=st.path,
                        hint="write to another store path (one store per model and image set) "
                             "or pass --overwrite")
    if st.dim != model.embed_dim:
        raise ClefError(f"store holds {st.dim}-d embeddings, the model makes {model.embed_dim}-d",
                        path=st.path)
    if st.task != task or list(st.classes) != list(classes):
        raise ClefError(f"store holds task {st.task!r} with classes {st.classes[:6]}, the images "
                        f"given are {task!r} with {list(classes)[:6]}", path=st.path,
                        hint="use another store path or --overwrite")
    if st.image_set != image_set:
        raise ClefError(f"store holds image set {st.image_set!r}, not {image_set!r}", path=st.path,
                        hint="use another store path or --overwrite")


def _check_prefix(st: EmbeddingStore, samples: Sequence) -> None:
    """The store's rows and skipped ids must be exactly the first ``consumed`` samples."""
    consumed = st.consumed
    if consumed > len(samples):
        raise ClefError(f"store already holds {consumed} images, more than the {len(samples)} given",
                        path=st.path, hint="use another store path or --overwrite")
    if consumed == 0:
        return
    stored, skipped = st.ids, set(st.skipped_ids)
    expected = [s.id for s in samples[:consumed] if s.id not in skipped]
    if stored != expected or len(expected) + len(skipped) != consumed:
        raise ClefError("store holds a different image list than the one given (resuming needs "
                        "the same images in the same order)", path=st.path,
                        hint="use another store path or --overwrite")


def _default_workers() -> int:
    n = os.cpu_count() or 1
    return 0 if n <= 2 else min(8, n // 2)


def _embed_single(model, samples: list, store_path: Path, *, batch_size: int, chunk_size: int,
                  progress: bool, image_set: str, task: str, classes: list[str], dtype: str,
                  inference: str, num_workers: int | None, overwrite: bool, transform,
                  part: str | None = None) -> EmbedReport:
    t0 = time.perf_counter()
    extra = {"part": part} if part else {}
    if store_path.exists() and not overwrite:
        store = EmbeddingStore.open(store_path, mode="a")
        try:
            _check_compatible(store, model, image_set, task, classes, dtype)
            _check_prefix(store, samples)
        except BaseException:
            store.close()
            raise
    else:
        store = EmbeddingStore.create(store_path, model.fingerprint, model.embed_dim, image_set,
                                      dtype, task=task, classes=classes, overwrite=overwrite,
                                      extra_attrs=extra)
    _remove_stale_temps(store_path)
    resumed_from = store.consumed
    skipped_before = store.skipped_count
    n = len(samples)
    try:
        embedded_now, infer = 0, "n/a"
        if resumed_from < n:
            embedded_now, infer = _embed_rows(store, model, samples, batch_size=batch_size,
                                              chunk_size=chunk_size, progress=progress, task=task,
                                              classes=classes, inference=inference,
                                              num_workers=num_workers, transform=transform)
        if store.consumed != n:
            raise ClefError(f"embedding ended after {store.consumed} of {n} images")
        skipped_now = store.skipped_count - skipped_before
        store.mark_complete()
        seconds = time.perf_counter() - t0
        report = EmbedReport(str(store_path), store.count, store.skipped_count, embedded_now,
                             resumed_from, store.complete, seconds,
                             embedded_now / seconds if seconds > 0 else 0.0, store.skipped_ids, infer)
    finally:
        store.close()
    if skipped_now:
        log.warning("%d unreadable images skipped (e.g. %s); their ids are kept in the store",
                    skipped_now, report.skipped_ids[skipped_before])
    return report


def _chunk_batches(start: int, stop: int, batch_size: int, chunk_size: int) -> list[range]:
    """The input batches of ``[start, stop)``: at most ``batch_size`` long, and cut at every
    multiple of ``chunk_size``, so that each commit takes whole batches and ends exactly on a
    multiple of ``chunk_size`` (or at ``stop``), also when resuming from any position."""
    out = []
    pos = start
    while pos < stop:
        end = min(stop, pos + batch_size, (pos // chunk_size + 1) * chunk_size)
        out.append(range(pos, end))
        pos = end
    return out


def _embed_rows(store: EmbeddingStore, model, samples: list, *, batch_size: int, chunk_size: int,
                progress: bool, task: str, classes: list[str], inference: str,
                num_workers: int | None, transform) -> tuple[int, str]:
    """Embed ``samples[store.consumed:]`` into ``store``, committing one chunk at every multiple
    of ``chunk_size`` inputs. Returns (rows embedded, inference dtype)."""
    import torch
    from torch.utils.data import DataLoader

    from clefctl.data.records import SampleDataset, collate
    from clefctl.data.transforms import transforms_for

    n, start = len(samples), store.consumed
    encoder = fast_image_encoder(model, inference)
    tf = transform if transform is not None else transforms_for(model, train=False)
    n_cls = len(classes) if task == "au" else 0
    ds = SampleDataset(samples, tf, n_cls, task if task else "au")
    workers = _default_workers() if num_workers is None else int(num_workers)
    batches = _chunk_batches(start, n, batch_size, chunk_size)
    loader = DataLoader(ds, batch_sampler=batches, num_workers=workers, collate_fn=collate,
                        pin_memory=torch.device(encoder.device).type == "cuda")
    emb_buf: list[np.ndarray] = []
    sample_buf: list = []
    skip_buf: list[str] = []
    embedded = 0
    with _progress(progress, n, start, store.path.name) as advance:
        for batch, requested in zip(loader, batches):
            served = batch["index"].tolist()
            # an unreadable image is replaced by the next readable one: served != requested
            keep = [j for j, (s, r) in enumerate(zip(served, requested)) if s == r]
            skip_buf.extend(samples[r].id for s, r in zip(served, requested) if s != r)
            if keep:
                pixels = batch["image"][keep] if len(keep) < len(served) else batch["image"]
                emb_buf.append(encoder(pixels).numpy())
                sample_buf.extend(samples[requested[j]] for j in keep)
            advance(len(requested))
            if requested.stop % chunk_size == 0 or requested.stop == n:
                _commit(store, emb_buf, sample_buf, skip_buf)
                embedded += len(sample_buf)
                emb_buf, sample_buf, skip_buf = [], [], []
    return embedded, str(encoder.dtype).replace("torch.", "")


def _commit(store: EmbeddingStore, emb_buf, sample_buf, skip_buf) -> None:
    emb = np.concatenate(emb_buf) if emb_buf else np.zeros((0, store.dim), np.float32)
    store.append(emb, sample_buf, skip_buf)


def _remove_stale_temps(store_path: Path) -> None:
    """Temporary files left by a creation or merge that was killed (we hold the writer lock)."""
    for p in store_path.parent.glob(f".{store_path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            p.unlink()


@contextlib.contextmanager
def _progress(enabled: bool, total: int, done: int, label: str):
    if not enabled:
        yield lambda k: None
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    with Progress(TextColumn("[bold]embed[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn()) as prog:
        tid = prog.add_task(label, total=total, completed=done)
        yield lambda k: prog.advance(tid, k)


def merge_parts(part_paths: Sequence[str | os.PathLike], out_path: str | os.PathLike, *,
                base: str | os.PathLike | None = None, block_rows: int = 65536) -> Path:
    """Concatenate complete part stores, in the order given, into one complete store.

    ``base`` (optional, may be incomplete) is an existing store whose rows come first; it may be
    ``out_path`` itself. The parts must share model fingerprint, dimension, dtype, task and
    classes. The merged file is written under a temporary name and renamed over ``out_path``,
    so a crash leaves the old file and the parts untouched.
    """
    from clefctl.paths import atomic_path

    out_path = Path(out_path)
    sources = ([Path(base)] if base is not None else []) + [Path(p) for p in part_paths]
    if not sources:
        raise ClefError("no part files to merge")
    metas = []
    for i, p in enumerate(sources):
        with EmbeddingStore.open(p) as st:
            if not st.complete and not (base is not None and i == 0):
                raise ClefError(f"part file is incomplete ({st.consumed} inputs consumed)", path=p,
                                hint="rerun the embedding to finish it before merging")
            metas.append((st.fingerprint, st.dim, st.dtype, st.task, tuple(st.classes), st.image_set))
    if len(set(m[:5] for m in metas)) != 1:
        raise ClefError("part files come from different models or label sets; cannot merge: "
                        + "; ".join(f"{p.name}: {m[0]} {m[1]}-d {m[2]}" for p, m in zip(sources, metas)))
    fingerprint, dim, dtype, task, classes, image_set = metas[0]
    lock = WriterLock(out_path)
    own_lock = lock.try_acquire()
    try:
        with atomic_path(out_path) as tmp:
            _write_skeleton(tmp, fingerprint, dim, image_set, dtype, task, list(classes), {},
                            shown_as=out_path)
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
    g = src._h5["images"]
    n = src.count
    skipped = src.skipped_ids
    if n == 0:
        dst.append_columns(Columns(np.zeros((0, src.dim), dst.dtype), {c: [] for c in STRING_COLUMNS},
                                   np.zeros(0, np.int64), np.zeros(0, np.int32),
                                   np.zeros((0, 4), np.int32)), skipped)
        return
    for start in range(0, n, block_rows):
        stop = min(n, start + block_rows)
        cols = Columns(
            embedding=g["embedding"][start:stop],
            strings={c: src._strings(g[c], start, stop) for c in STRING_COLUMNS},
            frame=g["frame"][start:stop], label=g["label"][start:stop], box=g["box"][start:stop],
            aus=g["aus"][start:stop] if "aus" in g else None,
            au_mask=g["au_mask"][start:stop] if "au_mask" in g else None)
        dst.append_columns(cols, skipped if stop == n else ())


# ----------------------------------------------------------------------------------------------
# The FAISS index (derived data beside the store)
# ----------------------------------------------------------------------------------------------

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

    def set_ef_search(self, ef: int) -> None:
        self.params.ef_search = int(ef)
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
    # centroids swallow many points (lists 7x less balanced on CLIP-like data: slow probes).
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

    from clefctl.paths import atomic_path, write_json_atomic

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
                "built": _now(), "seconds": round(time.perf_counter() - t0, 3),
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


__all__ = [
    "SCHEMA_VERSION", "EmbeddingStore", "Columns", "WriterLock", "clear_status_flags",
    "store_filename", "fast_image_encoder", "ImageEncoder", "inference_dtype",
    "cpu_has_native_bf16", "embed_into_store", "EmbedReport", "merge_parts", "shard_range",
    "part_path", "IndexParams", "StoreIndex", "build_index", "load_index", "index_status",
    "index_paths", "resolve_index_kind", "default_nlist", "default_nprobe", "lookup3",
]
