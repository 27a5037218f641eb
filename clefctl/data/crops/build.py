"""``clefctl data prepare --dataset NAME``: build or complete a data set's face-crop cache.

:func:`prepare_dataset` lists the data set's frames, leaves out those already cropped whose file is
unchanged (same size and modification time), cuts the rest into runs of at most ``chunk`` frames of
one folder and crops them in a pool of worker processes (:mod:`clefctl.data.crops.worker`). Each
finished run is one ``chunks/NNNNNN.npz`` file, written whole (a temporary file, then renamed), so a
killed prepare loses at most the runs in flight and a rerun goes on from there. When every frame has
an entry it writes ``index.npz``, the lists of frames without a crop and, last, ``complete.json``:
only then do training, evaluation and embedding use the cache (:mod:`clefctl.data.crops.use`).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from clefctl.data.crops.layout import (STATUS_NAMES, STATUS_NO_FACE, STATUS_UNREADABLE, CropSettings, Entries,
                                       bundle_frames, cache_folder, cache_key, is_fresh, read_chunks, read_key)
from clefctl.errors import ClefError, Interrupted
from clefctl.paths import FileLock, write_json_atomic, write_text_atomic

CHUNK = 256
_NOT_FRAMES = {"boxes": "its annotations give a face box for every image, which training crops by",
               "aligned": "its images are already aligned face crops"}


@dataclass
class DatasetPrepareReport:
    """What :func:`prepare_dataset` did. ``frames``: the data set's distinct frames; ``reused``: those
    cropped before with their file unchanged; ``cropped_now``: handled in this run. The status counts
    cover every frame: ``face`` (detected), ``neighbour`` (no face detected; a nearby frame's box
    used), ``no_face`` and ``unreadable`` (no crop: listed in ``no_face.txt`` / ``unreadable.txt``)."""

    dataset: str
    cache: str
    size: int
    frames: int = 0
    reused: int = 0
    cropped_now: int = 0
    workers: int = 1
    seconds: float = 0.0
    counts: dict = field(default_factory=dict)
    no_face: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    @property
    def frames_per_s(self) -> float:
        return self.cropped_now / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(frames_per_s=round(self.frames_per_s, 2),
                 frames_per_s_per_worker=round(self.frames_per_s / max(1, self.workers), 2))
        return d


def check_preparable(bundle) -> None:
    """ClefError when a data set's samples carry face boxes or pixels: no whole frames to crop."""
    if any(s.box is not None or s.pixels is not None for s in bundle.samples):
        raise ClefError(f"{bundle.name} gives face boxes or in-memory images: it needs no face-crop cache",
                        path=bundle.root)


def _runs(items: list[tuple[str, str]], chunk: int) -> list[list[tuple[str, str]]]:
    """Consecutive frames of one folder, at most ``chunk`` a run."""
    runs, current, folder = [], [], None
    for rel, path in items:
        parent = os.path.dirname(rel)
        if current and (parent != folder or len(current) >= chunk):
            runs.append(current)
            current = []
        folder = parent
        current.append((rel, path))
    if current:
        runs.append(current)
    return runs


def _changed(done: Entries, items: list[tuple[str, str]], folder: Path) -> list[tuple[str, str]]:
    """The items without an entry, or whose entry no longer holds (:func:`~clefctl.data.crops.layout.is_fresh`)."""
    known = {rel: i for i, rel in enumerate(done.rel.tolist())}
    return [(rel, path) for rel, path in items
            if (i := known.get(rel)) is None or not is_fresh(done, i, path, folder)]


def prepare_dataset(name: str, *, root: str | os.PathLike | None = None, data_root: str | os.PathLike | None = None,
                    settings: CropSettings | None = None, workers: int | None = None, mode: str | None = None,
                    max_frames: int | None = None, chunk: int = CHUNK, progress: bool = True) -> DatasetPrepareReport:
    """Crop every frame of data set ``name`` into its face-crop cache; resumable (see the module doc).

    ``mode``/``max_frames``: the adapter's options (``mode="pretrain"``: the frames pre-training reads).
    A manifest's or folder's images are searched with the photo setting (``settings.setting``).
    ``workers``: processes (default every usable core, :func:`clefctl.distributed.worker_count`).
    """
    from clefctl.data import get_spec, load_dataset

    settings = settings or CropSettings()
    if settings.size < 16 or settings.margin < 0:
        raise ClefError(f"crop size must be >= 16 and margin >= 0, got {settings.size} and {settings.margin}")
    opts = {k: v for k, v in (("mode", mode), ("max_frames", max_frames)) if v is not None}
    spec = get_spec(name)
    if spec.faces in _NOT_FRAMES:  # before loading: a synthetic set would be generated first
        raise ClefError(f"{spec.name} needs no face-crop cache: {_NOT_FRAMES[spec.faces]}", hint="train on it directly")
    bundle = load_dataset(name, root=root, data_root=data_root, **opts)
    check_preparable(bundle)
    if spec.faces == "photos" and settings.setting == "frames":  # the user's own photos: faces of any size
        settings = replace(settings, setting="photos")
    items = bundle_frames(bundle)
    if not items:
        raise ClefError(f"{bundle.name} lists no image files to crop", path=bundle.root)
    folder = cache_folder(bundle.root, settings)
    lock = FileLock(folder / "lock")
    if not lock.try_acquire():
        raise ClefError("another clefctl data prepare is writing this cache", path=folder,
                        hint=f"wait for process {lock.holder() or '?'} to finish")
    try:
        return _prepare_locked(bundle, folder, settings, items, workers, chunk, progress)
    finally:
        lock.release()


