"""Video frames: open a video, stream every N-th frame (memory stays flat in the video's
length), estimate how many frames that gives, and read one frame back (contact sheets)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from clefctl.errors import ClefError


def open_video(path: str | os.PathLike) -> cv2.VideoCapture:
    """An opened ``cv2.VideoCapture``; a missing or unopenable file raises :class:`ClefError`."""
    path = Path(path)
    if not path.is_file():
        raise ClefError("video not found", path=path)
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise ClefError("cannot open the video (unsupported or corrupt file)", path=path,
                        hint="re-encode it, e.g. to H.264 .mp4 or MJPG .avi")
    return cap


def video_fps(path: str | os.PathLike) -> float:
    """The frame rate the container declares (0.0 when unknown or unopenable)."""
    cap = cv2.VideoCapture(str(path))
    try:
        return float(cap.get(cv2.CAP_PROP_FPS) or 0.0) if cap.isOpened() else 0.0
    finally:
        cap.release()


def iter_video_frames(path: str | os.PathLike, every: int = 1,
                      max_frames: int | None = None) -> Iterator[tuple[int, float, np.ndarray]]:
    """Yield ``(frame_index, timestamp_s, rgb)`` for every ``every``-th frame, at most ``max_frames``.

    ``frame_index`` counts from 0 (the face pipeline reports it 1-based, as OpenFace does).
    Skipped frames are grabbed, not converted. A video that cannot be opened, or whose frames lie
    outside the image bounds (:func:`clefctl.data.images.size_problem`), raises :class:`ClefError`
    naming the file; one that ends well before the frame count its header declares (cut short or
    damaged) is warned about once, naming the frame it ended at.
    """
    from clefctl.data.images import size_problem

    if every < 1:
        raise ClefError(f"--every must be >= 1, got {every}")
    cap = open_video(path)
    try:
        fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        declared = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        if width and height and (problem := size_problem(width, height)):   # the header's size, when it has one
            raise ClefError(f"the video's frames are refused: {problem}", path=path)
        index = yielded = 0
        while max_frames is None or yielded < max_frames:
            if index % every == 0:
                ok, bgr = cap.read()
                if not ok or bgr is None:
                    break
                if yielded == 0 and (problem := size_problem(bgr.shape[1], bgr.shape[0])):
                    raise ClefError(f"the video's frames are refused: {problem}", path=path)
                if fps > 0:
                    stamp = index / fps
                else:
                    stamp = (cap.get(cv2.CAP_PROP_POS_MSEC) or 0.0) / 1000.0
                yield index, round(stamp, 4), cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                yielded += 1
            elif not cap.grab():
                break
            index += 1
        if declared > 1 and index < 0.9 * declared - 1 and (max_frames is None or yielded < max_frames):
            warnings.warn(f"{path}: the video ended after {index} of the {declared} frames its header declares "
                          "(cut short or damaged); the frames read are used", stacklevel=2)
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


def read_frame(path: str | os.PathLike, frame: int) -> np.ndarray:
    """Frame number ``frame`` (1-based, as the face pipeline and the store count) as RGB.

    Seeks, then checks the position; when the container cannot seek exactly, reads forward
    from the start. Raises :class:`ClefError` when the video has no such frame."""
    if frame < 1:
        raise ClefError(f"frame numbers start at 1, got {frame}", path=path)
    cap = open_video(path)
    try:
        target = frame - 1
        cap.set(cv2.CAP_PROP_POS_FRAMES, target)
        if int(cap.get(cv2.CAP_PROP_POS_FRAMES)) != target:
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            for _ in range(target):
                if not cap.grab():
                    break
        ok, bgr = cap.read()
    finally:
        cap.release()
    if not ok or bgr is None:
        raise ClefError(f"the video has no frame {frame}", path=path)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
