"""``clefctl embed`` as a library call: :func:`run_embed` (a data set, or with ``paths`` photos and
videos: :func:`run_embed_media`) resolves the model (:meth:`Workspace.resolve_model`), embeds into the
run's store (:mod:`clefctl.embed.job`, :mod:`clefctl.embed.media`), builds the index
(:func:`clefctl.embed.index.index_after_embed`) and writes the run's files.

Example::

    >>> from clefctl.embed import EmbedOptions, run_embed
    >>> res = run_embed(EmbedOptions(dataset="synthetic-fer", weights="random", arch="clef-tiny"))  # doctest: +SKIP
    >>> res.run.path, res.store_path, res.report.rows                                     # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from clefctl.data import load_dataset
from clefctl.data.crops import crop_cache_for
from clefctl.embed.index import index_after_embed
from clefctl.embed.job import EmbedReport, embed_into_store
from clefctl.embed.jobs import index_step, stopping
from clefctl.embed.media import embed_media_into_store, media_image_set, media_prompts
from clefctl.errors import ClefError
from clefctl.paths import write_json_atomic
from clefctl.store.format import STORE_NAME, STORE_SUFFIX, store_filename
from clefctl.store.layout import crop_image_set
from clefctl.store.provenance import model_record
from clefctl.workspace import Run, Workspace


@dataclass
class EmbedOptions:
    """Everything ``clefctl embed`` takes (the same defaults as a bare ``clefctl embed``)."""

    dataset: str | None = field(default=None, metadata={
        "help": "Registered data set, e.g. rafdb, bp4d, synthetic-fer (default: the latest fine-tuning run's)."})
    dataset_root: str | None = field(default=None, metadata={"path": {}})
    data_root: str | None = field(default=None, metadata={"path": {"file_okay": False}})
    split: str = field(default="all", metadata={"help": "Official split to embed (train/val/test) or all."})
    weights: str | None = field(default=None, metadata={
        "help": "Model weights (file, registry name such as farl-ep64, exported folder, hf-hub:ORG/NAME or "
                "open_clip tag; 'random' = untrained). Default: the latest finetune run's model."})
    arch: str = "ViT-B-16"
    trust_checkpoint: bool = False
    crop_cache: bool = field(default=True, metadata={
        "help": "--dataset: embed the full frames even when a face-crop cache is ready (clefctl data prepare)."})
    device: str = "auto"
    out: str | None = field(default=None, metadata={
        "help": "Store file (default: <workspace>/embed/<image set>--<model>/store.h5).",
        "path": {"dir_okay": False}})
    batch_size: int = field(default=64, metadata={"help": "Images per model call.", "min": 1})
    chunk_size: int = field(default=1024, metadata={
        "help": "Images per committed chunk (the unit a killed run resumes from).", "min": 1})
    dtype: str = field(default="float16", metadata={
        "help": "Stored embedding type.", "choices": ("float16", "float32")})
    workers: int | None = field(default=None, metadata={"help": "Image-loading processes.", "min": 0})
    index: str = field(default="auto", metadata={
        "help": "FAISS index to build after embedding (auto: docs/store.md; `clefctl index build` rebuilds it).",
        "choices": ("auto", "flat", "ivf", "ivf-sq8", "ivf-pq", "hnsw", "ivf-ondisk", "none")})
    overwrite: bool = field(default=False, metadata={"help": "Start the store again instead of resuming it."})
    workspace: str | None = None
    progress: bool = True
    paths: tuple[str, ...] = ()         # photos, videos, folders, globs: one row per face (the arguments)
    every: int = field(default=1, metadata={"help": "PATH...: keep every N-th video frame.", "min": 1})
    max_frames: int | None = field(default=None, metadata={
        "help": "PATH...: at most this many frames per video.", "min": 1})
    detector: str = "auto"              # paths: auto | yunet | haar (clefctl.data.faces.choice)
    min_confidence: float | None = None  # paths: the detector's score threshold


@dataclass
class EmbedResult:
    """What :func:`run_embed` did: the embed run (None with ``out``: no run folder is written),
    the store file, the :class:`EmbedReport`, ``summary`` (the report as a dict, plus ``index``
    when one was built: what ``report.json`` and ``--json`` hold) and ``main`` (this process is
    rank 0: the one that wrote the run files and reports)."""

    run: Run | None
    store_path: Path
    report: EmbedReport
    summary: dict
    main: bool = True


def default_dataset(workspace, dataset_root, data_root) -> tuple[str, str | None, str | None]:
    """The data set (and its folders) of the latest fine-tuning run."""
    run = workspace.latest("finetune")
    if run is None:
        raise ClefError(f"no --dataset given and no fine-tuning run in {workspace.root}",
                        hint="run `clefctl finetune` first or pass --dataset NAME")
    cfg = run.config()
    opts = cfg.get("options", {})
    return cfg["dataset"], dataset_root or opts.get("dataset_root"), data_root or opts.get("data_root")


def embed_run_dir(workspace, fingerprint: str, image_set: str) -> Path:
    """The folder of the store of (model, image set): deterministic, so reruns resume."""
    return workspace.stage_dir("embed") / store_filename(fingerprint, image_set)[: -len(STORE_SUFFIX)]


def _select_split(bundle, split: str):
    """The bundle cut to ``split`` (all: unchanged) and the image-set name of the store."""
    if split != "all":
        kept = [s for s in bundle.samples if s.split == split]
        if not kept:
            raise ClefError(f"data set {bundle.name} has no samples in split {split!r}",
                            hint="use --split all, train, val or test")
        bundle.samples = kept
    return bundle, bundle.name if split == "all" else f"{bundle.name}-{split}"


def _embed_device(device: str) -> str:
    from clefctl import distributed

    if distributed.world_size() > 1 and device in ("auto", "cuda"):
        import torch

        return f"cuda:{distributed.local_rank()}" if torch.cuda.is_available() else "cpu"
    return device


def run_embed(opts: EmbedOptions) -> EmbedResult:
    """``clefctl embed`` without the printing: set up torchrun's process group (when launched so),
    load the data set (default: the latest fine-tuning run's) and split, resolve the model
    (:meth:`Workspace.resolve_model`), embed into the run's store (resuming it), build the index,
    and (without ``opts.out``) write the run's ``config.yaml`` and ``report.json`` and point
    ``embed/LATEST`` at it. Returns an :class:`EmbedResult`. With ``opts.paths`` (photos and
    videos) it is :func:`run_embed_media`."""
    if opts.paths:
        return run_embed_media(opts)
    from clefctl import distributed

    distributed.setup_from_env()
    ws = Workspace(opts.workspace)
    dataset, dataset_root, data_root = opts.dataset, opts.dataset_root, opts.data_root
    if dataset is None:
        dataset, dataset_root, data_root = default_dataset(ws, dataset_root, data_root)
    bundle, image_set = _select_split(load_dataset(dataset, root=dataset_root, data_root=data_root), opts.split)
    choice = ws.resolve_model(opts.weights, arch=opts.arch,
                              hint="pass --weights model.pt (or --weights random for an untrained model)")
    model = choice.load(_embed_device(opts.device), trust_checkpoint=opts.trust_checkpoint, default_arch=opts.arch)
    crops = crop_cache_for(bundle, model.image_size, opts.crop_cache)
    if crops:  # rows are the crops (their own image set: a store never mixes crops and frames)
        bundle.samples = crops.apply(bundle.samples, what="embedding")
        image_set = crop_image_set(image_set, crops.size)
    run_dir = embed_run_dir(ws, model.fingerprint, image_set) if opts.out is None else Path(opts.out).parent
    store_path = run_dir / STORE_NAME if opts.out is None else Path(opts.out)
    if distributed.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
    distributed.barrier()
    with stopping(store_path):
        report = embed_into_store(model, bundle, store_path, batch_size=opts.batch_size, chunk_size=opts.chunk_size,
                                  progress=opts.progress, image_set=image_set, dtype=opts.dtype,
                                  num_workers=opts.workers, overwrite=opts.overwrite, model_ref=model_record(choice, model))
    summary, run, main = report.to_dict(), None, distributed.is_main()
    if main:
        failed = index_step(summary, lambda: index_after_embed(store_path, opts.index, model, bundle.prompts,
                                                               progress=opts.progress)) \
            if opts.index != "none" and report.rows else None  # tuned on the prompt texts, encoded by this model
        if opts.out is None:
            run = Run(run_dir, "embed")
            run.save_config({"dataset": dataset, "dataset_root": dataset_root, "data_root": data_root,
                             "split": opts.split, "image_set": image_set, "arch": model.arch,
                             "weights": choice.weights or "random", "fingerprint": model.fingerprint,
                             "store": STORE_NAME, "dtype": opts.dtype, "batch_size": opts.batch_size,
                             "chunk_size": opts.chunk_size, "crop_cache": crops.describe() if crops else None})
            write_json_atomic(run_dir / "report.json", summary)
            ws.set_latest(run)
        if failed is not None:
            raise failed
    distributed.cleanup()
    return EmbedResult(run, store_path, report, summary, main)


def run_embed_media(opts: EmbedOptions) -> EmbedResult:
    """``clefctl embed PATH...``: resolve the model, embed the faces of ``opts.paths`` into the run
    folder's store (``<workspace>/embed/media-<hash>--<model>/store.h5``, or ``opts.out``), build
    the index, write ``config.yaml`` and ``report.json`` and point ``embed/LATEST`` at the run."""
    from clefctl import distributed
    from clefctl.data.faces import expand_inputs
    from clefctl.data.faces.choice import resolve_detector

    if distributed.world_size() > 1:
        raise ClefError("embed PATH... runs in one process", hint="start it without torchrun")
    if opts.dataset is not None:
        raise ClefError("give either --dataset or PATH... (photos, videos, folders), not both")
    ws = Workspace(opts.workspace)
    files = [os.path.abspath(p) for p in expand_inputs(list(opts.paths))]
    faces = resolve_detector(opts.detector, opts.min_confidence)
    image_set = media_image_set(files, opts.every, opts.max_frames, faces.describe())
    choice = ws.resolve_model(opts.weights, arch=opts.arch,
                              hint="pass --weights model.pt (or --weights random for an untrained model)")
    model = choice.load(opts.device, trust_checkpoint=opts.trust_checkpoint, default_arch=opts.arch)
    run_dir = embed_run_dir(ws, model.fingerprint, image_set) if opts.out is None else Path(opts.out).parent
    store_path = run_dir / STORE_NAME if opts.out is None else Path(opts.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    with stopping(store_path):
        report, counts = embed_media_into_store(model, files, store_path, every=opts.every, max_frames=opts.max_frames,
                                                batch_size=opts.batch_size, chunk_size=opts.chunk_size, dtype=opts.dtype,
                                                progress=opts.progress, overwrite=opts.overwrite, image_set=image_set,
                                                faces=faces, model_ref=model_record(choice, model))
    summary, run = {**report.to_dict(), **counts}, None
    failed = index_step(summary, lambda: index_after_embed(store_path, opts.index, model, media_prompts(model),
                                                           progress=opts.progress)) \
        if opts.index != "none" and report.rows else None     # tuned on text queries, as a data set's store is
    if opts.out is None:
        run = Run(run_dir, "embed")
        run.save_config({"inputs": files, "every": opts.every, "max_frames": opts.max_frames, "image_set": image_set,
                         "arch": model.arch, "weights": choice.weights or "random", "fingerprint": model.fingerprint,
                         "store": STORE_NAME, "dtype": opts.dtype, "batch_size": opts.batch_size,
                         "detector": faces.describe(),
                         "chunk_size": opts.chunk_size})
        write_json_atomic(run_dir / "report.json", summary)
        ws.set_latest(run)
    if failed is not None:
        raise failed
    return EmbedResult(run, store_path, report, summary, True)


__all__ = ["EmbedOptions", "EmbedResult", "run_embed", "run_embed_media", "embed_run_dir", "default_dataset"]
