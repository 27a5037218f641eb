"""Embedding an image set into a store: resumable, kill-safe, sharded under torchrun (the job;
:mod:`clefctl.embed.run` is ``clefctl embed`` as a library call).

The job has clip-retrieval's shape: a **reader** (:func:`_read_batches`: the model's eval
transform over the samples in a DataLoader, yielding batches cut at every multiple of the chunk
size, with the unreadable images told apart), the **encoder** (:meth:`ClefModel.encode_images`
with the inference dtype: the cached bf16 copy of the image tower on CPUs with native bf16) and a
**writer** (:class:`_ChunkWriter`: it commits a chunk each time the inputs consumed reach a
multiple of the chunk size). :func:`embed_into_store` runs it for one process or, under
torchrun, one contiguous shard per rank into part files that rank 0 joins with
:func:`~clefctl.store.merge.merge_parts` (a store operation).

Example::

    >>> from clefctl.model import create
    >>> from clefctl.embed import embed_into_store
    >>> report = embed_into_store(create("clef-tiny"), bundle, "runs/synthetic-fer.h5")   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from clefctl.embed.jobs import finish
from clefctl.errors import ClefError
from clefctl.store.format import STORE_SUFFIX, EmbeddingStore
from clefctl.store.merge import merge_parts

log = logging.getLogger("clefctl.embed")


@dataclass
class EmbedReport:
    """What :func:`embed_into_store` did."""

    path: str
    rows: int                      # rows in the store now
    skipped: int                   # unreadable images (in the store's skipped list)
    embedded_now: int              # rows added by this call
    resumed_from: int              # inputs already consumed when this call started
    complete: bool
    seconds: float
    images_per_s: float
    skipped_ids: list[str] = field(default_factory=list)
    inference_dtype: str = "float32"
    parts: list[str] = field(default_factory=list)   # part files merged (torchrun)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _bundle_fields(samples, image_set, task, classes):
    if hasattr(samples, "samples") and hasattr(samples, "classes"):
        bundle = samples
        image_set = image_set or bundle.name
        task = bundle.task if task is None else task
        classes = list(bundle.classes) if classes is None else list(classes)
        samples = list(bundle.samples)
    else:
        samples = list(samples)
        if task is None:
            if any(s.aus is not None for s in samples[:1000]):
                task = "au"
            elif any(s.label is not None for s in samples[:1000]):
                task = "fer"
            else:
                task = ""
        if classes is None:
            classes = []
            if task == "au":
                first = next((s for s in samples if s.aus is not None), None)
                classes = [f"AU{j}" for j in range(len(first.aus))] if first is not None else []
    if task == "activity":
        task = ""
    return samples, image_set or "images", task, list(classes)


def _check_unique_ids(samples: Sequence) -> None:
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        seen, dupes = set(), []
        for i in ids:
            if i in seen and len(dupes) < 3:
                dupes.append(i)
            seen.add(i)
        raise ClefError(f"sample ids are not unique (e.g. {', '.join(map(repr, dupes))}); a store "
                        "needs one row per id")


# ----------------------------------------------------------------------------------------------
# One process or one shard per rank
# ----------------------------------------------------------------------------------------------


def part_path(store_path: str | os.PathLike, rank: int, world: int) -> Path:
    """The part file rank ``rank`` of ``world`` writes under torchrun."""
    return Path(f"{store_path}.part-{rank}-of-{world}{STORE_SUFFIX}")


def embed_into_store(model, samples, store_path: str | os.PathLike, batch_size: int = 64,
                     chunk_size: int = 1024, progress: bool = True, *, image_set: str | None = None,
                     task: str | None = None, classes: Sequence[str] | None = None,
                     dtype: str = "float16", inference: str = "auto", num_workers: int | None = None,
                     overwrite: bool = False, transform=None, model_ref: dict | None = None) -> EmbedReport:
    """Embed ``samples`` (a :class:`DatasetBundle` or a list of :class:`Sample`) into the store at
    ``store_path``, resuming after the last committed chunk when the store exists.

    Images go through the model's eval transform and ``model.encode_images(dtype=inference)``
    in batches of at most ``batch_size``, cut at multiples of ``chunk_size``: a chunk is
    committed each time the inputs consumed reach a multiple of ``chunk_size`` (and at the end).
    Unreadable images are skipped, counted and recorded (a rerun does not retry them). A rerun
    with another model or another image list is refused (``overwrite=True`` starts again).
    Under torchrun each rank embeds a contiguous shard into a part file and rank 0 merges them
    in order. ``model_ref`` (:func:`clefctl.store.provenance.model_record`) is recorded in a new store.

    A failed write (a full disk, an I/O error) raises :class:`ClefError` naming the store; the
    rows committed before stay intact, nothing later is counted, and running the same call again
    (after freeing space) resumes after the last committed chunk. Image paths are stored absolute.
    """
    from clefctl import distributed

    samples, image_set, task, classes = _bundle_fields(samples, image_set, task, classes)
    if batch_size < 1 or chunk_size < 1:
        raise ClefError("batch size and chunk size must be at least 1")
    _check_unique_ids(samples)
    store_path = Path(store_path)
    kwargs = dict(batch_size=batch_size, chunk_size=chunk_size, image_set=image_set, task=task,
                  classes=classes, dtype=dtype, inference=inference, num_workers=num_workers,
                  transform=transform, model_ref=model_ref)
    if distributed.world_size() <= 1:
        return _embed_single(model, samples, store_path, progress=progress, overwrite=overwrite,
                             **kwargs)
    return _embed_sharded(model, samples, store_path, progress=progress, overwrite=overwrite,
                          **kwargs)


def _embed_sharded(model, samples: list, store_path: Path, *, progress: bool, overwrite: bool,
                   **kwargs) -> EmbedReport:
    """torchrun: each rank embeds its shard of what the (possibly partial) final store does not
    hold yet into a part file; rank 0 merges the parts after the store's own rows."""
    from clefctl import distributed

    world, rank = distributed.world_size(), distributed.rank()
    if overwrite and rank == 0 and store_path.exists():
        store_path.unlink()
    distributed.barrier()
    base_consumed = 0
    if store_path.exists():
        with EmbeddingStore.open(store_path) as st:
            check_compatible(st, model, kwargs["image_set"], kwargs["task"], kwargs["classes"],
                              kwargs["dtype"])
            base_consumed = st.consumed
            _check_prefix(st, samples)
            base_complete = st.complete and st.consumed == len(samples)
        if base_complete:
            distributed.barrier()
            return _report_of(store_path, 0, len(samples), 0.0, "n/a")
    remaining = samples[base_consumed:]
    start, stop = distributed.shard_range(len(remaining), rank, world)
    mine = part_path(store_path, rank, world)
    part_report = _embed_single(model, remaining[start:stop], mine, progress=progress and rank == 0,
                                overwrite=overwrite, part=f"{rank}/{world}", **kwargs)
    distributed.barrier()
    parts = [part_path(store_path, r, world) for r in range(world)]
    if rank == 0:
        t0 = time.perf_counter()
        merge_parts(parts, store_path, base=store_path if store_path.exists() else None)
        for p in parts:
            p.unlink(missing_ok=True)
            Path(str(p) + ".lock").unlink(missing_ok=True)
        log.info("merged %d part files in %.1f s", world, time.perf_counter() - t0)
    distributed.barrier()
    done = distributed.all_gather_object((part_report.embedded_now, part_report.seconds))  # every rank's part
    report = _report_of(store_path, sum(d[0] for d in done), base_consumed,
                        max(d[1] for d in done), part_report.inference_dtype)
    report.parts = [str(p) for p in parts]
    return report


