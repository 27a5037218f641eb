"""Embedding photos and videos (``clefctl embed PATH...``): one store row per face per image or
sampled frame, from the face pipeline :func:`clefctl.data.faces.iter_faces` (the one ``predict``
uses), with ``path`` (the source file), ``frame`` (1-based; 1 for a photo), ``timestamp``
(seconds; 0 for a photo), ``face_id`` (stable within a source) and the face ``box``.

Resuming: rows are committed in chunks of exactly ``chunk_size`` faces (a chunk may end inside a
frame). A rerun of the same inputs opens the same store and continues with the source of the last
committed row, replaying it from its start (face ids depend on the whole video) and writing only
the faces after the last committed one (the rest of its frame, then the frames after it). Unreadable sources are skipped and their paths kept as
the store's skipped ids. Runs in one process (under torchrun, launch one process).

``clefctl embed PATH...`` as a library call is :func:`clefctl.embed.run.run_embed` with ``paths``.

Example::

    >>> from clefctl.embed import EmbedOptions, run_embed
    >>> res = run_embed(EmbedOptions(paths=("talks/",), every=5, weights="random",
    ...                              arch="clef-tiny"))                             # doctest: +SKIP
    >>> res.summary["faces"], res.store_path                                        # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from clefctl.embed.job import EmbedReport, check_compatible
from clefctl.embed.jobs import finish
from clefctl.errors import ClefError
from clefctl.store.format import EmbeddingStore
from clefctl.store.layout import MEDIA_PREFIX, STRING_COLUMNS, Columns, normalise


def media_image_set(files, every: int, max_frames: int | None, detector: dict | None = None) -> str:
    """The image-set name of a list of photos and videos sampled so: ``media-`` and 12 hex digits
    of a hash of the absolute paths in order, ``every``, ``max_frames`` and, for a detector other
    than the Haar cascades (whose stores came first), the detector's description (the same inputs
    and detector give the same store, so a rerun resumes it; another detector's crops get their own)."""
    key = {"files": [os.path.abspath(f) for f in files], "every": every, "max_frames": max_frames}
    if detector and detector.get("name") != "haar":
        key["detector"] = detector
    key = json.dumps(key, sort_keys=True)
    return MEDIA_PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


def _names(files) -> dict[str, str]:
    """Each file's name in row ids: its path relative to the folder holding all the inputs."""
    absolute = [os.path.abspath(f) for f in files]
    root = os.path.commonpath([os.path.dirname(a) for a in absolute]) if absolute else ""
    return {a: os.path.relpath(a, root) for a in absolute}


def _resume_point(store: EmbeddingStore, files: list[str]) -> tuple[int, int, set]:
    """(index of the first source to process, last committed frame of that source or 0, the face ids
    of that frame already committed: a chunk may end inside a frame)."""
    if store.count == 0:
        done = set(store.skipped_ids)
        k = 0
        while k < len(files) and files[k] in done:
            k += 1
        return k, 0, set()
    tail = store.metadata(range(max(0, store.count - 256), store.count))
    source, frame = str(tail["path"].iloc[-1]), int(tail["frame"].iloc[-1])
    if source not in files:
        raise ClefError("the store holds faces of a file that is not among the inputs given (resuming needs "
                        "the same inputs in the same order)", path=store.path,
                        hint="give the same inputs, another --out, or --overwrite")
    same = tail[(tail["path"] == source) & (tail["frame"] == frame)]
    return files.index(source), frame, {int(v) for v in same["face_id"]}


def _open(model, store_path: Path, image_set: str, dtype: str, overwrite: bool, meta: dict,
          model_ref: dict | None = None) -> EmbeddingStore:
    if store_path.exists() and not overwrite:
        store = EmbeddingStore.open(store_path, mode="a")
        try:
            check_compatible(store, model, image_set, "", [], dtype)
        except BaseException:
            store.close()
            raise
        return store
    return EmbeddingStore.create(store_path, model.fingerprint, model.embed_dim, image_set, dtype,
                                 overwrite=overwrite, extra_attrs={"media": meta} | ({"model": model_ref} if model_ref else {}))


class _Rows:
    """Face rows waiting to be committed (one chunk)."""

    def __init__(self, names: dict[str, str]):
        self.names = names
        self.clear()

    def clear(self) -> None:
        self.emb, self.ids, self.paths, self.subjects = [], [], [], []
        self.frames, self.stamps, self.face_ids, self.boxes, self.skipped = [], [], [], [], []
        self.landmarks = []

    def add(self, ff, f) -> None:
        """Face ``f`` of frame ``ff``."""
        src = os.path.abspath(ff.source)
        name = self.names.get(src, os.path.basename(src))
        self.emb.append(f.features[0])
        self.ids.append(f"{name}@{ff.frame}#{f.face_id}" if ff.video else f"{name}#{f.face_id}")
        self.paths.append(src)
        self.subjects.append(f"{name}#{f.face_id}")
        self.frames.append(ff.frame)
        self.stamps.append(ff.timestamp)
        self.face_ids.append(f.face_id)
        self.boxes.append(f.box)
        lm = f.landmarks
        self.landmarks.append(np.full(10, np.nan, np.float32) if lm is None else
                              np.concatenate([lm[:, 0], lm[:, 1]]).astype(np.float32))

    def columns(self, dim: int) -> Columns:
        k = len(self.ids)
        strings = {c: [""] * k for c in STRING_COLUMNS}
        strings.update(id=self.ids, path=self.paths, subject=self.subjects)
        emb = normalise(np.stack(self.emb)) if k else np.zeros((0, dim), np.float32)
        return Columns(emb, strings, np.asarray(self.frames, np.int64), np.full(k, -1, np.int32),
                       np.asarray(self.boxes, np.int32).reshape(k, 4), timestamp=np.asarray(self.stamps, np.float64),
                       face_id=np.asarray(self.face_ids, np.int32),
                       landmarks=np.asarray(self.landmarks, np.float32).reshape(k, 10))


