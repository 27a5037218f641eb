"""The files of a saved index (``<store>.faiss`` and an ``ivf-ondisk`` index's ``<store>.faiss.ivfdata``),
checked before FAISS opens them.

FAISS reads these files in native code and memory-maps them: a cut file is a bus error (rc 135), not
an exception. So :func:`describe` records each file's size and digest in ``<store>.faiss.json`` when
the index is saved, and :func:`damage` compares them before FAISS is given the files; a mismatch makes
the index stale (``clefctl index status`` says which file and why, a query searches without it).

The digest is the sha256 of the whole file up to :data:`FULL_DIGEST_BYTES` (1 GiB, about 2M rows of a
512-d ``ivf-sq8`` index; sha256 ran at about 2 GB/s here, so 0.5 s at that size); a larger file (the
lists of an on-disk index, which exists so that a query need not read them all) gets a sampled
digest: its size, first and last MiB and 256 blocks of 64 KiB spread evenly (18 MiB read whatever
the size). The size is always compared, so a cut or grown file is always caught; a file that
checked out is not hashed again in the same process while its size, mtime and ctime stay the same.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

FULL_DIGEST_BYTES = 1 << 30
SAMPLE_EDGE = 1 << 20
SAMPLE_BLOCKS = 256
SAMPLE_BLOCK = 1 << 16
DAMAGED = "damaged: "           # the prefix of every reason :func:`damage` gives

_checked: dict[tuple, str] = {}


def _stat_key(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def digest(path: str | os.PathLike) -> tuple[str, str]:
    """``(kind, hex)``: ``("sha256", ...)`` of the whole file, or ``("sampled_sha256", ...)`` above
    :data:`FULL_DIGEST_BYTES` (see the module docstring)."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= FULL_DIGEST_BYTES:
            while block := f.read(1 << 20):
                h.update(block)
            return "sha256", h.hexdigest()
        h.update(str(size).encode())
        step = (size - 2 * SAMPLE_EDGE) // (SAMPLE_BLOCKS + 1)
        spans = [(0, SAMPLE_EDGE)] + [(SAMPLE_EDGE + (i + 1) * step, SAMPLE_BLOCK) for i in range(SAMPLE_BLOCKS)]
        for offset, length in spans + [(size - SAMPLE_EDGE, SAMPLE_EDGE)]:
            f.seek(offset)
            h.update(f.read(length))
    return "sampled_sha256", h.hexdigest()


def describe(paths) -> dict:
    """``{file name: {"bytes": size, <digest kind>: hex}}`` of the files just saved."""
    out = {}
    for p in map(Path, paths):
        kind, value = digest(p)
        out[p.name] = {"bytes": p.stat().st_size, kind: value}
        _checked[_stat_key(p)] = value
    return out


def damage(folder: str | os.PathLike, recorded: dict | None) -> str | None:
    """Why the saved files in ``folder`` differ from ``recorded`` (:func:`describe`'s record), or None
    when each has its recorded size and digest. Every reason starts with :data:`DAMAGED`."""
    if not recorded:
        return DAMAGED + "saved without the sizes and checksums of its files (an index of an older clefctl)"
    for name, want in recorded.items():
        p = Path(folder) / name
        if not p.is_file():
            return DAMAGED + f"{name} is missing"
        size = p.stat().st_size
        if size != want.get("bytes"):
            return DAMAGED + f"{name} has {size:,} bytes, {int(want.get('bytes', -1)):,} were saved (cut or changed)"
        kind = "sha256" if "sha256" in want else "sampled_sha256"
        key = _stat_key(p)
        if _checked.get(key) == want.get(kind):
            continue
        got_kind, got = digest(p)
        if got_kind != kind or got != want.get(kind):
            return DAMAGED + f"{name} does not match its checksum (changed since it was saved)"
        _checked[key] = got
    return None


__all__ = ["describe", "damage", "digest", "DAMAGED", "FULL_DIGEST_BYTES"]
