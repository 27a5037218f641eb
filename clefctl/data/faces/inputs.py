"""What the face pipeline reads: files, folders and globs expanded to images and videos, and
image decoding to RGB uint8 arrays."""

from __future__ import annotations

import glob
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from clefctl.errors import ClefError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp",
                              ".ppm", ".pgm", ".pbm", ".pnm", ".jp2"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """HxW grey, HxWx3 RGB or HxWx4 RGBA, uint8 or float in [0, 1] -> HxWx3 uint8 RGB."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating):
            scale = 255.0 if arr.size and float(np.nanmax(arr)) <= 1.0 else 1.0
            arr = np.clip(np.nan_to_num(arr) * scale, 0, 255).round().astype(np.uint8)
        elif arr.dtype == np.uint16:
            arr = (arr >> 8).astype(np.uint8)
        else:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        return np.stack([arr] * 3, axis=-1)
    if arr.ndim == 3 and arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        return np.ascontiguousarray(arr[:, :, :3])
    raise ValueError(f"expected an HxW or HxWx3 image, got shape {arr.shape}")


def read_image(path: str | os.PathLike) -> np.ndarray | None:
    """Decode an image file to HxWx3 uint8 RGB; None when it is empty, not an image, or outside the
    image bounds (:func:`clefctl.data.images.size_problem`: checked on the header before decoding,
    with one warning saying why it is skipped)."""
    from clefctl.data.images import size_problem

    try:
        with Image.open(str(path)) as head:
            width, height = head.size
    except Exception:  # noqa: BLE001 - not an image PIL knows: OpenCV may, and its pixels are checked below
        width = height = None
    problem = size_problem(width, height) if width is not None else None
    if problem is None:
        try:
            data = np.fromfile(str(path), dtype=np.uint8)
        except OSError:
            return None
        if data.size == 0:
            return None
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if width is not None or data.size < (64 << 20) else None
        if bgr is not None and bgr.size:
            problem = size_problem(bgr.shape[1], bgr.shape[0])
            if problem is None:
                return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if problem is not None:
        warnings.warn(f"{path}: skipped: {problem}", stacklevel=2)
        return None
    from clefctl.data.images import read_rgb

    try:
        return np.asarray(read_rgb(path))
    except Exception:  # noqa: BLE001 - any decoder failure means "unreadable"
        return None


def is_video(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def _has_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _media_in(folder: Path, wanted: frozenset) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in wanted)


def expand_inputs(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given, directories searched recursively for images and videos, globs expanded.

    Order is kept (directory and glob matches sorted), duplicates dropped. A path that does
    not exist, or a glob or directory that matches nothing, raises :class:`ClefError`.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    out: list[Path] = []
    seen: set[str] = set()

    def add(p: Path) -> None:
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            out.append(p)

    wanted = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS
    for item in inputs:
        text = os.fspath(item)
        path = Path(text).expanduser()
        if path.is_dir():
            found = _media_in(path, wanted)
            if not found:
                raise ClefError("directory holds no image or video files", path=path,
                                hint="extensions: " + " ".join(sorted(wanted)))
            for p in found:
                add(p)
        elif path.is_file():
            add(path)
        elif _has_glob(text):
            matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(text), recursive=True))
            files = []
            for m in matches:
                if m.is_dir():
                    files += _media_in(m, wanted)
                elif m.is_file():
                    files.append(m)
            if not files:
                raise ClefError("pattern matches no files", path=text, hint="check the glob")
            for p in files:
                add(p)
        else:
            raise ClefError("input not found", path=text, hint="give an image, video, folder or glob")
    if not out:
        raise ClefError("no inputs given", hint="name images, videos, folders or globs")
    return out