def _report_of(path: Path, embedded_now: int, resumed_from: int, seconds: float, infer: str) -> EmbedReport:
    with EmbeddingStore.open(path) as st:
        return EmbedReport(str(path), st.count, st.skipped_count, embedded_now, resumed_from,
                           st.complete, seconds, embedded_now / seconds if seconds > 0 else 0.0,
                           st.skipped_ids, infer)


def check_compatible(st: EmbeddingStore, model, image_set, task, classes, dtype) -> None:
    """Refuse to add ``model``'s rows of this image set, task and classes to ``st`` when they differ."""
    if st.fingerprint != model.fingerprint:
        raise ClefError(f"store was embedded with model {st.fingerprint}, but the model given is "
                        f"{model.fingerprint}", path=st.path,
                        hint="write to another store path (one store per model and image set) "
                             "or pass --overwrite")
    if st.dim != model.embed_dim:
        raise ClefError(f"store holds {st.dim}-d embeddings, the model makes {model.embed_dim}-d",
                        path=st.path)
    if st.task != task or list(st.classes) != list(classes):
        raise ClefError(f"store holds task {st.task!r} with classes {st.classes[:6]}, the images "
                        f"given are {task!r} with {list(classes)[:6]}", path=st.path,
                        hint="use another store path or --overwrite")
    if st.image_set != image_set:
        raise ClefError(f"store holds image set {st.image_set!r}, not {image_set!r}", path=st.path,
                        hint="use another store path or --overwrite")


