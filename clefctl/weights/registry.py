"""The registry of named weights, the weights folder and its checksum file.

Names resolve wherever weights are taken (``--weights farl-ep64``, through
:meth:`clefctl.workspace.Workspace.resolve_model`, :func:`clefctl.weights.download.resolve_named`).
Two kinds of entry:

* ``file``: a file clefctl downloads into :func:`weights_dir` (``$CLEF_WEIGHTS_DIR``, default
  ``<cache>/weights``) and loads by content. FaRL publishes no checksum, so the size and sha256 of
  the first download are recorded in ``checksums.json`` beside the weights and every later
  download or ``verify`` is checked against them (trust on first use).
* ``open_clip``: one of open_clip's own pretrained tags; open_clip downloads and caches it, and
  its URL carries the publisher's sha256.

Sizes and checksums are only listed where the publisher states them; None means unknown.

Example::

    >>> from clefctl.weights.registry import entry
    >>> entry("farl-ep64").file
    'FaRL-Base-Patch16-LAIONFace20M-ep64.pth'
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from clefctl import paths
from clefctl.errors import ClefError
from clefctl.weights import hub

WEIGHTS_DIR_ENV = "CLEF_WEIGHTS_DIR"
MIRROR_ENV = "CLEF_WEIGHTS_MIRROR"
CHECKSUM_FILE = "checksums.json"
FARL_RELEASE = "https://github.com/FacePerceiver/FaRL/releases/download/pretrained_weights/"
FARL_ARCH = "ViT-B-16-quickgelu"  # FaRL is CLIP ViT-B/16 trained with QuickGELU
# YuNet (libfacedetection's detector in OpenCV's model zoo): a fixed file, so its size and sha256
# are pinned here and a different file is refused from the first download on.
YUNET_FILE = "face_detection_yunet_2023mar.onnx"
YUNET_URL = ("https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/"
             "face_detection_yunet_2023mar.onnx")
YUNET_SIZE = 232_589
YUNET_SHA256 = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"


@dataclass(frozen=True)
class WeightsEntry:
    """One named weights release."""

    name: str
    arch: str
    description: str
    file: str                     # the file name (also the name under a mirror)
    url: str | None = None        # release URL (open_clip entries: taken from open_clip)
    size: int | None = None       # bytes, as published; None: unknown
    sha256: str | None = None     # as published; None: unknown (recorded at the first download)
    kind: str = "file"            # file | open_clip
    tag: str | None = None        # open_clip pretrained tag (kind open_clip)
    purpose: str = "model"        # model (CLIP weights for --weights) | detector (a face detector's file)


def _open_clip_entry(name: str, arch: str, tag: str, description: str) -> WeightsEntry:
    """An open_clip pretrained tag with the URL and checksum open_clip itself holds for it."""
    url = sha = None
    try:
        import open_clip

        cfg = open_clip.get_pretrained_cfg(arch, tag) or {}
        url = cfg.get("url") or None
        if url and "openaipublic" in url:  # open_clip checks OpenAI files against this part of the URL
            sha = url.rstrip("/").split("/")[-2]
    except ImportError:  # pragma: no cover - open_clip is a dependency
        pass
    return WeightsEntry(name, arch, description, os.path.basename(url or f"{arch}-{tag}"), url, None, sha,
                        kind="open_clip", tag=tag)


def _entries() -> dict[str, WeightsEntry]:
    farl = [("farl-ep16", "FaRL-Base-Patch16-LAIONFace20M-ep16.pth", "FaRL ViT-B/16, LAION-Face 20M, 16 epochs"),
            ("farl-ep64", "FaRL-Base-Patch16-LAIONFace20M-ep64.pth",
             "FaRL ViT-B/16, LAION-Face 20M, 64 epochs (CLEF's initialisation)"),
            ("farl-50m-ep16", "FaRL-Base-Patch16-LAIONFace50M-ep16.pth", "FaRL ViT-B/16, LAION-Face 50M, 16 epochs")]
    out = {name: WeightsEntry(name, FARL_ARCH, desc, file, FARL_RELEASE + file) for name, file, desc in farl}
    # the -quickgelu name: OpenAI trained with QuickGELU, and open_clip warns on a mismatch
    out["yunet"] = WeightsEntry(
        "yunet", "", "YuNet face detector (OpenCV model zoo, MIT licence): boxes, scores, 5 landmarks",
        YUNET_FILE, YUNET_URL, YUNET_SIZE, YUNET_SHA256, purpose="detector")
    out["openai-vit-b-16"] = _open_clip_entry("openai-vit-b-16", "ViT-B-16-quickgelu", "openai",
                                              "OpenAI CLIP ViT-B/16 (open_clip tag ViT-B-16-quickgelu/openai)")
    return out


#: name -> entry; tests may add entries (a ``file`` entry with any architecture).
REGISTRY: dict[str, WeightsEntry] = _entries()


def names() -> list[str]:
    return list(REGISTRY)


def entry(name: str) -> WeightsEntry:
    """The entry called ``name``; a ClefError listing the names otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ClefError(f"no named weights {name!r}", hint=f"known names: {', '.join(REGISTRY)}") from None


