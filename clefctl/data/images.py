"""Image files to RGB pixels: the one image reader (:func:`read_rgb`), reduced JPEG decoding
(:func:`read_reduced`, PIL's ``draft``), face-box crops (:func:`crop_to_box`) and the bounds every
image and video frame is held to before native code sees its pixels (:func:`size_problem`).

Torch-free, so worker processes that only read images (``clefctl data prepare``) do not import torch.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

MIN_SIDE = 16                  # pixels: a narrower image holds no face (and upscaling it misleads detectors)
MAX_ASPECT = 20.0              # longer side / shorter side: a strip, not a photo
MAX_PIXELS = 150_000_000       # decoded RGB of 450 MB; larger files are refused before they are decoded


class ImageBoundsError(ValueError):
    """An image (or video frame) outside :func:`size_problem`'s bounds; the message says why."""


def size_problem(width: int, height: int) -> str | None:
    """Why an image of ``width`` x ``height`` pixels is refused before decoding, or None. Bounds:
    each side at least :data:`MIN_SIDE`, the longer side at most :data:`MAX_ASPECT` times the
    shorter, at most :data:`MAX_PIXELS` pixels. OpenCV's detectors and resizers crash or allocate
    gigabytes on the rest (a 20000x3 strip scaled to a detection size; a decompression bomb)."""
    w, h = int(width), int(height)
    if min(w, h) < MIN_SIDE:
        return f"it is {w}x{h} pixels: a side shorter than {MIN_SIDE} pixels holds no face"
    if max(w, h) > MAX_ASPECT * min(w, h):
        return f"it is {w}x{h} pixels: more than {MAX_ASPECT:g} times longer than wide, a strip, not a photo"
    if w * h > MAX_PIXELS:
        return f"it is {w}x{h} pixels ({w * h / 1e6:.0f} megapixels, more than {MAX_PIXELS / 1e6:.0f})"
    return None


def check_size(width: int, height: int, *, faces: bool = True) -> None:
    """Raise :class:`ImageBoundsError` for an image outside the bounds of :func:`size_problem`
    (``faces=False``: only the pixel count, for images that go to a model, not a face detector:
    a data set's small crops are fine there)."""
    if faces:
        problem = size_problem(width, height)
    else:
        problem = size_problem(max(width, MIN_SIDE), max(height, MIN_SIDE)) if width * height > MAX_PIXELS else None
    if problem:
        raise ImageBoundsError(problem)


def read_rgb(path: str | Path, min_side: int | None = None) -> Image.Image:
    """Decode an image file as RGB, fully (a truncated file fails here, not later).

    The one image reader: raises ``OSError``/``ValueError`` (PIL's errors) for files that cannot be
    read or decoded, for the caller to skip and count or to report. ``min_side``: a JPEG at least
    twice that size is decoded reduced (:func:`read_reduced`); any other image is decoded in full,
    to the same pixels as without it."""
    return read_reduced(path, min_side)[0]


def read_reduced(path: str | Path, min_side: int | None = None, box=None) -> tuple[Image.Image, float]:
    """``(RGB image, scale)``: the file decoded at ``scale`` (1, 1/2, 1/4 or 1/8) of its size.

    A JPEG is decoded reduced in the DCT (PIL's ``draft``: several times cheaper than decoding in
    full and resizing) by the largest factor that keeps the shorter side of ``box`` (x, y, w, h in
    the file's pixels; default the whole image) at least ``min_side`` pixels; other formats, and
    JPEGs smaller than twice that, are decoded in full (``scale`` 1). Multiply a box by ``scale``
    to cut the reduced image."""
    with Image.open(path) as raw:
        full_w, full_h = raw.size
        check_size(full_w, full_h, faces=False)   # from the header, before any pixel is decoded
        factor = _draft_factor(full_w, full_h, min_side, box) if raw.format == "JPEG" else 1
        if factor > 1:
            raw.draft(None, (-(-full_w // factor), -(-full_h // factor)))
        raw.load()
        img = raw.convert("RGB")
    return img, img.width / full_w


def decode_size_for(image_size: int) -> int:
    """The ``min_side`` a model of input ``image_size`` decodes JPEGs to: twice its input, the
    resolution :func:`cache_images` keeps (random crops and the final resize still start from
    more pixels than they make). Frames at least twice that (BP4D's 1040x1392 for 224 px) are
    decoded at 1/2, 1/4 or 1/8; smaller images, such as the synthetic sets, decode in full."""
    return 2 * int(image_size)


def _draft_factor(width: int, height: int, min_side: int | None, box) -> int:
    """The JPEG reduction (1, 2, 4 or 8) that keeps the shorter side of ``box`` >= ``min_side``."""
    if not min_side or min_side <= 0:
        return 1
    short = min(width, height) if box is None else min(int(box[2]), int(box[3]))
    for factor in (8, 4, 2):
        if short >= factor * min_side:
            return factor
    return 1


def clamp_box(box, width: int, height: int) -> tuple[int, int, int, int] | None:
    """A face box (x, y, w, h) as PIL crop corners (left, top, right, bottom) clamped to a
    ``width`` x ``height`` image; None when nothing of it lies inside."""
    x, y, w, h = (int(v) for v in box)
    left, top = max(0, x), max(0, y)
    right, bottom = min(width, x + w), min(height, y + h)
    if right <= left or bottom <= top:
        return None
    return left, top, right, bottom


def crop_to_box(img: Image.Image, box) -> Image.Image | None:
    """``img`` cut to the face box (x, y, w, h), clamped to the image; None when the box lies outside."""
    corners = clamp_box(box, img.width, img.height)
    if corners is None:
        return None
    return img if corners == (0, 0, img.width, img.height) else img.crop(corners)


def read_cropped(path: str | Path, box=None, min_side: int | None = None) -> Image.Image | None:
    """The file cut to the face ``box`` (x, y, w, h in the file's pixels, clamped; the whole image when
    None), decoded reduced as long as the box keeps ``min_side`` pixels on its shorter side
    (:func:`read_reduced`: a 128 px thumbnail of a face in a 1040x1392 frame decodes it at 1/2). None
    when the box lies outside the image."""
    img, scale = read_reduced(path, min_side, box)
    if box is None:
        return img
    return crop_to_box(img, box if scale == 1 else tuple(int(round(v * scale)) for v in box))
