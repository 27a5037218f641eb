"""sha256 of weight files: :func:`sha256_file` (downloads, checksums, fingerprints) and
:func:`sha256_file_cached` (remembered by path, size, inode and modification time, for model
fingerprints on a hot path).

Example::

    >>> from clefctl.weights.digest import sha256_file
    >>> sha256_file("model.pt")                  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from clefctl.paths import cache_dir, write_json_atomic


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


DIGEST_CACHE = "weights-digests.json"   # in cache_dir(): sha256 of weights files already hashed


def sha256_file_cached(path: str | Path) -> str:
    """:func:`sha256_file`, remembered in ``<cache_dir>/weights-digests.json`` by the file's real
    path, size, inode and modification time (ns): a rewritten file is hashed again. For model
    fingerprints on a hot path (a ViT-B-16 checkpoint takes about a second to hash); downloads
    are verified with :func:`sha256_file` itself."""
    real = os.path.realpath(path)
    st = os.stat(real)
    stamp = [st.st_size, st.st_ino, st.st_mtime_ns]
    cache_file = cache_dir() / DIGEST_CACHE
    try:
        known = json.loads(cache_file.read_text(encoding="utf-8"))
        if not isinstance(known, dict):
            known = {}
    except (OSError, ValueError):
        known = {}
    hit = known.get(real)
    if isinstance(hit, dict) and hit.get("stamp") == stamp and isinstance(hit.get("sha256"), str):
        return hit["sha256"]
    digest = sha256_file(real)
    known = {k: v for k, v in known.items() if k != real and os.path.exists(k)}
    known[real] = {"stamp": stamp, "sha256": digest}
    try:
        write_json_atomic(cache_file, dict(list(known.items())[-256:]))
    except OSError:  # a read-only cache folder: hash again next time
        pass
    return digest

