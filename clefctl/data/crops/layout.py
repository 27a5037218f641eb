"""Where a face-crop cache lives, what identifies it, and its entry files.

A cache is one folder under :func:`cache_base` (``$CLEF_CROP_CACHE``, else ``<cache>/crops``,
:func:`clefctl.paths.cache_dir`) named ``<data set folder>-<size>px-<key hash>``. The key
(:func:`cache_key`, kept as ``key.json``) is everything the crops depend on: the data set's root
(resolved), the crop size and margin, alignment, the detector (``yunet`` with its settings and the
alignment template, or ``haar`` with its cascades') and :data:`VERSION` of this code; caches of an
older version (version 1: Haar only) are stale and a job says so. Inside::

    key.json              the key
    crops/<rel>.jpg       one aligned square crop per frame, mirroring the frame's path under the root
    chunks/NNNNNN.npz     entries written by one unit of work (a run of frames of one folder)
    index.npz             every entry, merged (written when a prepare finishes)
    complete.json         counts and the time it finished; absent while a prepare runs or after a kill
    no_face.txt, unreadable.txt   the frames without a crop, one path (relative to the root) a line

An entry (:class:`Entries`, one row per source frame) holds the frame's path relative to the root,
its size and modification time when it was cropped (to tell a changed frame), a status
(:data:`STATUS_NAMES`), the face box in the frame's full-resolution pixels (x, y, w, h), the eye
line's tilt in degrees that the crop removes and, from YuNet, the 5 landmarks in full-resolution
pixels (x0..x4, y0..y4; NaN from Haar). Files are numpy arrays without pickles.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clefctl.paths import cache_dir

VERSION = 2                    # 2: the detector (YuNet + landmark template, or Haar) is part of the key
DEFAULT_SIZE = 256
DEFAULT_MARGIN = 0.25
STATUS_FACE, STATUS_NEIGHBOUR, STATUS_NO_FACE, STATUS_UNREADABLE = 0, 1, 2, 3
# face: detected in the frame; neighbour: none detected, the box of the nearest frame of the same folder
# (within NEIGHBOUR_GAP frames) used; no_face: no crop; unreadable: the file could not be read or decoded.
STATUS_NAMES = ("face", "neighbour", "no_face", "unreadable")
NEIGHBOUR_GAP = 12
_OUTSIDE = "_outside"


@dataclass(frozen=True)
class CropSettings:
    """What a crop depends on besides the image: output side, margin, alignment, the detector
    (``detector``: ``yunet`` with its ``model`` file, or ``haar``; resolved from ``--detector`` by the
    parent process: workers never download), its ``min_confidence``, and its setting: ``"frames"``
    (camera frames with one large face) or ``"photos"`` (a manifest's or folder's own photos, faces
    of any size)."""

    size: int = DEFAULT_SIZE
    margin: float = DEFAULT_MARGIN
    align: bool = True
    setting: str = "frames"
    detector: str = "haar"
    model: str | None = None
    min_confidence: float | None = None

    def choice(self):
        from clefctl.data.faces.choice import DetectorChoice

        return DetectorChoice(self.detector, self.model, self.min_confidence)

    def make_detector(self):
        if self.setting not in ("frames", "photos"):
            from clefctl.errors import ClefError

            raise ClefError(f"unknown detector setting {self.setting!r}", hint="use frames or photos")
        return self.choice().make(self.setting)

    def to_dict(self) -> dict:
        return {"size": int(self.size), "margin": float(self.margin), "align": bool(self.align),
                "setting": self.setting, "detector": self.detector, "model": self.model,
                "min_confidence": self.min_confidence}


def cache_base() -> Path:
    """The folder holding every crop cache: ``$CLEF_CROP_CACHE``, else ``<cache>/crops``."""
    env = os.environ.get("CLEF_CROP_CACHE", "").strip()
    return Path(env).expanduser() if env else cache_dir() / "crops"


def source_base(root: Path) -> Path:
    """The folder crop paths are relative to: the data set's root (a manifest: its CSV's folder)."""
    root = Path(root).expanduser().resolve()
    return root.parent if root.is_file() else root


def cache_key(root: Path, settings: CropSettings) -> dict:
    """The key of the cache for data set folder ``root`` made with ``settings``."""
    from clefctl.data.faces.template import TEMPLATE_NAME

    d = settings.to_dict()
    d.pop("model")  # where the file lies is no part of what the crops are (its checksum is pinned)
    if settings.detector == "yunet":
        align = {"template": TEMPLATE_NAME}
    else:
        align = {"eyes": {"cascade": "haarcascade_eye.xml", "width": 96}}
    return {"version": VERSION, "root": str(Path(root).expanduser().resolve()), **d,
            "detector": settings.make_detector().describe(), **align, "neighbour_gap": NEIGHBOUR_GAP}


def cache_folder(root: Path, settings: CropSettings) -> Path:
    """The cache folder of ``root`` with ``settings`` (it may not exist yet)."""
    key = cache_key(root, settings)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9._+-]+", "_", Path(key["root"]).name).strip("._") or "data"
    return cache_base() / f"{slug}-{settings.size}px-{digest}"


def read_key(folder: Path) -> dict | None:
    try:
        return json.loads((Path(folder) / "key.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def caches_of(root: Path, version: int | None = VERSION) -> list[tuple[Path, dict]]:
    """(folder, key) of every cache made for ``root`` by this version (``version`` None: any
    version), any size, margin or detector."""
    want = str(Path(root).expanduser().resolve())
    base = cache_base()
    if not base.is_dir():
        return []
    found = []
    for folder in sorted(base.iterdir()):
        key = read_key(folder) if folder.is_dir() else None
        if key and key.get("root") == want and (version is None or key.get("version") == version):
            found.append((folder, key))
    return found


def source_rel(path: str | os.PathLike, base: Path) -> str:
    """``path`` relative to ``base`` in POSIX form; a path outside ``base`` stays absolute."""
    p = Path(path).expanduser()
    p = p if p.is_absolute() else Path.cwd() / p
    try:
        return Path(os.path.normpath(p)).relative_to(base).as_posix()
    except ValueError:
        return Path(os.path.normpath(p)).as_posix()


def sample_rels(root: Path, paths) -> list[str]:
    """:func:`source_rel` of each path in ``paths`` against the crop base of data set folder ``root``,
    by slicing off the root's prefix where the adapter built the path from it (~0.2 us a path
    instead of ~5: BP4D+ has 1.5M frames)."""
    base = source_base(root)
    raw = Path(root).expanduser()
    raw = raw.parent if raw.is_file() else raw
    prefixes = tuple(dict.fromkeys((str(raw) + os.sep, str(base) + os.sep)))
    out = []
    for p in paths:
        p = str(p)
        for prefix in prefixes:
            if p.startswith(prefix) and "/.." not in p and "/./" not in p:
                out.append(p[len(prefix):].replace(os.sep, "/"))
                break
        else:
            out.append(source_rel(p, base))
    return out


def bundle_frames(bundle) -> list[tuple[str, str]]:
    """Distinct (path relative to the crop base, path) pairs of the bundle's image files, in its order."""
    paths = [str(s.path) for s in bundle.samples if s.path is not None]
    return list(dict(zip(sample_rels(bundle.root, paths), paths)).items()) if paths else []


