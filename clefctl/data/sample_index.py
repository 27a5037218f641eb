"""The data set index cache (not a FAISS index, which is :mod:`clefctl.store.index`): an adapter's samples,
reused while its label files and folders are unchanged.

Indexing a large label tree (BP4D+: 1.5M labelled frames in 1,400 label files) parses every label
file and lists every frame folder. :func:`cached_bundle` keeps the resulting
:class:`~clefctl.data.records.DatasetBundle` as a :class:`~clefctl.data.table.SampleTable` file
under ``<cache>/index/`` (:func:`clefctl.paths.cache_dir`), one file per (adapter, root, options),
stamped with the size and modification time of every label file and the modification time of every
frame folder (which changes when a file in it is added, removed or renamed). A load whose key and
stamp match reads the file instead; any difference rebuilds and rewrites it. A file that cannot be
read is rebuilt, never trusted. Several processes loading at once (torchrun ranks) read a valid
file side by side; when it must be built they take turns on a lock, so one builds and the others
then read it.

Small indexes (fewer than :data:`MIN_SAMPLES` samples) are not written: parsing them takes less
time than reading a file. ``CLEF_INDEX_CACHE=0`` turns the cache off.

Example::

    >>> bundle = cached_bundle({"adapter": "bp4d", "root": "/data/BP4D", "mode": "au"},
    ...                        label_files + frame_folders, lambda: parse_everything())  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat as statmod
from pathlib import Path
from typing import Callable, Iterable

from clefctl.data.records import DatasetBundle
from clefctl.data.table import SampleTable
from clefctl.paths import FileLock, atomic_path, cache_dir

log = logging.getLogger("clefctl.data")

MIN_SAMPLES = 20_000
VERSION = 1
_BUNDLE_FIELDS = ("name", "task", "classes", "prompts", "activities", "canonical_folds", "skipped", "dropped",
                  "missing")


def enabled() -> bool:
    return os.environ.get("CLEF_INDEX_CACHE", "1").strip().lower() not in ("0", "no", "off", "false")


def index_path(key: dict) -> Path:
    """The cache file of ``key`` (the adapter, its root and options)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:24]
    return cache_dir() / "index" / f"{key.get('adapter', 'index')}-{digest}.npz"


def stamp(paths: Iterable[Path]) -> list:
    """[name, size, mtime_ns] of each file and [name, mtime_ns] of each folder (None when missing)."""
    out = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            out.append([str(p), None])
            continue
        out.append([str(p), st.st_mtime_ns] if statmod.S_ISDIR(st.st_mode) else [str(p), st.st_size, st.st_mtime_ns])
    return out


def cached_bundle(key: dict, inputs: Iterable[Path], build: Callable[[], DatasetBundle]) -> DatasetBundle:
    """``build()``'s bundle, from the cache when ``key`` and the stamp of ``inputs`` (every label file
    and frame folder the index reads) are those it was built with."""
    if not enabled():
        return build()
    key = json.loads(json.dumps(dict(key, version=VERSION), default=str))
    path = index_path(key)
    current = stamp(inputs)  # taken before building: a change made while it builds shows next time
    cached = _read(path, key, current)
    if cached is not None:
        return cached
    try:
        lock = FileLock(str(path) + ".lock").acquire()
    except OSError:  # a read-only cache folder: no cache
        return build()
    try:
        cached = _read(path, key, current)  # another process (rank) may have built it meanwhile
        if cached is not None:
            return cached
        bundle = build()
        if len(bundle.samples) >= MIN_SAMPLES:
            _write(path, key, current, bundle)
        return bundle
    finally:
        lock.release()


def _read(path: Path, key: dict, current: list) -> DatasetBundle | None:
    if not path.is_file():
        return None
    try:
        table, extra = SampleTable.load(path)
        if extra.get("key") != key or extra.get("stamp") != current:
            return None
        fields = extra["bundle"]
        bundle = DatasetBundle(samples=table.to_samples(), root=Path(fields.pop("root")), **fields)
        log.info("index of %s read from %s", key.get("root"), path)
        return bundle
    except (OSError, ValueError, KeyError, TypeError) as exc:  # damaged or from another version: rebuilt
        log.info("index cache %s not used (%s)", path, exc)
        return None


def _write(path: Path, key: dict, current: list, bundle: DatasetBundle) -> None:
    fields = {name: getattr(bundle, name) for name in _BUNDLE_FIELDS}
    fields["root"] = str(bundle.root)
    try:
        table = SampleTable.from_samples(bundle.samples)
        with atomic_path(path) as tmp:
            table.save(tmp, extra={"key": key, "stamp": current, "bundle": fields})
    except (OSError, ValueError) as exc:  # a full or read-only disk, or samples a file cannot hold
        log.info("index cache %s not written (%s)", path, exc)
