"""The HDF5 layout of a store (docs/store.md): the empty file (:func:`write_skeleton`: root
attributes, ``/state``, ``/images``, ``/skipped``, ``/text``), the schema check, :class:`Columns`
(one block of rows as arrays), the UTF-8 string columns (bytes plus end offsets, SWMR-safe unlike
HDF5 variable-length strings) and reading rows in any order."""

from __future__ import annotations

import re

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from clefctl.errors import ClefError
from clefctl.store._hdf5 import fence, first_line, h5py_module, now, write_error

SCHEMA_VERSION = 1
DTYPES = ("float16", "float32")
CHUNK_BYTES = 1 << 20          # target size of one embedding chunk (HDF5 reads whole chunks)
META_CHUNK_ROWS = 4096         # chunk rows of the small per-row columns
BLOB_CHUNK = 1 << 16           # chunk bytes of the UTF-8 string blobs
STRING_COLUMNS = ("id", "path", "subject", "activity", "split")
# per-row columns of faces found in photos and videos (embed PATH...); stores made before they
# existed lack them and read as "none" (timestamp NaN, face_id -1)
MEDIA_COLUMNS = {"timestamp": (np.float64, np.nan), "face_id": (np.int32, -1)}
# the 5 landmarks of a face found by YuNet (x0..x4, y0..y4, source pixels; NaN = none): stores made
# before it lack the dataset and read as none
LANDMARKS = "landmarks"


MEDIA_PREFIX = "media-"        # image sets of `embed PATH...`: the faces of photos and videos


def crop_image_set(image_set: str, size: int) -> str:
    """The image set of a data set's images read from its face-crop cache: ``bp4d-crops256``."""
    return f"{image_set}-crops{int(size)}"


def is_face_image_set(image_set: str) -> bool:
    """Whether an image set's rows are face crops cut from larger images (``embed PATH...``'s faces or a
    face-crop cache's crops)."""
    return image_set.startswith(MEDIA_PREFIX) or re.search(r"-crops\d+$", image_set) is not None


def grow(ds, rows: int) -> None:
    """Resize ``ds`` along axis 0 to at least ``rows`` (SWMR datasets only ever grow)."""
    if ds.shape[0] < rows:
        ds.resize(rows, axis=0)