def crop_rel(rel: str) -> str:
    """The crop's path under ``crops/`` for a source path from :func:`source_rel`: the same path as a
    ``.jpg``; a source outside the root goes to ``_outside/<hash>.jpg``."""
    if rel.startswith("/"):
        return f"{_OUTSIDE}/{hashlib.sha1(rel.encode('utf-8')).hexdigest()[:20]}.jpg"
    stem, ext = os.path.splitext(rel)  # string work, not Path: ~0.3 us a frame (BP4D+ has 1.5M)
    return (stem if ext and "/" not in ext else rel) + ".jpg"


@dataclass
class Entries:
    """Entries as parallel arrays: ``rel`` (str), ``size`` and ``mtime`` (int64, the source's bytes and
    st_mtime_ns), ``status`` (uint8), ``box`` (int32, (n, 4)), ``angle`` (float32), ``landmarks``
    (float32, (n, 10): x0..x4, y0..y4 in full-resolution pixels; NaN without landmarks)."""

    rel: np.ndarray
    size: np.ndarray
    mtime: np.ndarray
    status: np.ndarray
    box: np.ndarray
    angle: np.ndarray
    landmarks: np.ndarray

    FIELDS = ("rel", "size", "mtime", "status", "box", "angle", "landmarks")

    @classmethod
    def empty(cls) -> "Entries":
        return cls.from_rows([])

    @classmethod
    def from_rows(cls, rows: list[tuple]) -> "Entries":
        """From ``(rel, size, mtime, status, (x, y, w, h), angle[, landmarks 5 x 2 or None])`` tuples."""
        return cls(rel=np.array([r[0] for r in rows], dtype=str),
                   size=np.array([r[1] for r in rows], dtype=np.int64),
                   mtime=np.array([r[2] for r in rows], dtype=np.int64),
                   status=np.array([r[3] for r in rows], dtype=np.uint8),
                   box=np.array([r[4] for r in rows], dtype=np.int32).reshape(-1, 4),
                   angle=np.array([r[5] for r in rows], dtype=np.float32),
                   landmarks=np.array([_flat_landmarks(r[6] if len(r) > 6 else None) for r in rows],
                                      dtype=np.float32).reshape(-1, 10))

    def __len__(self) -> int:
        return len(self.rel)

    def save(self, path: Path) -> None:
        """Written whole or not at all (a temporary file, then renamed)."""
        from clefctl.paths import atomic_path

        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **{f: getattr(self, f) for f in self.FIELDS})

    @classmethod
    def load(cls, path: Path) -> "Entries":
        with np.load(path, allow_pickle=False) as z:
            return cls(**{f: z[f] for f in cls.FIELDS})

    @classmethod
    def merge(cls, parts: list["Entries"]) -> "Entries":
        """One entry per source path; a later part's entry replaces an earlier one's."""
        if not parts:
            return cls.empty()
        whole = cls(**{f: np.concatenate([getattr(p, f) for p in parts]) for f in cls.FIELDS})
        if not len(whole):
            return whole
        # the last occurrence of each path wins: unique over the reversed order
        _, first_in_reversed = np.unique(whole.rel[::-1], return_index=True)
        keep = np.sort(len(whole) - 1 - first_in_reversed)
        return cls(**{f: getattr(whole, f)[keep] for f in cls.FIELDS})


