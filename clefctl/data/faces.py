"""Face detection, eye alignment and cropping for raw photos and videos.

Uses the Haar cascades bundled with OpenCV (``cv2.data.haarcascades``), so it runs offline:
frontal-face "default" with "alt2" as fallback for detection, the eye cascade for alignment.
:class:`FaceCropper` turns one RGB array into one square face crop; :func:`prepare` runs it
over files, directories, globs and video frames and writes the crops plus ``faces.csv``.

Angles follow OpenCV: positive = counter-clockwise rotation of the image (as displayed)
about the face centre, applied so that the eye centres end up level.
"""

from __future__ import annotations

import csv
import glob
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image

from clefctl.errors import ClefError
from clefctl.paths import atomic_path

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp",
                              ".ppm", ".pgm", ".pbm", ".pnm", ".jp2"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm"})
CSV_COLUMNS = ("source", "frame", "timestamp", "crop_path", "x", "y", "w", "h", "angle", "found")

_SMALL_SIDE = 128      # images with a shorter side below this are upscaled for detection
_SMALL_PAD = 0.25      # ... and padded (edge replicate) so tightly cropped faces fit the window
_MAX_SIDE = 1024       # larger images are downscaled for detection (boxes mapped back)
_MAX_EYE_TILT = 30.0   # degrees; a steeper eye line is taken as a wrong eye pair


class Box(NamedTuple):
    """A detected face in original image pixels; ``score`` is the cascade's neighbour count."""

    x: int
    y: int
    w: int
    h: int
    score: float


@dataclass
class CropResult:
    """The crop of the largest face; ``image`` and ``box`` are None when no face was found.

    ``aligned`` is True when two eyes were found in the upper half of the box and the crop
    was rotated by ``angle`` degrees to level them; False means an unrotated crop.
    """

    image: Image.Image | None
    box: tuple[int, int, int, int] | None
    angle: float
    found: bool
    aligned: bool = False
    eyes: tuple[tuple[float, float], tuple[float, float]] | None = None


def _cascade(name: str) -> cv2.CascadeClassifier:
    path = os.path.join(cv2.data.haarcascades, name)
    clf = cv2.CascadeClassifier(path)
    if clf.empty():
        raise ClefError("cannot load the OpenCV Haar cascade", path=path,
                        hint="reinstall opencv-python-headless")
    return clf


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