def unit_rows(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """``x`` (float32) scaled to unit length along ``axis``; zero rows stay zero (no checks: for
    query vectors and centroids, where :func:`normalise`'s refusal would be wrong)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def normalise(emb: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); zero, NaN or infinite rows are refused."""
    emb = np.asarray(emb, dtype=np.float32)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    if emb.size and (not np.all(np.isfinite(norms)) or np.any(norms == 0)):
        raise ClefError("embeddings to store contain zero, NaN or infinite rows",
                        hint="the model produced invalid outputs; check the weights")
    return emb / np.maximum(norms, 1e-12)


# ----------------------------------------------------------------------------------------------
# The empty file
# ----------------------------------------------------------------------------------------------


def _chunk_rows(dim: int, itemsize: int) -> int:
    return int(min(8192, max(64, CHUNK_BYTES // max(1, dim * itemsize))))


def check_schema(h5, path) -> None:
    """Refuse (closing ``h5``) a file that is not a store, of a newer schema, or damaged: the object
    headers of every dataset are read now, so a damaged file fails here in one line, not in a later read."""
    try:
        version = h5.attrs.get("clefctl_store")
        if version is not None:
            for group in ("images", "skipped"):
                h5[group].visititems(lambda _name, _obj: None)
            h5["state"].shape
    except (KeyError, OSError, RuntimeError, ValueError) as exc:
        h5.close()
        raise ClefError(f"the store is damaged: HDF5 cannot read it ({first_line(exc)})", path=path,
                        hint="copy it again whole from where it came from, or embed again") from None
    if version is None:
        h5.close()
        raise ClefError("not a clefctl embedding store, or a damaged one (no readable clefctl_store attribute)",
                        path=path)
    if int(version) > SCHEMA_VERSION:
        h5.close()
        raise ClefError(f"store schema {int(version)} is newer than this clefctl understands "
                        f"({SCHEMA_VERSION})", path=path, hint="upgrade clefctl")


def write_skeleton(path: Path, fingerprint: str, dim: int, image_set: str, dtype: str, task: str,
                   classes: list[str], extra_attrs: dict, shown_as=None) -> None:
    """Write an empty store to ``path`` (a temporary file; ``shown_as`` names the store in
    errors). A failed write (a full disk) is fenced and raised as :class:`ClefError`."""
    try:
        f = h5py_module().File(path, "w", libver="latest")
    except OSError as exc:
        raise write_error(exc, shown_as or path, 0) from exc
    try:
        _fill_skeleton(f, fingerprint, dim, image_set, dtype, task, classes, extra_attrs)
        f.flush()
        f.close()
    except (OSError, RuntimeError) as exc:
        fence(f)
        raise write_error(exc, shown_as or path, 0) from exc


def _fill_skeleton(f, fingerprint: str, dim: int, image_set: str, dtype: str, task: str,
                   classes: list[str], extra_attrs: dict) -> None:
    itemsize = np.dtype(dtype).itemsize
    f.attrs.update({
        "clefctl_store": SCHEMA_VERSION, "model_fingerprint": fingerprint, "dim": dim,
        "image_set": image_set, "created": now(), "dtype": dtype, "task": task,
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
    for name, (kind, _) in MEDIA_COLUMNS.items():
        g.create_dataset(name, shape=(0,), maxshape=(None,), dtype=kind, chunks=(META_CHUNK_ROWS,))
    g.create_dataset(LANDMARKS, shape=(0, 10), maxshape=(None, 10), dtype=np.float32, chunks=(META_CHUNK_ROWS, 10))
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
# String columns: <group>/utf8 (all bytes) and <group>/end (end offset of each row)
# ----------------------------------------------------------------------------------------------


def read_strings(group, start: int, stop: int) -> list[str]:
    """Rows ``[start, stop)`` of a string column."""
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


def read_strings_at(group, rows: np.ndarray) -> list[str]:
    """The values of a string column at ``rows`` (any order)."""
    if len(rows) == 0:
        return []
    lo, hi = int(rows.min()), int(rows.max()) + 1
    if len(rows) > 64 or hi - lo <= 4 * len(rows) + 64:
        span = read_strings(group, lo, hi)
        return [span[r - lo] for r in rows]
    return [read_strings(group, int(r), int(r) + 1)[0] for r in rows]


def write_strings(utf8, ends, row0: int, values: Sequence[str]) -> None:
    """Write ``values`` as rows ``row0...`` of the string column made of ``utf8`` and ``ends``."""
    enc = [v.encode("utf-8") for v in values]
    lens = np.fromiter((len(e) for e in enc), dtype=np.int64, count=len(enc))
    base = int(ends[row0 - 1]) if row0 > 0 else 0
    blob = b"".join(enc)
    if blob:
        grow(utf8, base + len(blob))
        utf8[base:base + len(blob)] = np.frombuffer(blob, dtype=np.uint8)
    grow(ends, row0 + len(enc))
    ends[row0:row0 + len(enc)] = base + np.cumsum(lens)


def read_rows(ds, rows: np.ndarray) -> np.ndarray:
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


# ----------------------------------------------------------------------------------------------
# One block of rows
# ----------------------------------------------------------------------------------------------


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
    timestamp: np.ndarray | None = None         # (k,) float64 seconds into a video, NaN = none
    face_id: np.ndarray | None = None           # (k,) int32 face id within its source, -1 = none
    landmarks: np.ndarray | None = None         # (k, 10) float32 x0..x4, y0..y4 source pixels, NaN = none

    def media(self, name: str) -> np.ndarray:
        """The ``timestamp`` or ``face_id`` column, filled with "none" when not given."""
        value = getattr(self, name)
        kind, none = MEDIA_COLUMNS[name]
        return np.full(len(self), none, dtype=kind) if value is None else np.asarray(value, dtype=kind)

    def landmark_rows(self) -> np.ndarray:
        """The ``landmarks`` column, NaN where not given."""
        if self.landmarks is None:
            return np.full((len(self), 10), np.nan, np.float32)
        return np.asarray(self.landmarks, np.float32).reshape(len(self), 10)

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

    @classmethod
    def empty(cls, dim: int, dtype) -> "Columns":
        """No rows (a commit of skipped ids only)."""
        return cls(np.zeros((0, dim), dtype), {c: [] for c in STRING_COLUMNS}, np.zeros(0, np.int64),
                   np.zeros(0, np.int32), np.zeros((0, 4), np.int32))

    @classmethod
    def read(cls, images, start: int, stop: int) -> "Columns":
        """Rows ``[start, stop)`` of a store's ``/images`` group, as stored."""
        return cls(embedding=images["embedding"][start:stop],
                   strings={c: read_strings(images[c], start, stop) for c in STRING_COLUMNS},
                   frame=images["frame"][start:stop], label=images["label"][start:stop],
                   box=images["box"][start:stop],
                   aus=images["aus"][start:stop] if "aus" in images else None,
                   au_mask=images["au_mask"][start:stop] if "au_mask" in images else None,
                   timestamp=images["timestamp"][start:stop] if "timestamp" in images else None,
                   face_id=images["face_id"][start:stop] if "face_id" in images else None,
                   landmarks=images[LANDMARKS][start:stop] if LANDMARKS in images else None)