def _flat_landmarks(points) -> list[float]:
    if points is None:
        return [float("nan")] * 10
    p = np.asarray(points, np.float64).reshape(5, 2)
    return p[:, 0].tolist() + p[:, 1].tolist()


def is_fresh(entries: "Entries", i: int, path: str, folder: Path) -> bool:
    """Whether entry ``i`` still holds for the source file ``path``: the file has the size and
    modification time it had when cropped (a file that was unreadable and is now gone counts as
    unchanged), and a cropped entry's crop file exists under ``folder`` (deleted, or lost in a power
    cut: crops are not fsynced one by one)."""
    try:
        st = os.stat(path)
        same = st.st_size == entries.size[i] and st.st_mtime_ns == entries.mtime[i]
    except OSError:
        same = entries.status[i] == STATUS_UNREADABLE
    if same and entries.status[i] in (STATUS_FACE, STATUS_NEIGHBOUR):
        same = os.path.exists(os.path.join(folder, "crops", crop_rel(entries.rel[i])))
    return bool(same)


def chunk_files(folder: Path) -> list[Path]:
    return sorted((Path(folder) / "chunks").glob("[0-9]*.npz"))


def read_chunks(folder: Path) -> tuple[Entries, int]:
    """(every chunk's entries merged, the number the next chunk file takes). A chunk file that
    cannot be read (a disk fault) is left out: its frames are cropped again."""
    parts, last = [], -1
    for f in chunk_files(folder):
        try:
            parts.append(Entries.load(f))
            last = max(last, int(f.stem))
        except (OSError, ValueError, KeyError):
            continue
    return Entries.merge(parts), last + 1