def weights_dir() -> Path:
    """``$CLEF_WEIGHTS_DIR``, else ``<cache>/weights`` (see :func:`clefctl.paths.cache_dir`)."""
    env = os.environ.get(WEIGHTS_DIR_ENV)
    return Path(env).expanduser() if env else paths.cache_dir() / "weights"


def download_url(e: WeightsEntry) -> str:
    """Where ``get`` fetches a file entry: ``$CLEF_WEIGHTS_MIRROR/<file>`` when set, else its URL."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if mirror:
        return mirror.rstrip("/") + "/" + e.file
    if not e.url:
        raise ClefError(f"weights {e.name} have no download URL",
                        hint=f"set {MIRROR_ENV} to a base URL holding {e.file}")
    return e.url


def local_path(e: WeightsEntry) -> Path | None:
    """The downloaded file of ``e`` (None when it is not there). open_clip entries: open_clip's
    cached copy in the Hugging Face cache, when there is one."""
    if e.kind == "file":
        p = weights_dir() / e.file
        return p if p.is_file() else None
    return hub.open_clip_cached(e)


# ----------------------------------------------------------------------------------------------
# The checksum file: what the first download of each file was
# ----------------------------------------------------------------------------------------------


def checksum_path() -> Path:
    return weights_dir() / CHECKSUM_FILE


def read_checksums() -> dict:
    """``{file name: {"size", "sha256", "url", "recorded"}}`` from ``checksums.json`` ({} when absent)."""
    p = checksum_path()
    if not p.is_file():
        return {}
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeError) as exc:
        raise ClefError(f"checksum file is not valid JSON ({exc})", path=p,
                        hint="restore it, or delete it to record the checksums again at the next download") from None
    if not isinstance(doc, dict):
        raise ClefError("checksum file does not hold a JSON object", path=p, hint="delete it to start again")
    return doc


def recorded(file: str) -> dict | None:
    rec = read_checksums().get(file)
    return rec if isinstance(rec, dict) and isinstance(rec.get("sha256"), str) else None


def record(file: str, size: int, sha256: str, url: str | None) -> None:
    """Add (or replace) the record of ``file``, under the folder's lock, atomically."""
    with paths.FileLock(weights_dir() / ".checksums.lock"):
        doc = read_checksums()
        doc[file] = {"size": int(size), "sha256": sha256, "url": url, "recorded": time.strftime("%Y-%m-%d %H:%M:%S")}
        paths.write_json_atomic(checksum_path(), doc)


def expected(e: WeightsEntry) -> tuple[int | None, str | None, str | None]:
    """(size, sha256, where from) that a file of ``e`` must have: the published values, else the
    recorded ones; ``where`` is ``published``, ``recorded`` or None (nothing known yet)."""
    if e.sha256:
        return e.size, e.sha256, "published"
    rec = recorded(e.file)
    if rec:
        return int(rec["size"]), rec["sha256"], "recorded"
    return e.size, None, None


def describe(e: WeightsEntry) -> dict:
    """The ``weights list --json`` record of ``e``."""
    size, sha, source = expected(e)
    p = local_path(e)
    return {"name": e.name, "arch": e.arch, "url": e.url, "file": e.file, "size": size, "sha256": sha,
            "checksum": source, "path": str(p) if p else None, "kind": e.kind, "tag": e.tag,
            "purpose": e.purpose, "description": e.description}