def _check_prefix(st: EmbeddingStore, samples: Sequence) -> None:
    """The store's rows and skipped ids must be exactly the first ``consumed`` samples."""
    consumed = st.consumed
    if consumed > len(samples):
        raise ClefError(f"store already holds {consumed} images, more than the {len(samples)} given",
                        path=st.path, hint="use another store path or --overwrite")
    if consumed == 0:
        return
    stored, skipped = st.ids, set(st.skipped_ids)
    expected = [s.id for s in samples[:consumed] if s.id not in skipped]
    if stored != expected or len(expected) + len(skipped) != consumed:
        raise ClefError("store holds a different image list than the one given (resuming needs "
                        "the same images in the same order)", path=st.path,
                        hint="use another store path or --overwrite")


def _open_for_embedding(model, samples: list, store_path: Path, *, image_set: str, task: str,
                        classes: list[str], dtype: str, overwrite: bool, part: str | None,
                        model_ref: dict | None = None) -> EmbeddingStore:
    """The store to embed into, open for appending: the existing one when it fits (resume),
    else a new one."""
    if store_path.exists() and not overwrite:
        store = EmbeddingStore.open(store_path, mode="a")
        try:
            check_compatible(store, model, image_set, task, classes, dtype)
            _check_prefix(store, samples)
        except BaseException:
            store.close()
            raise
        return store
    return EmbeddingStore.create(store_path, model.fingerprint, model.embed_dim, image_set, dtype,
                                 task=task, classes=classes, overwrite=overwrite,
                                 extra_attrs=({"part": part} if part else {}) | ({"model": model_ref} if model_ref else {}))


def _embed_single(model, samples: list, store_path: Path, *, batch_size: int, chunk_size: int,
                  progress: bool, image_set: str, task: str, classes: list[str], dtype: str,
                  inference: str, num_workers: int | None, overwrite: bool, transform,
                  part: str | None = None, model_ref: dict | None = None) -> EmbedReport:
    t0 = time.perf_counter()
    store = _open_for_embedding(model, samples, store_path, image_set=image_set, task=task,
                                classes=classes, dtype=dtype, overwrite=overwrite, part=part, model_ref=model_ref)
    _remove_stale_temps(store_path)
    resumed_from = store.consumed
    skipped_before = store.skipped_count
    n = len(samples)
    try:
        embedded_now, infer = 0, "n/a"
        if resumed_from < n:
            embedded_now, infer = _embed_rows(store, model, samples, batch_size=batch_size,
                                              chunk_size=chunk_size, progress=progress, task=task,
                                              classes=classes, inference=inference,
                                              num_workers=num_workers, transform=transform)
        if store.consumed != n:
            raise ClefError(f"embedding ended after {store.consumed} of {n} images")
        skipped_now = store.skipped_count - skipped_before
        finish(store, check=part is None)       # nothing readable: an error, and no store
        seconds = time.perf_counter() - t0
        report = EmbedReport(str(store_path), store.count, store.skipped_count, embedded_now,
                             resumed_from, store.complete, seconds,
                             embedded_now / seconds if seconds > 0 else 0.0, store.skipped_ids, infer)
    finally:
        store.close()
    if skipped_now:
        log.warning("%d unreadable images skipped (e.g. %s); their ids are kept in the store",
                    skipped_now, report.skipped_ids[skipped_before])
    return report


