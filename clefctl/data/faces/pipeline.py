"""The one face pipeline: photos and videos in, every face of every (sampled) frame out, with
a face id, box, confidence, aligned crop and, when encoders are given, the model's features.

:func:`iter_faces` streams: it holds at most about ``batch_size`` face crops (the batch waiting
for the encoders) whatever the length of the video, so ``predict`` and ``embed`` run in flat
memory. The detector is chosen by ``--detector`` (:func:`~clefctl.data.faces.choice.resolve_detector`:
YuNet with 5 landmarks, or the Haar cascades offline). Photos are searched in the photo setting and
their faces numbered left to right; videos go through :class:`KeyframeDetector` (full detection on
key frames, template following in between, landmarks carried along) and :class:`Tracker` (face ids
stable within the video). A face with landmarks is cut by the one alignment template
(:func:`~clefctl.data.faces.template.aligned_crop`); a Haar face by its eye-levelling angle.

Example::

    >>> from clefctl.data.faces import iter_faces
    >>> for ff in iter_faces(["group.jpg", "talk.mp4"], every=2, size=64):   # doctest: +SKIP
    ...     print(ff.source, ff.frame, ff.timestamp, [(f.face_id, f.box) for f in ff.faces])
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from clefctl.data.faces.align import EyeAligner, face_crop
from clefctl.data.faces.choice import DetectorChoice, resolve_detector
from clefctl.data.faces.detect import Detector, clip_box
from clefctl.data.faces.inputs import expand_inputs, is_video, read_image
from clefctl.data.faces.keyframes import Found, KeyframeDetector
from clefctl.data.faces.template import eye_angle
from clefctl.data.faces.track import Tracker
from clefctl.data.faces.video import iter_video_frames, video_fps
from clefctl.errors import ClefError

Encoder = Callable[[Sequence[np.ndarray]], np.ndarray]

KEYFRAME_SECONDS = 0.2      # video: time from one full detection to the next
GAP_SECONDS = 1.0           # video: how long a track keeps matching by overlap alone


@dataclass
class Face:
    """One face on one frame. ``box`` (x, y, w, h) in source pixels, ``confidence`` in [0, 1] (the
    detector's score), ``angle`` the eye line's tilt that ``crop`` (size x size x 3 uint8 RGB)
    removes, ``landmarks`` (5 x 2 source pixels: right eye, left eye, nose tip, right and left
    mouth corner of the subject; None from the Haar detector), ``features`` one unit vector per
    encoder, ``keyed``: found by the detector on this frame (False: followed from the last key
    frame)."""

    face_id: int
    box: tuple[int, int, int, int]
    confidence: float
    angle: float
    crop: np.ndarray
    features: tuple[np.ndarray, ...] = ()
    keyed: bool = True
    landmarks: np.ndarray | None = None

    @property
    def feature(self) -> np.ndarray | None:
        return self.features[0] if self.features else None


@dataclass
class FrameFaces:
    """The faces of one photo (``frame`` 1, ``timestamp`` 0) or one sampled video frame
    (``frame`` 1-based in the video, ``timestamp`` seconds). ``unreadable``: the source could
    not be decoded (one such item per source, ``frame`` 0, no faces)."""

    source: str
    frame: int
    timestamp: float
    faces: list[Face] = field(default_factory=list)
    unreadable: bool = False
    video: bool = False
    width: int = 0
    height: int = 0


@dataclass
class PipelineStats:
    """What :func:`iter_faces` did and where its time went (seconds per stage)."""

    photos: int = 0
    videos: int = 0
    frames: int = 0                  # photos + sampled video frames decoded
    faces: int = 0
    no_face_frames: int = 0
    key_frames: int = 0
    unreadable: list[str] = field(default_factory=list)
    seconds: dict = field(default_factory=lambda: dict.fromkeys(
        ("decode", "detect", "align", "follow", "crop", "appearance", "encode", "track"), 0.0))

    @property
    def face_seconds(self) -> float:
        """Detection, alignment, following, cropping and tracking: the face pipeline's own cost."""
        s = self.seconds
        return s["detect"] + s["align"] + s["follow"] + s["crop"] + s["appearance"] + s["track"]

    def to_dict(self) -> dict:
        return {"photos": self.photos, "videos": self.videos, "frames": self.frames, "faces": self.faces,
                "no_face_frames": self.no_face_frames, "key_frames": self.key_frames,
                "unreadable": list(self.unreadable),
                "seconds": {k: round(v, 4) for k, v in self.seconds.items()}}


def _hs_histogram(region: np.ndarray) -> np.ndarray:
    hsv = cv2.cvtColor(region, cv2.COLOR_RGB2HSV)
    h = cv2.calcHist([hsv], [0, 1], None, [12, 8], [0, 180, 0, 256]).ravel()
    h = np.sqrt(h / max(float(h.sum()), 1.0))
    h -= h.mean()
    return h / max(float(np.linalg.norm(h)), 1e-6)


def appearance(crop: np.ndarray) -> np.ndarray:
    """A unit re-identification descriptor of a face crop that needs no model: hue-saturation
    histograms (12 x 8 bins, square-rooted and centred) of the hair and forehead strip and of the
    face below it, equally weighted. Colour stays with a person across expressions and small
    shifts of the box, where a thumbnail of the face does not. Joined with the model's embedding
    by the pipeline when a model runs."""
    s = crop.shape[0]
    top = crop[int(s * 0.10):max(int(s * 0.35), int(s * 0.10) + 1), int(s * 0.2):max(int(s * 0.8), 1)]
    face = crop[int(s * 0.35):max(int(s * 0.80), int(s * 0.35) + 1), int(s * 0.25):max(int(s * 0.75), 1)]
    return np.concatenate([_hs_histogram(top), _hs_histogram(face)]) / np.sqrt(2.0)


def model_encoder(model, dtype: str = "auto") -> Encoder:
    """An encoder for :func:`iter_faces`: crops (uint8 RGB squares) -> the model's unit image
    embeddings (n, D) float32, through :meth:`ClefModel.encode_images` with ``dtype`` ("auto": the
    bf16 inference copy on CPUs with native bf16, fp16 on CUDA). Crops of another size are
    resized to the model's input size; pixels are normalised with the model's mean and std."""
    import torch

    mean = torch.tensor(model.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(model.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    size = int(model.image_size)

    def encode(crops: Sequence[np.ndarray]) -> np.ndarray:
        if not crops:
            return np.zeros((0, model.embed_dim), np.float32)
        arr = np.stack([c if c.shape[0] == size else cv2.resize(
            c, (size, size), interpolation=cv2.INTER_AREA if c.shape[0] > size else cv2.INTER_CUBIC)
            for c in crops])
        pixels = (torch.from_numpy(arr).permute(0, 3, 1, 2).float() - mean) / std
        return model.encode_images(pixels, batch_size=len(crops), dtype=dtype).numpy()

    return encode


class _Batcher:
    """Frames waiting for the encoders; on flush: encode, track, hand the frames on."""

    def __init__(self, encoders: Sequence[Encoder], batch_size: int, tracker: Tracker, stats: PipelineStats):
        self.encoders = list(encoders)
        self.batch_size = max(1, int(batch_size))
        self.tracker = tracker
        self.stats = stats
        self.frames: list[tuple[FrameFaces, list[np.ndarray]]] = []   # frame, appearance per face
        self.crops = 0
        self._tracking: str | None = None

    def add(self, frame: FrameFaces, looks: list[np.ndarray]) -> list[FrameFaces]:
        self.frames.append((frame, looks))
        self.crops += len(frame.faces)
        if not self.encoders or self.crops >= self.batch_size:
            return self.flush()
        return []

    def flush(self) -> list[FrameFaces]:
        frames, self.frames, self.crops = self.frames, [], 0
        crops = [f.crop for ff, _ in frames for f in ff.faces]
        t0 = time.perf_counter()
        outs = [np.asarray(enc(crops), np.float32) for enc in self.encoders] if crops else []
        self.stats.seconds["encode"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        i = 0
        for ff, looks in frames:
            for face in ff.faces:
                face.features = tuple(o[i] for o in outs)
                i += 1
            if ff.video and ff.faces:
                if self._tracking != ff.source:
                    self.tracker.reset()
                    self._tracking = ff.source
                feats = [_join(look, face.features[0] if face.features else None)
                         for look, face in zip(looks, ff.faces)]
                ids = self.tracker.update([f.box for f in ff.faces], feats, ff.timestamp)
                for face, fid in zip(ff.faces, ids):
                    face.face_id = fid
                ff.faces.sort(key=lambda f: f.face_id)
        self.stats.seconds["track"] += time.perf_counter() - t0
        return [ff for ff, _ in frames]


def _join(look: np.ndarray, feature: np.ndarray | None) -> np.ndarray:
    if feature is None:
        return look
    v = np.concatenate([look, feature / max(float(np.linalg.norm(feature)), 1e-12)])
    return v / np.sqrt(2.0)


def _faces_of(rgb: np.ndarray, found: list[Found], size: int, margin: float,
              stats: PipelineStats, align: bool = True) -> tuple[list[Face], list[np.ndarray]]:
    t0 = time.perf_counter()
    faces = [Face(-1, clip_box(f.detection.box, rgb.shape), round(float(f.detection.confidence), 4),
                  round(float(f.angle), 2) if align else 0.0,
                  face_crop(rgb, f.detection, f.angle if align else 0.0, size, margin, align),
                  keyed=f.keyed, landmarks=f.detection.landmarks) for f in found]
    t1 = time.perf_counter()
    looks = [appearance(f.crop) for f in faces]
    stats.seconds["crop"] += t1 - t0
    stats.seconds["appearance"] += time.perf_counter() - t1
    return faces, looks


def _photo_faces(rgb: np.ndarray, detector: Detector, aligner: EyeAligner | None,
                 stats: PipelineStats) -> list[Found]:
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    t0 = time.perf_counter()
    dets = detector.detect(rgb, grey)
    t1 = time.perf_counter()
    found = []
    for d in sorted(dets, key=lambda d: (d.box[0], d.box[1])):
        if d.landmarks is not None:
            found.append(Found(d, eye_angle(d.landmarks), True))
            continue
        level = aligner.find(grey, d.box) if aligner is not None else None
        found.append(Found(d, level[0] if level is not None else 0.0, True))
    stats.seconds["detect"] += t1 - t0
    stats.seconds["align"] += time.perf_counter() - t1
    return found


def keyframe_interval(fps: float, every: int, seconds: float = KEYFRAME_SECONDS) -> int:
    """Sampled frames from one key frame to the next: ``seconds`` of video (1 when the frame
    rate is unknown or the sampling is sparser than that)."""
    if fps <= 0:
        return 1
    return max(1, int(round(seconds * fps / max(1, every))))


def iter_faces(inputs: str | os.PathLike | Iterable[str | os.PathLike], *, every: int = 1,
               max_frames: int | None = None, size: int = 224, margin: float = 0.25, align: bool = True,
               faces: DetectorChoice | str = "auto", detector: Detector | None = None,
               video_detector: Detector | None = None, encoders: Sequence[Encoder] = (), batch_size: int = 64,
               keyframe_seconds: float = KEYFRAME_SECONDS, gap_seconds: float = GAP_SECONDS,
               stats: PipelineStats | None = None) -> Iterator[FrameFaces]:
    """Every face of every photo and sampled video frame of ``inputs`` (files, folders, globs), in
    input order, frame by frame (see the module docstring).

    ``every`` / ``max_frames``: video sampling. ``size``: crop side (the model's input size);
    ``margin``: context around the face (the template's, or added on each side of a Haar box).
    ``faces``: the ``--detector`` choice (``auto``, ``yunet``, ``haar`` or a resolved
    :class:`DetectorChoice`), made in its photo and video settings; ``detector`` (photos) and
    ``video_detector`` (key frames) override it. ``encoders`` are run on batches of about ``batch_size`` crops
    across frames; their outputs become each face's ``features`` and the first one joins the
    appearance the tracker uses. An input that cannot be decoded yields one ``unreadable`` item
    (and is listed in ``stats.unreadable``); a video that breaks off after some frames is warned
    about and ends there. ``stats`` (a :class:`PipelineStats`) collects counts and timings.
    """
    if every < 1:
        raise ClefError(f"--every must be >= 1, got {every}")
    if max_frames is not None and max_frames < 1:
        raise ClefError(f"--max-frames must be >= 1, got {max_frames}")
    if size < 8:
        raise ClefError(f"the crop size must be at least 8 pixels, got {size}")
    files = expand_inputs(inputs)
    stats = stats if stats is not None else PipelineStats()
    if detector is None or video_detector is None:
        choice = faces if isinstance(faces, DetectorChoice) else resolve_detector(faces)
        detector = detector or choice.make("photos")
        video_detector = video_detector or choice.make("video")
    aligner = EyeAligner(96) if align else None
    follower = KeyframeDetector(video_detector, aligner=EyeAligner(64) if align else None)
    tracker = Tracker(max_gap=gap_seconds, reid_threshold=0.8 if encoders else 0.6)
    batcher = _Batcher(encoders, batch_size, tracker, stats)
    try:
        for path in files:
            if is_video(path):
                items = _video_frames(path, every, max_frames, size, margin, follower, keyframe_seconds, stats, align)
            else:
                items = _photo(path, size, margin, detector, aligner, stats, align)
            for ff, looks in items:
                yield from batcher.add(ff, looks)
        yield from batcher.flush()
    finally:
        for k in ("detect", "align", "follow"):
            stats.seconds[k] += follower.seconds[k]
            follower.seconds[k] = 0.0
        stats.key_frames += follower.key_frames
        follower.key_frames = 0


def _photo(path: Path, size: int, margin: float, detector: Detector, aligner, stats: PipelineStats,
           align: bool = True):
    t0 = time.perf_counter()
    rgb = read_image(path)
    stats.seconds["decode"] += time.perf_counter() - t0
    if rgb is None:
        stats.unreadable.append(str(path))
        yield FrameFaces(str(path), 0, 0.0, unreadable=True), []
        return
    stats.photos += 1
    stats.frames += 1
    faces, looks = _faces_of(rgb, _photo_faces(rgb, detector, aligner, stats), size, margin, stats, align)
    for i, f in enumerate(faces):
        f.face_id = i
    stats.faces += len(faces)
    stats.no_face_frames += not faces
    yield FrameFaces(str(path), 1, 0.0, faces, width=rgb.shape[1], height=rgb.shape[0]), looks


def _video_frames(path: Path, every: int, max_frames, size: int, margin: float, follower: KeyframeDetector,
                  keyframe_seconds: float, stats: PipelineStats, align: bool = True):
    follower.reset()
    follower.every = keyframe_interval(video_fps(path), every, keyframe_seconds)
    frames = 0
    stream = iter_video_frames(path, every=every, max_frames=max_frames)
    try:
        while True:
            t0 = time.perf_counter()
            try:
                item = next(stream, None)
            except (ClefError, cv2.error) as exc:  # corrupt or unsupported: skip this file, not the job
                if frames:
                    warnings.warn(f"{path}: video unreadable after {frames} frames ({exc}); its remaining "
                                  "frames are skipped", stacklevel=2)
                break
            finally:
                stats.seconds["decode"] += time.perf_counter() - t0
            if item is None:
                break
            index, stamp, rgb = item
            if frames == 0:
                stats.videos += 1
            frames += 1
            stats.frames += 1
            faces, looks = _faces_of(rgb, follower(rgb), size, margin, stats, align)
            stats.faces += len(faces)
            stats.no_face_frames += not faces
            yield FrameFaces(str(path), index + 1, float(stamp), faces, video=True,
                             width=rgb.shape[1], height=rgb.shape[0]), looks
    finally:
        stream.close()
    if not frames:
        stats.unreadable.append(str(path))
        yield FrameFaces(str(path), 0, 0.0, unreadable=True, video=True), []
