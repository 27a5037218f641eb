"""Media of ``clefctl serve``: which files the server may read, and the face crops it sends.

Files are served **by store row only** (``/media/ROW``): the client never sends a path. Even so, a
row's file is opened only when it is one of the store's own sources: :class:`SourceGuard` knows
the folders that hold the store's files (from the rows it lists, at start), and refuses with 403 a
stored path that holds ``..``, that is relative, or that resolves (symbolic links followed, at
every request) to a file outside those folders, such as a link in the data folder that points
at ``/etc/passwd``.

A row's face is its image file cut to its stored face box, or for a video row (the store's
``source`` column names a video) the frame ``frame`` (1-based, OpenFace's numbering) of that
video cut to the box. :func:`thumbnail_jpeg` pads it to a square JPEG for the result grid.
"""

from __future__ import annotations

import io
import mimetypes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from clefctl.errors import ClefError

THUMB_SIZES = (64, 96, 128, 160, 192, 256, 320, 384, 512)   # the sizes /media/ROW?size= takes


class MediaError(ClefError):
    """A media request that cannot be answered: ``status`` 403 (refused) or 404 (no such file)."""

    def __init__(self, message: str, status: int, *, path: str | None = None, hint: str | None = None):
        super().__init__(message, path=path, hint=hint)
        self.status = status


def is_video(path: str) -> bool:
    """A video file by its name (the face pipeline's list of video suffixes)."""
    from clefctl.data.faces import is_video as _is_video

    return _is_video(path)


def media_type(path: str) -> str:
    return mimetypes.guess_type(path)[0] or "application/octet-stream"


def _has_dotdot(path: str) -> bool:
    return ".." in Path(path).parts


class SourceGuard:
    """The folders the store's files lie in; :meth:`check` admits only files directly inside them.

    ``files`` are the store's stored paths (absolute, as ``embed`` writes them). A path with
    ``..`` or a relative one contributes no folder. The folders are kept as written and as
    resolved (a data folder that is itself a symbolic link stays allowed); the file asked for is
    resolved at each request, so a link that points out of them is refused.
    """

    def __init__(self, files: Iterable[str]):
        folders = {os.path.dirname(os.path.normpath(f)) for f in set(files)
                   if f and os.path.isabs(f) and not _has_dotdot(f)}
        self.folders = frozenset(folders)
        self.real_folders = frozenset(os.path.realpath(d) for d in folders)

    def check(self, stored: str, row: int) -> str:
        """The resolved file of ``row`` (stored path ``stored``), or :class:`MediaError` 403/404."""
        if not stored:
            raise MediaError(f"row {row} has no image file (it was embedded from memory)", 404)
        if _has_dotdot(stored) or not os.path.isabs(stored):
            raise MediaError(f"row {row}: the stored path {stored!r} is not an absolute path without '..'; "
                             "it is not served", 403)
        real = os.path.realpath(stored)
        if os.path.dirname(real) not in self.real_folders:
            raise MediaError(f"row {row}: {stored!r} resolves to {real!r}, outside the store's own source "
                             "folders; it is not served", 403)
        if not os.path.isfile(real):
            raise MediaError(f"row {row}: the file is missing ({stored})", 404,
                             hint="it was moved or deleted since `clefctl embed`")
        return real


@dataclass
class RowMedia:
    """Where a row's face comes from: the file (image or video), the 1-based frame of a video, the box
    and, from YuNet, the 5 landmarks (5 x 2 source pixels) that align it."""

    row: int
    file: str
    frame: int | None = None
    box: tuple[int, int, int, int] | None = None
    landmarks: np.ndarray | None = None

    @property
    def video(self) -> bool:
        return bool(self.file) and is_video(self.file)


def read_video_frame(path: str, frame: int):
    """Frame ``frame`` (1-based) of a video as a PIL RGB image (the face pipeline's frame reader)."""
    from PIL import Image

    from clefctl.data.faces import read_frame

    try:
        return Image.fromarray(read_frame(path, int(frame)))
    except ClefError as exc:
        raise MediaError(exc.bare_message, 404, path=path) from None


def _aligned_face(media: RowMedia, real: str, min_side: int | None):
    """The row's face on the alignment template (what the model saw), ``min_side`` (>= 64) pixels square."""
    from PIL import Image

    from clefctl.data.faces.template import aligned_crop
    from clefctl.data.images import read_reduced

    side = max(64, int(min_side or 224))
    if media.video:
        img, scale = read_video_frame(real, media.frame or 1), 1.0
    else:
        try:
            img, scale = read_reduced(real, side, media.box)
        except (OSError, ValueError) as exc:
            raise MediaError(f"row {media.row}: cannot read the image ({exc})", 404, path=media.file) from None
    return Image.fromarray(aligned_crop(np.asarray(img), media.landmarks * scale, side))


def face_image(media: RowMedia, guard: SourceGuard, min_side: int | None = None):
    """The row's face as a PIL RGB image: aligned on the template when the row has landmarks (as the
    model saw it), else its image (or video frame) cut to its stored box; a JPEG is decoded reduced
    as long as the face keeps ``min_side`` pixels (a thumbnail's size)."""
    from clefctl.data.images import crop_to_box, read_cropped

    real = guard.check(media.file, media.row)
    if media.landmarks is not None:
        return _aligned_face(media, real, min_side)
    if not media.video:
        try:
            face = read_cropped(real, media.box, min_side)
            return face if face is not None else read_cropped(real, None, min_side)
        except (OSError, ValueError) as exc:
            raise MediaError(f"row {media.row}: cannot read the image ({exc})", 404, path=media.file) from None
    img = read_video_frame(real, media.frame or 1)
    if media.box is not None:
        face = crop_to_box(img, media.box)
        img = img if face is None else face
    return img


def thumbnail_jpeg(img, size: int) -> bytes:
    """``img`` scaled into a ``size`` x ``size`` square (dark padding), as JPEG bytes."""
    from PIL import Image, ImageOps

    tile = ImageOps.pad(img, (size, size), method=Image.BICUBIC, color=(24, 24, 28))
    buf = io.BytesIO()
    tile.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def thumb_size(value: str | None, default: int = 160) -> int:
    """The ``size`` query value, snapped up to one of :data:`THUMB_SIZES` (bounded work per request)."""
    if value in (None, ""):
        return default
    try:
        n = int(value)
    except ValueError:
        raise ClefError(f"size must be a whole number of pixels, not {value!r}") from None
    for s in THUMB_SIZES:
        if n <= s:
            return s
    return THUMB_SIZES[-1]
