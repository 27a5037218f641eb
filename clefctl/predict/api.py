"""``clefctl predict`` as a library call: :func:`run_predict` (:class:`PredictOptions`) streams
photos and videos through the face pipeline (:func:`clefctl.data.faces.iter_faces`) and the
scorers, and writes the OpenFace-compatible CSV (:mod:`clefctl.predict.schema`), a timeline PNG
per video and a summary."""

from __future__ import annotations

import csv
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clefctl.errors import ClefError
from clefctl.predict.schema import columns, row_values
from clefctl.predict.scorers import Scorer, build_scorers
from clefctl.predict.smooth import Row, Smoother
from clefctl.predict.timeline import Timeline


@dataclass
class PredictOptions:
    """Everything ``clefctl predict`` takes (the same defaults)."""

    inputs: list[str] = field(default_factory=list)   # images, videos, folders, globs (the arguments)
    out: str = field(default="predictions.csv", metadata={
        "help": "CSV to write: one row per face per image or sampled frame (docs/predict.md).",
        "path": {"dir_okay": False}})
    au_checkpoint: str | None = field(default=None, metadata={
        "help": "Fine-tuned AU model: a model.pt, run, exported folder or hf-hub:ORG/NAME (default: newest AU run)."})
    fer_checkpoint: str | None = field(default=None, metadata={
        "help": "Fine-tuned expression model: a model.pt, run, exported folder or hf-hub:ORG/NAME "
                "(default: newest FER run)."})
    weights: str | None = field(default=None, metadata={
        "help": "A fine-tuned model (run, model.pt, exported folder, hf-hub:ORG/NAME) scores with its own "
                "head and classes; any other weights (registry name such as farl-ep64, file, open_clip tag, "
                "'random') score zero-shot and need --prompts."})
    arch: str | None = field(default=None, metadata={
        "help": "Zero-shot: architecture of --weights (default ViT-B-16; clef-tiny for --weights random)."})
    prompts: tuple[str, ...] = field(default=(), metadata={
        "help": "Zero-shot: prompt set name or YAML; its task (au or fer) decides the columns. Repeat for both."})
    prompt_mode: str = field(default="names", metadata={
        "help": "Zero-shot class vectors: label names, descriptions or the template ensemble.",
        "choices": ("names", "descriptions", "ensemble")})
    workspace: str | None = None
    every: int = field(default=1, metadata={"help": "Video: keep every N-th frame.", "min": 1})
    max_frames: int | None = field(default=None, metadata={"help": "Video: at most this many frames.", "min": 1})
    batch_size: int = field(default=64, metadata={
        "help": "Face crops per model call, gathered across frames (larger on a GPU).", "min": 1})
    smooth: float = field(default=0.0, metadata={
        "help": "Seconds of a centred moving average of the probabilities along each face track (0 = off).",
        "min": 0, "max": 3600})
    device: str = "auto"
    dtype: str = field(default="auto", metadata={
        "help": "Inference precision (auto: the bf16 copy on CPUs with native bf16, fp16 on CUDA).",
        "choices": ("auto", "float32", "bfloat16", "float16")})
    timeline: bool = field(default=True, metadata={
        "help": "Do not draw the AU timeline PNG of each video.", "negate": True})
    trust_checkpoint: bool = False
    progress: bool = True
    detector: str = "auto"                # auto | yunet | haar (clefctl.data.faces.choice)
    min_confidence: float | None = None   # the detector's score threshold (None: the detector's default)


def _check(opts: PredictOptions) -> None:
    from clefctl.search import RESCORE_MODES

    if not opts.inputs:
        raise ClefError("no inputs given", hint="name images, videos, folders or globs")
    if opts.every < 1:
        raise ClefError(f"--every must be >= 1, got {opts.every}")
    if opts.max_frames is not None and opts.max_frames < 1:
        raise ClefError(f"--max-frames must be >= 1, got {opts.max_frames}")
    if opts.batch_size < 1:
        raise ClefError(f"--batch-size must be >= 1, got {opts.batch_size}")
    if not np.isfinite(opts.smooth) or opts.smooth < 0:
        raise ClefError(f"--smooth must be a number of seconds >= 0, got {opts.smooth}")
    if opts.prompt_mode not in RESCORE_MODES:
        raise ClefError(f"unknown --prompt-mode {opts.prompt_mode!r}", hint="use " + ", ".join(RESCORE_MODES))