def _prepare_locked(bundle, folder: Path, settings: CropSettings, items, workers, chunk: int,
                    progress: bool) -> DatasetPrepareReport:
    from clefctl.distributed import worker_count

    key = cache_key(bundle.root, settings)
    if read_key(folder) != key:
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / "key.json", key)
    (folder / "complete.json").unlink(missing_ok=True)  # partial from here until the end
    done, next_id = read_chunks(folder)
    todo = _changed(done, items, folder)
    runs = _runs(todo, max(1, int(chunk)))
    n_workers = min(worker_count("prepare", items=len(todo), requested=workers), max(1, len(runs)))
    report = DatasetPrepareReport(dataset=bundle.name, cache=str(folder), size=settings.size, frames=len(items),
                                  reused=len(items) - len(todo), cropped_now=len(todo), workers=n_workers)
    t0 = time.perf_counter()
    new = _crop_runs(runs, folder, settings, n_workers, next_id, progress, bundle.name)
    report.seconds = round(time.perf_counter() - t0, 3)
    _finish(folder, key, Entries.merge([done, *new]), {rel for rel, _ in items}, report)
    return report


def _crop_runs(runs, folder: Path, settings: CropSettings, n_workers: int, next_id: int, progress: bool,
               label: str) -> list[Entries]:
    """Crop ``runs`` (in a pool when ``n_workers`` > 1), one chunk file per run as each finishes; the
    runs' entries."""
    from clefctl.data.crops import worker
    from clefctl.ui import progress_bar

    chunks = folder / "chunks"
    chunks.mkdir(parents=True, exist_ok=True)
    jobs = [{"out": str(folder), "items": run} for run in runs]
    total = sum(len(r) for r in runs)
    parts: list[Entries] = []

    def keep(k: int, entries: Entries) -> None:
        entries.save(chunks / f"{next_id + k:06d}.npz")
        parts.append(entries)
        bar.advance(len(entries))
    with progress_bar(f"cropping {label} faces", total=total, enabled=progress and total > 0) as bar:
        try:
            if n_workers <= 1:
                worker.init(settings.to_dict())
                for k, job in enumerate(jobs):
                    keep(k, worker.crop_run(job))
            else:
                _pool(jobs, settings, n_workers, keep)
        except KeyboardInterrupt:
            raise Interrupted(f"prepare interrupted; the runs finished so far are kept in {folder}: "
                              f"run the same clefctl data prepare again to go on") from None
    return parts


def _pool(jobs, settings: CropSettings, n_workers: int, keep) -> None:
    """The jobs in a spawned process pool, at most two a worker in flight; ``keep(k, entries)`` for each
    finished job ``k``, in the order they finish."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from clefctl.data.crops import worker

    with ProcessPoolExecutor(n_workers, mp_context=mp.get_context("spawn"), initializer=worker.init,
                             initargs=(settings.to_dict(),)) as pool:
        queue = list(enumerate(jobs))[::-1]
        running: dict = {}
        try:
            while queue or running:
                while queue and len(running) < 2 * n_workers:
                    k, job = queue.pop()
                    running[pool.submit(worker.crop_run, job)] = k
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    keep(running.pop(fut), fut.result())
        except BaseException:
            for fut in running:
                fut.cancel()
            raise


def _finish(folder: Path, key: dict, merged: Entries, mine_rels: set, report: DatasetPrepareReport) -> None:
    """index.npz (every entry), the lists and complete.json (last); the report counts this data set's frames."""
    merged.save(folder / "index.npz")
    mine = np.fromiter((r in mine_rels for r in merged.rel.tolist()), bool, len(merged))
    status, rels = merged.status[mine], merged.rel[mine]
    report.counts = {name: int((status == i).sum()) for i, name in enumerate(STATUS_NAMES)}
    report.no_face = sorted(rels[status == STATUS_NO_FACE].tolist())
    report.unreadable = sorted(rels[status == STATUS_UNREADABLE].tolist())
    for name, code in (("no_face.txt", STATUS_NO_FACE), ("unreadable.txt", STATUS_UNREADABLE)):
        write_text_atomic(folder / name, "".join(f"{r}\n" for r in sorted(merged.rel[merged.status == code].tolist())))
    write_json_atomic(folder / "complete.json", {
        "key": key, "entries": len(merged), "size": report.size,
        "counts": {name: int((merged.status == i).sum()) for i, name in enumerate(STATUS_NAMES)},
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "last_dataset": report.dataset,
        "last_frames": report.frames})