def embed_media_into_store(model, inputs, store_path: str | os.PathLike, *, every: int = 1,
                           max_frames: int | None = None, batch_size: int = 64, chunk_size: int = 1024,
                           dtype: str = "float16", inference: str = "auto", progress: bool = True,
                           overwrite: bool = False, image_set: str | None = None,
                           faces="auto", model_ref: dict | None = None) -> tuple[EmbedReport, dict]:
    """Embed every face of the photos and videos ``inputs`` (files, folders, globs) into the store
    at ``store_path``, resuming it (see the module docstring); ``faces``: the ``--detector`` choice.
    Returns the :class:`EmbedReport` and the pipeline's counts (``frames``, ``faces``,
    ``no_face_frames``, ``sources``, ``fps``, ``detector``)."""
    from clefctl.data.faces import PipelineStats, expand_inputs, is_video, iter_faces, model_encoder
    from clefctl.data.faces.choice import DetectorChoice, resolve_detector
    from clefctl.data.faces.video import video_frame_estimate
    from clefctl.model.inference import inference_dtype
    from clefctl.ui import progress_bar

    if batch_size < 1 or chunk_size < 1:
        raise ClefError("batch size and chunk size must be at least 1")
    files = [os.path.abspath(p) for p in expand_inputs(inputs)]
    faces = faces if isinstance(faces, DetectorChoice) else resolve_detector(faces)
    image_set = image_set or media_image_set(files, every, max_frames, faces.describe())
    store_path = Path(store_path)
    t0 = time.perf_counter()
    store = _open(model, store_path, image_set, dtype, overwrite,
                  {"sources": len(files), "every": every, "max_frames": max_frames,
                   "detector": faces.describe()}, model_ref)
    stats = PipelineStats()
    resumed_from, rows, skipped_before = store.count, _Rows(_names(files)), set(store.skipped_ids)
    try:
        start, last_frame, done = (len(files), 0, set()) if store.complete else _resume_point(store, files)
        todo = files[start:]
        total = sum(video_frame_estimate(p, every, max_frames) if is_video(p) else 1 for p in todo) if progress else 0
        with progress_bar(f"embed {store_path.name}", total=total or None, enabled=progress and bool(todo)) as bar:
            if todo:
                for ff in iter_faces(todo, every=every, max_frames=max_frames, size=model.image_size,
                                     encoders=[model_encoder(model, inference)], batch_size=batch_size, stats=stats,
                                     faces=faces):
                    bar.advance()
                    if ff.unreadable:
                        if os.path.abspath(ff.source) not in skipped_before:
                            rows.skipped.append(os.path.abspath(ff.source))
                        continue
                    again = os.path.abspath(ff.source) == files[start] and ff.frame <= last_frame
                    for f in ff.faces:               # a chunk is exactly chunk_size faces, also inside a frame
                        if again and (ff.frame < last_frame or f.face_id in done):
                            continue                 # committed before (resuming)
                        rows.add(ff, f)
                        if len(rows.ids) == chunk_size:
                            store.append_columns(rows.columns(store.dim), rows.skipped)
                            rows.clear()
            store.append_columns(rows.columns(store.dim), rows.skipped)
        finish(store)                   # nothing readable: an error, and no store
        seconds = time.perf_counter() - t0
        now = store.count - resumed_from
        report = EmbedReport(str(store_path), store.count, store.skipped_count, now, resumed_from, store.complete,
                             seconds, now / seconds if seconds > 0 else 0.0, store.skipped_ids,
                             str(inference_dtype(model.device, inference)).replace("torch.", ""))
    finally:
        store.close()
    counts = {"sources": len(files), "frames": stats.frames, "faces": stats.faces,
              "no_face_frames": stats.no_face_frames, "detector": faces.describe(),
              "fps": round(stats.frames / seconds, 2) if seconds > 0 and stats.frames else None}
    return report, counts


def media_prompts(model) -> str:
    """The prompt set whose texts tune a photo-and-video store's index: the fine-tuned model's data set's
    set, else BP4D's AU names and descriptions (what people type: "lip corners pulled up")."""
    return str((getattr(model, "meta", None) or {}).get("dataset") or "bp4d")


__all__ = ["embed_media_into_store", "media_image_set", "media_prompts"]