def _task(scorers: list[Scorer], task: str) -> Scorer | None:
    found = [s for s in scorers if s.task == task]
    if len(found) > 1:
        raise ClefError(f"two models score task {task} ({found[0].how}; {found[1].how})",
                        hint="give one AU and one expression model")
    return found[0] if found else None


def run_predict(opts: PredictOptions) -> dict:
    """Write the predictions CSV (one row per face per frame, one ``success`` 0 row per frame
    without a face; schema in docs/predict.md) and a timeline PNG per video; return the summary
    (``frames``, ``faces``, ``no_face_frames``, ``fps`` end to end, ``detection_share``, ...).

    Unreadable inputs get no row; the summary counts them (``skipped``) and lists them
    (``unreadable``); when no input at all can be read, a ClefError and no CSV. The CSV is written to
    a temporary file and renamed at the end."""
    from clefctl.data.faces import PipelineStats, expand_inputs, is_video, iter_faces, model_encoder
    from clefctl.data.faces.choice import resolve_detector
    from clefctl.data.faces.video import video_frame_estimate
    from clefctl.model.inference import inference_dtype
    from clefctl.paths import atomic_path
    from clefctl.ui import progress_bar
    from clefctl.workspace import Workspace

    _check(opts)
    t_load = time.perf_counter()
    files = expand_inputs(opts.inputs)
    choice = resolve_detector(opts.detector, opts.min_confidence)
    scorers = build_scorers(Workspace(opts.workspace), au_checkpoint=opts.au_checkpoint,
                            fer_checkpoint=opts.fer_checkpoint, weights=opts.weights, arch=opts.arch,
                            prompts=tuple(opts.prompts), prompt_mode=opts.prompt_mode, device=opts.device,
                            trust_checkpoint=opts.trust_checkpoint)
    au, fer = _task(scorers, "au"), _task(scorers, "fer")
    models: list = []
    for s in scorers:
        if all(s.model is not m for m in models):
            models.append(s.model)
    which = [next(k for k, m in enumerate(models) if m is s.model) for s in scorers]
    header = columns(au.classes if au else [], fer.classes if fer else [])
    out = Path(opts.out)
    load_seconds = time.perf_counter() - t_load
    stats = PipelineStats()
    writer = _Emitter(out, au, fer, opts.timeline)
    total = sum(video_frame_estimate(p, opts.every, opts.max_frames) if is_video(p) else 1 for p in files) \
        if opts.progress else 0
    t0 = time.perf_counter()
    frames = iter_faces(files, every=opts.every, max_frames=opts.max_frames, size=max(m.image_size for m in models),
                        encoders=[model_encoder(m, opts.dtype) for m in models], batch_size=opts.batch_size,
                        stats=stats, faces=choice)
    smoother = Smoother(opts.smooth)
    with atomic_path(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh, \
            progress_bar("predict", total=total or None, enabled=opts.progress, transient=True) as bar:
        writer.start(csv.writer(fh), header)
        for ff in frames:
            bar.advance()
            if ff.unreadable:
                continue
            for row in _rows(ff, scorers, which):
                writer.emit(smoother.push(row))
        if not stats.frames:  # nothing was read: no CSV, not a success
            bad = stats.unreadable
            raise ClefError(f"none of the {len(files)} input{'s' if len(files) != 1 else ''} could be read as an "
                            f"image or video ({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}); nothing was "
                            f"written", hint="check the files (empty, cut short, or not an image or video)")
        writer.emit(smoother.flush())
    writer.finish()
    seconds = time.perf_counter() - t0
    s = stats.seconds
    return {
        "csv": str(out), "rows": writer.rows, "frames": stats.frames, "faces": stats.faces,
        "no_face_frames": stats.no_face_frames, "no_face": dict(writer.no_face),
        "skipped": len(stats.unreadable), "unreadable": list(stats.unreadable),
        "fps": round(stats.frames / seconds, 2) if seconds > 0 else None, "seconds": round(seconds, 3),
        "load_seconds": round(load_seconds, 3),
        "detection_share": round((s["detect"] + s["align"] + s["follow"]) / seconds, 4) if seconds > 0 else None,
        "face_pipeline_share": round(stats.face_seconds / seconds, 4) if seconds > 0 else None,
        "model_share": round(s["encode"] / seconds, 4) if seconds > 0 else None,
        "timings": stats.to_dict()["seconds"], "key_frames": stats.key_frames,
        "timelines": writer.timelines, "columns": header, "smooth": opts.smooth,
        "models": {sc.task: sc.model.fingerprint for sc in scorers}, "scoring": {sc.task: sc.how for sc in scorers},
        "inference_dtype": str(inference_dtype(models[0].device, opts.dtype)).replace("torch.", ""),
        "device": str(models[0].device), "detector": choice.describe(),
    }


def _rows(ff, scorers: list[Scorer], which: list[int]) -> list[Row]:
    if not ff.faces:
        return [Row(ff.source, ff.frame, -1, ff.timestamp, 0.0, None, video=ff.video)]
    probs = {}
    for sc, k in zip(scorers, which):
        probs[sc.task] = sc.score(np.stack([f.features[k] for f in ff.faces]))
    return [Row(ff.source, ff.frame, f.face_id, ff.timestamp, f.confidence, f.box,
                probs["au"][j] if "au" in probs else None, probs["fer"][j] if "fer" in probs else None,
                ff.video, f.landmarks) for j, f in enumerate(ff.faces)]


class _Emitter:
    """Formats rows into the CSV, counts them, and collects and draws the timelines."""

    def __init__(self, out: Path, au: Scorer | None, fer: Scorer | None, timeline: bool):
        self.out, self.au, self.fer, self.timeline = out, au, fer, timeline and au is not None
        self.fer_classes = fer.classes if fer else []
        self.n_au = len(au.classes) if au else 0
        self.rows = 0
        self.no_face: Counter = Counter()
        self.timelines: list[str] = []
        self._current: Timeline | None = None
        self._csv = None

    def start(self, writer, header) -> None:
        self._csv = writer
        writer.writerow(header)

    def emit(self, rows: list[Row]) -> None:
        for r in rows:
            self._csv.writerow(row_values(r.source, r.frame, r.face_id, r.timestamp, r.confidence, r.box,
                                          r.au, r.fer, self.fer_classes, self.n_au, r.landmarks))
            self.rows += 1
            if r.box is None:
                self.no_face[r.source] += 1
            if self.timeline and r.video:
                if self._current is None or self._current.source != r.source:
                    self._draw()
                    self._current = Timeline(r.source, list(self.au.classes))
                if r.au is not None:
                    self._current.add(r.face_id, r.timestamp, r.au)

    def _draw(self) -> None:
        if self._current is not None:
            target = self.out.with_name(f"{self.out.stem}_{Path(self._current.source).stem}_timeline.png")
            if self._current.draw(target) is not None:
                self.timelines.append(str(target))
            self._current = None

    def finish(self) -> None:
        self._draw()


def predict(inputs: list[str], out_csv: str | Path = "predictions.csv", au_checkpoint: str | None = None,
            fer_checkpoint: str | None = None, workspace: str | None = None, every: int = 1,
            max_frames: int | None = None, batch_size: int = 64, device="auto", progress: bool = True,
            trust_checkpoint: bool = False, **options) -> dict:
    """:func:`run_predict` with keyword arguments (``options``: the other :class:`PredictOptions`)."""
    return run_predict(PredictOptions(inputs=list(inputs), out=str(out_csv), au_checkpoint=au_checkpoint,
                                      fer_checkpoint=fer_checkpoint, workspace=workspace, every=every,
                                      max_frames=max_frames, batch_size=batch_size,
                                      device=device if device is not None else "auto", progress=progress,
                                      trust_checkpoint=trust_checkpoint, **options))