class FaceCropper:
    """Detect the largest face, level the eyes, cut a square crop with a margin.

    ``margin`` is added on each side as a fraction of the face box (0.25: the crop is 1.5x
    the box), ``size`` the output side in pixels, ``min_size`` the smallest face side in
    original pixels (None: 1/20 of the image's shorter side).
    """

    def __init__(self, margin: float = 0.25, size: int = 224, align: bool = True,
                 min_size: int | None = None, scale_factor: float = 1.1, min_neighbors: int = 5):
        if margin < 0:
            raise ClefError(f"margin must be >= 0, got {margin}")
        if size <= 0:
            raise ClefError(f"crop size must be positive, got {size}")
        self.margin = float(margin)
        self.size = int(size)
        self.align = bool(align)
        self.min_size = min_size
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self._faces = [_cascade("haarcascade_frontalface_default.xml"),
                       _cascade("haarcascade_frontalface_alt2.xml")]
        self._eyes = _cascade("haarcascade_eye.xml") if align else None

    # -- detection ----------------------------------------------------------------------

    def _detection_image(self, rgb: np.ndarray) -> tuple[np.ndarray, float, int]:
        """Grey, histogram-equalised image to search, its scale and padding (det = orig*s + pad)."""
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        h, w = grey.shape
        scale, pad = 1.0, 0
        if min(h, w) < _SMALL_SIDE:
            scale = _SMALL_SIDE / min(h, w)
            grey = cv2.resize(grey, (round(w * scale), round(h * scale)),
                              interpolation=cv2.INTER_CUBIC)
            pad = round(_SMALL_PAD * _SMALL_SIDE)
            grey = cv2.copyMakeBorder(grey, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        elif max(h, w) > _MAX_SIDE:
            scale = _MAX_SIDE / max(h, w)
            grey = cv2.resize(grey, (round(w * scale), round(h * scale)),
                              interpolation=cv2.INTER_AREA)
        return cv2.equalizeHist(grey), scale, pad

    def _detect_raw(self, rgb: np.ndarray):
        grey, scale, pad = self._detection_image(rgb)
        if self.min_size is not None:
            min_side = max(20, round(self.min_size * scale))
        else:
            min_side = max(20, round(min(rgb.shape[:2]) * scale / 20))
        for clf, neighbours in ((self._faces[0], self.min_neighbors),
                                (self._faces[1], max(1, self.min_neighbors - 2))):
            rects, counts = clf.detectMultiScale2(grey, scaleFactor=self.scale_factor,
                                                  minNeighbors=neighbours,
                                                  minSize=(min_side, min_side))
            if len(rects):
                order = sorted(range(len(rects)), key=lambda i: -int(rects[i][2] * rects[i][3]))
                return grey, scale, pad, [(rects[i], float(counts[i])) for i in order]
        return grey, scale, pad, []

    @staticmethod
    def _to_original(rect, scale: float, pad: int) -> tuple[float, float, float, float]:
        x, y, w, h = (float(v) for v in rect)
        return (x - pad) / scale, (y - pad) / scale, w / scale, h / scale

    @staticmethod
    def _clip_box(box, shape) -> tuple[int, int, int, int]:
        H, W = shape[:2]
        x0, y0 = max(0, round(box[0])), max(0, round(box[1]))
        x1, y1 = min(W, round(box[0] + box[2])), min(H, round(box[1] + box[3]))
        return x0, y0, max(1, x1 - x0), max(1, y1 - y0)

    def detect(self, rgb: np.ndarray) -> list[Box]:
        """Faces in an RGB (or grey) image, largest first, in original pixel coordinates."""
        rgb = to_rgb_uint8(rgb)
        _, scale, pad, found = self._detect_raw(rgb)
        boxes = []
        for rect, score in found:
            x, y, w, h = self._clip_box(self._to_original(rect, scale, pad), rgb.shape)
            boxes.append(Box(x, y, w, h, score))
        return boxes

    # -- alignment ----------------------------------------------------------------------

    def _eye_angle(self, grey: np.ndarray, rect):
        """Angle (degrees) levelling the eyes, and the two eye centres in detection pixels."""
        x, y, w, h = (int(v) for v in rect)
        H, W = grey.shape
        x0, y0, x1, y1 = max(0, x), max(0, y), min(W, x + w), min(H, y + h // 2 + h // 10)
        roi = grey[y0:y1, x0:x1]
        if roi.size == 0:
            return None
        min_eye = max(8, w // 10)
        eyes = self._eyes.detectMultiScale(roi, scaleFactor=1.1, minNeighbors=3,
                                           minSize=(min_eye, min_eye), maxSize=(w // 2, w // 2))
        centre_x = x + w / 2.0
        left, right = [], []
        for ex, ey, ew, eh in eyes:
            cx, cy = x0 + ex + ew / 2.0, y0 + ey + eh / 2.0
            if cy > y + h / 2.0:
                continue
            (left if cx < centre_x else right).append((ew * eh, cx, cy))
        if not left or not right:
            return None
        _, lx, ly = max(left)
        _, rx, ry = max(right)
        angle = math.degrees(math.atan2(ry - ly, rx - lx))
        if abs(angle) > _MAX_EYE_TILT or rx - lx < w / 6.0:
            return None
        return angle, ((lx, ly), (rx, ry))

    # -- cropping -----------------------------------------------------------------------

    def crop_box(self, rgb: np.ndarray, box: Sequence[float], angle: float = 0.0) -> Image.Image:
        """Square crop around ``box`` (x, y, w, h) with the margin, rotated by ``angle``.

        Unrotated crops are shifted to stay inside the image when they fit; what still lies
        outside the image (and the corners of rotated crops) is padded black.
        """
        rgb = to_rgb_uint8(rgb)
        H, W = rgb.shape[:2]
        x, y, w, h = (float(v) for v in box[:4])
        cx, cy = x + w / 2.0, y + h / 2.0
        side = max(1, round(max(w, h) * (1.0 + 2.0 * self.margin)))
        if angle:
            m = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)
            m[0, 2] -= cx - side / 2.0
            m[1, 2] -= cy - side / 2.0
            patch = cv2.warpAffine(rgb, m, (side, side), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
        else:
            left, top = round(cx - side / 2.0), round(cy - side / 2.0)
            if side <= W:
                left = min(max(left, 0), W - side)
            if side <= H:
                top = min(max(top, 0), H - side)
            patch = np.zeros((side, side, 3), np.uint8)
            sx0, sy0 = max(left, 0), max(top, 0)
            sx1, sy1 = min(left + side, W), min(top + side, H)
            if sx1 > sx0 and sy1 > sy0:
                patch[sy0 - top:sy1 - top, sx0 - left:sx1 - left] = rgb[sy0:sy1, sx0:sx1]
        interp = cv2.INTER_AREA if side > self.size else cv2.INTER_CUBIC
        out = cv2.resize(patch, (self.size, self.size), interpolation=interp)
        return Image.fromarray(out, mode="RGB")

    def crop(self, rgb: np.ndarray) -> CropResult:
        """Crop the largest face; ``found=False`` (image None) when there is none."""
        rgb = to_rgb_uint8(rgb)
        grey, scale, pad, found = self._detect_raw(rgb)
        if not found:
            return CropResult(image=None, box=None, angle=0.0, found=False)
        rect, _ = found[0]
        box = self._to_original(rect, scale, pad)
        angle, eyes, aligned = 0.0, None, False
        if self.align:
            level = self._eye_angle(grey, rect)
            if level is not None:
                angle = level[0]
                eyes = tuple(((ex - pad) / scale, (ey - pad) / scale) for ex, ey in level[1])
                aligned = True
        image = self.crop_box(rgb, box, angle)
        return CropResult(image=image, box=self._clip_box(box, rgb.shape), angle=round(angle, 2),
                          found=True, aligned=aligned, eyes=eyes)


# -- inputs ------------------------------------------------------------------------------

def read_image(path: str | os.PathLike) -> np.ndarray | None:
    """Decode an image file to HxWx3 uint8 RGB; None when it is empty or not an image."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        from clefctl.data.records import read_rgb

        try:
            return np.asarray(read_rgb(path))
        except Exception:  # noqa: BLE001 - any decoder failure means "unreadable"
            return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def is_video(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def _has_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


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
            found = sorted(p for p in path.rglob("*")
                           if p.is_file() and p.suffix.lower() in wanted)
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
                    files += sorted(p for p in m.rglob("*")
                                    if p.is_file() and p.suffix.lower() in wanted)
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


def _open_video(path: str | os.PathLike) -> cv2.VideoCapture:
    path = Path(path)
    if not path.is_file():
        raise ClefError("video not found", path=path)
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise ClefError("cannot open the video (unsupported or corrupt file)", path=path,
                        hint="re-encode it, e.g. to H.264 .mp4 or MJPG .avi")
    return cap


def iter_video_frames(path: str | os.PathLike, every: int = 1,
                      max_frames: int | None = None) -> Iterator[tuple[int, float, np.ndarray]]:
    """Yield ``(frame_index, timestamp_s, rgb)`` for every ``every``-th frame, at most ``max_frames``.

    A video that cannot be opened raises :class:`ClefError` naming the file.
    """
    if every < 1:
        raise ClefError(f"--every must be >= 1, got {every}")
    cap = _open_video(path)
    try:
        fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        index = yielded = 0
        while max_frames is None or yielded < max_frames:
            if index % every == 0:
                ok, bgr = cap.read()
                if not ok or bgr is None:
                    break
                if fps > 0:
                    stamp = index / fps
                else:
                    stamp = (cap.get(cv2.CAP_PROP_POS_MSEC) or 0.0) / 1000.0
                yield index, round(stamp, 4), cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                yielded += 1
            elif not cap.grab():
                break
            index += 1
    finally:
        cap.release()


def video_frame_estimate(path: str | os.PathLike, every: int = 1,
                         max_frames: int | None = None) -> int:
    """How many frames :func:`iter_video_frames` will probably yield (0 when unknown)."""
    cap = cv2.VideoCapture(str(path))
    try:
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if cap.isOpened() else 0
    finally:
        cap.release()
    n = max(0, -(-total // max(1, every)))
    return min(n, max_frames) if max_frames is not None else n


# -- prepare -----------------------------------------------------------------------------

@dataclass
class PrepareReport:
    """What :func:`prepare` did. ``no_face`` names images (``path`` or ``path@frame``) without
    a face; ``unreadable`` the files skipped because they could not be read or decoded."""

    out_dir: str
    csv_path: str
    images: int = 0            # still images decoded
    videos: int = 0            # videos opened
    frames: int = 0            # video frames sampled
    faces: int = 0             # crops written
    no_face: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    @property
    def processed(self) -> int:
        return self.images + self.frames

    def to_dict(self) -> dict:
        d = asdict(self)
        d["processed"] = self.processed
        return d


def _safe_stem(path: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem).strip("._") or "input"
    return stem[:60]


def _save_jpeg(image: Image.Image, target: Path) -> None:
    with atomic_path(target) as tmp:
        image.save(tmp, format="JPEG", quality=95)


def _row(source: str, frame, stamp, crop_path: str, result: CropResult) -> dict:
    box = result.box or ("", "", "", "")
    return {"source": source, "frame": "" if frame is None else frame,
            "timestamp": "" if stamp is None else stamp, "crop_path": crop_path,
            "x": box[0], "y": box[1], "w": box[2], "h": box[3],
            "angle": result.angle if result.found else "", "found": int(result.found)}


def prepare(inputs, out_dir: str | os.PathLike, size: int = 224, every: int = 1,
            max_frames: int | None = None, margin: float = 0.25, align: bool = True,
            min_size: int | None = None, progress: bool = False,
            cropper: FaceCropper | None = None) -> PrepareReport:
    """Crop the largest face of every image and every ``every``-th video frame.

    Writes ``out_dir/crops/*.jpg`` and ``out_dir/faces.csv`` (columns :data:`CSV_COLUMNS`,
    ``crop_path`` relative to ``out_dir``; one row per image or sampled frame, ``found=0``
    rows for those without a face). Unreadable files are skipped and listed in the report.
    ``progress=True`` shows a rich progress bar on stderr.
    """
    files = expand_inputs(inputs)
    if every < 1:
        raise ClefError(f"--every must be >= 1, got {every}")
    if max_frames is not None and max_frames < 1:
        raise ClefError(f"--max-frames must be >= 1, got {max_frames}")
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ClefError("output path exists and is not a directory", path=out)
    crops = out / "crops"
    crops.mkdir(parents=True, exist_ok=True)
    cropper = cropper or FaceCropper(margin=margin, size=size, align=align, min_size=min_size)
    report = PrepareReport(out_dir=str(out), csv_path=str(out / "faces.csv"))
    rows: list[dict] = []

    def handle(rgb, source: str, name: str, frame=None, stamp=None) -> None:
        result = cropper.crop(rgb)
        crop_rel = ""
        if result.found:
            crop_rel = f"crops/{name}.jpg"
            _save_jpeg(result.image, out / crop_rel)
            report.faces += 1
        else:
            report.no_face.append(source if frame is None else f"{source}@{frame}")
        rows.append(_row(source, frame, stamp, crop_rel, result))

    from clefctl.ui import progress_bar

    total = sum(video_frame_estimate(p, every, max_frames) if is_video(p) else 1 for p in files) \
        if progress else 0
    with progress_bar("cropping faces", total=total or None, enabled=progress, transient=True) as bar:
        for i, path in enumerate(files):
            source, stem = str(path), f"{i:06d}_{_safe_stem(path)}"
            if is_video(path):
                try:
                    frames = iter_video_frames(path, every=every, max_frames=max_frames)
                    opened = False
                    for index, stamp, rgb in frames:
                        opened = True
                        report.frames += 1
                        handle(rgb, source, f"{stem}_f{index:06d}", index, stamp)
                        bar.advance()
                    if not opened:
                        raise ClefError("video has no decodable frames", path=path)
                    report.videos += 1
                except ClefError:
                    report.unreadable.append(source)
            else:
                rgb = read_image(path)
                if rgb is None:
                    report.unreadable.append(source)
                else:
                    report.images += 1
                    handle(rgb, source, stem)
                bar.advance()

    with atomic_path(report.csv_path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    return report
