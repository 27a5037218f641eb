"""``clefctl data prepare``: the largest face of every photo and sampled video frame, levelled and
cropped, written as JPEG files plus ``faces.csv``."""

from __future__ import annotations

import csv
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image

from clefctl.data.faces.align import CropResult, FaceCropper
from clefctl.data.faces.inputs import expand_inputs, is_video, read_image
from clefctl.data.faces.video import iter_video_frames, video_frame_estimate
from clefctl.data.landmarks import LANDMARK_COLUMNS
from clefctl.errors import ClefError
from clefctl.paths import atomic_path

CSV_COLUMNS = ("source", "frame", "timestamp", "crop_path", "x", "y", "w", "h", "angle", "found",
               "confidence") + LANDMARK_COLUMNS


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
    detector: dict = field(default_factory=dict)   # the detector that ran (name, settings)

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
    lm = result.landmarks
    cells = ([f"{v:.1f}" for v in lm[:, 0]] + [f"{v:.1f}" for v in lm[:, 1]]) if lm is not None \
        else [""] * len(LANDMARK_COLUMNS)
    return {"source": source, "frame": "" if frame is None else frame,
            "timestamp": "" if stamp is None else stamp, "crop_path": crop_path,
            "x": box[0], "y": box[1], "w": box[2], "h": box[3],
            "angle": result.angle if result.found else "", "found": int(result.found),
            "confidence": f"{result.confidence:.3f}" if result.found else "", **dict(zip(LANDMARK_COLUMNS, cells))}


def prepare(inputs, out_dir: str | os.PathLike, size: int = 224, every: int = 1,
            max_frames: int | None = None, margin: float = 0.25, align: bool = True,
            min_size: int | None = None, progress: bool = False,
            cropper: FaceCropper | None = None, detector="auto") -> PrepareReport:
    """Crop the largest face of every image and every ``every``-th video frame.

    Writes ``out_dir/crops/*.jpg`` and ``out_dir/faces.csv`` (columns :data:`CSV_COLUMNS`,
    ``crop_path`` relative to ``out_dir``, ``frame`` counted from 0; one row per image or sampled
    frame, ``found=0`` rows for those without a face; the detector's confidence and, from YuNet,
    the 5 landmarks in source pixels). ``detector``: the ``--detector`` choice. Unreadable files are
    skipped and listed in the report. ``progress=True`` shows a progress bar on stderr.
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
    cropper = cropper or FaceCropper(margin=margin, size=size, align=align, min_size=min_size, detector=detector)
    report = PrepareReport(out_dir=str(out), csv_path=str(out / "faces.csv"), detector=cropper.choice.describe())
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
                    opened = False
                    for index, stamp, rgb in iter_video_frames(path, every=every, max_frames=max_frames):
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