def _remove_stale_temps(store_path: Path) -> None:
    """Temporary files left by a creation or merge that was killed (we hold the writer lock)."""
    for p in store_path.parent.glob(f".{store_path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            p.unlink()


# ----------------------------------------------------------------------------------------------
# reader -> encoder -> writer
# ----------------------------------------------------------------------------------------------


def _chunk_batches(start: int, stop: int, batch_size: int, chunk_size: int) -> list[range]:
    """The input batches of ``[start, stop)``: at most ``batch_size`` long, and cut at every
    multiple of ``chunk_size``, so that each commit takes whole batches and ends exactly on a
    multiple of ``chunk_size`` (or at ``stop``), also when resuming from any position."""
    out = []
    pos = start
    while pos < stop:
        end = min(stop, pos + batch_size, (pos // chunk_size + 1) * chunk_size)
        out.append(range(pos, end))
        pos = end
    return out


def _read_batches(samples: list, batches: list[range], transform, n_classes: int, task: str,
                  workers: int, pin_memory: bool):
    """The reader: per batch ``(requested, kept samples, skipped ids, pixels of the kept)``.

    An unreadable image is replaced by the dataset with the next readable one, so a served index
    that differs from the requested one marks the requested image as unreadable."""
    from torch.utils.data import DataLoader

    from clefctl.data.dataset import SampleDataset, collate

    ds = SampleDataset(samples, transform, n_classes, task)
    loader = DataLoader(ds, batch_sampler=batches, num_workers=workers, collate_fn=collate,
                        pin_memory=pin_memory)
    for batch, requested in zip(loader, batches):
        served = batch["index"].tolist()
        keep = [j for j, (s, r) in enumerate(zip(served, requested)) if s == r]
        skipped = [samples[r].id for s, r in zip(served, requested) if s != r]
        pixels = None
        if keep:
            pixels = batch["image"][keep] if len(keep) < len(served) else batch["image"]
        yield requested, [samples[requested[j]] for j in keep], skipped, pixels


class _ChunkWriter:
    """The writer: gathers encoded rows and skipped ids, and commits them as one chunk."""

    def __init__(self, store: EmbeddingStore):
        self.store = store
        self.embedded = 0
        self._emb: list[np.ndarray] = []
        self._samples: list = []
        self._skipped: list[str] = []

    def add(self, emb: np.ndarray | None, samples: list, skipped: list[str]) -> None:
        self._skipped.extend(skipped)
        if emb is not None:
            self._emb.append(emb)
            self._samples.extend(samples)

    def commit(self) -> None:
        emb = np.concatenate(self._emb) if self._emb else np.zeros((0, self.store.dim), np.float32)
        self.store.append(emb, self._samples, self._skipped)
        self.embedded += len(self._samples)
        self._emb, self._samples, self._skipped = [], [], []


def _embed_rows(store: EmbeddingStore, model, samples: list, *, batch_size: int, chunk_size: int,
                progress: bool, task: str, classes: list[str], inference: str,
                num_workers: int | None, transform) -> tuple[int, str]:
    """Embed ``samples[store.consumed:]`` into ``store``, committing one chunk at every multiple
    of ``chunk_size`` inputs. Returns (rows embedded, inference dtype)."""
    import torch

    from clefctl import distributed
    from clefctl.data.transforms import transforms_for
    from clefctl.model.inference import inference_dtype
    from clefctl.ui import progress_bar

    n, start = len(samples), store.consumed
    cast = inference_dtype(model.device, inference)
    tf = transform if transform is not None else transforms_for(model, train=False)
    batches = _chunk_batches(start, n, batch_size, chunk_size)
    reader = _read_batches(samples, batches, tf, len(classes) if task == "au" else 0, task or "au",
                           distributed.worker_count("embed", model.device, requested=num_workers),
                           pin_memory=torch.device(model.device).type == "cuda")
    writer = _ChunkWriter(store)
    with progress_bar(f"embed {store.path.name}", total=n, enabled=progress, completed=start) as bar:
        for requested, kept, skipped, pixels in reader:
            emb = None
            if kept:
                emb = model.encode_images(pixels, batch_size=len(kept), dtype=cast).numpy()
            writer.add(emb, kept, skipped)
            bar.advance(len(requested))
            if requested.stop % chunk_size == 0 or requested.stop == n:
                writer.commit()
    return writer.embedded, str(cast).replace("torch.", "")


__all__ = ["EmbedReport", "embed_into_store", "part_path", "check_compatible"]
