"""The index jobs that load a model: ``clefctl index build`` as a library call, and the index build at the
end of ``embed`` (what a saved index holds and ``clefctl index status``: :mod:`clefctl.store.index.report`).

Both build with text-like tuning queries (:mod:`~clefctl.store.index.tuning`): the prompt texts of
the store's data set (every name template and description) encoded by the store's model and kept
in the store's text cache (so ``rescore`` finds them there too), plus whatever else the store has
cached. ``index build`` loads only the model's text tower for that, and only when the store holds
no text embeddings yet.

Example::

    >>> from clefctl.embed.index import IndexBuildOptions, run_index_build
    >>> run_index_build(IndexBuildOptions(store="runs/embed/x/store.h5", budget="600MB"))   # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from clefctl.errors import ClefError
from clefctl.prompts import class_texts, load_prompts
from clefctl.store.format import EmbeddingStore
from clefctl.store.index.kinds import INDEX_KINDS, IVF_KINDS, IndexParams, parse_size, resolve_index_kind
from clefctl.store.index.load import index_status, load_fresh, load_index
from clefctl.store.index.report import summary_of
from clefctl.store.index.saved import index_paths
from clefctl.store.index.tuning import cached_text_vectors
from clefctl.ui import say
from clefctl.workspace import Workspace

log = logging.getLogger("clefctl.embed")


def prompt_text_vectors(store: EmbeddingStore, model, prompts: str | None) -> np.ndarray | None:
    """The prompt set's texts (names in every template, every description) encoded by ``model``
    through the store's text cache; None when there is no such prompt set or no model."""
    if model is None or not prompts:
        return None
    try:
        ps = load_prompts(prompts)
    except ClefError as exc:
        log.info("no prompt texts to tune the index with (%s)", exc)
        return None
    if not ps.classes:
        return None
    texts, _ = class_texts(ps, "ensemble")
    return store.text_embeddings(ps.hash, model.fingerprint, texts, lambda t: model.encode_texts(t))


def index_after_embed(store_path, kind: str, model, prompts: str | None, *, progress: bool = True) -> dict:
    """``embed``'s last step: the store's index, built (with the prompt texts of ``prompts``
    encoded by the embedding ``model`` as tuning queries) unless a fresh one exists."""
    with EmbeddingStore.open(store_path) as st:
        fresh, _ = index_status(st, kind)
        texts = None
        if not fresh and _tuned(st, kind):
            texts = prompt_text_vectors(st, model, prompts)
            extra = cached_text_vectors(st)
            texts = texts if extra is None else (extra if texts is None else np.concatenate([texts, extra]))
    idx = load_index(store_path, kind, text_vectors=texts, progress=progress, announce=say if progress else None)
    return summary_of(idx)


def _tuned(st: EmbeddingStore, kind: str) -> bool:
    """Whether the index of ``kind`` would be an IVF index (whose nprobe is tuned on texts)."""
    try:
        return resolve_index_kind(kind, st.count, st.dim) in IVF_KINDS
    except ClefError:
        return False


@dataclass
class IndexBuildOptions:
    """``clefctl index build``'s options (see its ``--help``)."""

    store: str = field(metadata={"shared": "store"})   # the command resolves --store / --run
    kind: str = field(default="auto", metadata={
        "help": "Index family (auto: exact below 100k rows, else the most accurate that fits --budget).",
        "choices": tuple(INDEX_KINDS)})
    budget: str | int | None = field(default=None, metadata={
        "help": "Most memory the index may take, e.g. 600MB (default: the float16 embeddings' size).", "size": True})
    nlist: int | None = field(default=None, metadata={"help": "IVF lists (default: ~4*sqrt(rows)).", "min": 1})
    nprobe: int | None = field(default=None, metadata={
        "help": "IVF lists probed per query (default: tuned to reach --recall on text-like queries).", "min": 1})
    target_recall: float = field(default=0.95, metadata={
        "flag": "--recall", "help": "recall@10 the tuned nprobe must reach on text-like queries.",
        "min": 0, "max": 1, "min_open": True})
    gpu: str = field(default="auto", metadata={
        "help": "Use GPU FAISS when it is installed and sees a GPU.", "choices": ("auto", "yes", "no")})
    rebuild: bool = field(default=False, metadata={"help": "Build even when the saved index is fresh."})
    config: dict | None = None           # the embed run's config.yaml (weights, arch, dataset)
    weights: str | None = field(default=None, metadata={
        "help": "Model for the tuning texts (default: the embed run's)."})
    arch: str | None = field(default=None, metadata={"shared": "store_arch"})
    trust_checkpoint: bool = False
    prompts: str | None = field(default=None, metadata={
        "help": "Prompt set whose texts tune nprobe (default: the store's data set's)."})
    workspace: str | None = None
    progress: bool = True


def _text_model(opts: IndexBuildOptions):
    return Workspace(opts.workspace).store_model(opts.store, opts.config, weights=opts.weights, arch=opts.arch,
                                                 trust_checkpoint=opts.trust_checkpoint, towers="text", required=False)


def run_index_build(opts: IndexBuildOptions) -> dict:
    """Build (or find fresh) the index of ``opts.store``; returns :func:`summary_of` plus
    ``built`` (False: it was fresh) and ``path``."""
    if not 0 < float(opts.target_recall) <= 1:
        raise ClefError(f"--recall must be in (0, 1], got {opts.target_recall}")
    params = IndexParams(nlist=opts.nlist, nprobe=opts.nprobe, target_recall=float(opts.target_recall),
                         budget_bytes=parse_size(opts.budget), gpu=opts.gpu)
    announce = say if opts.progress else log.info
    with EmbeddingStore.open(opts.store) as st:
        fresh, reason = index_status(st, opts.kind, params)
        if fresh and not opts.rebuild and opts.budget is None:
            idx = load_fresh(st, params)
            if idx is not None:
                return {**summary_of(idx), "built": False, "path": str(index_paths(st.path)[0])}
        texts = cached_text_vectors(st)
        tuned = _tuned(st, opts.kind)
        if texts is None and tuned:
            cfg = opts.config or {}
            texts = prompt_text_vectors(st, _text_model(opts), opts.prompts or cfg.get("prompts") or cfg.get("dataset"))
        why = "rebuild requested" if fresh else reason
        if tuned and texts is None:
            why += "; no text embeddings to tune nprobe with (pass --weights, or run rescore or query once)"
        announce(f"{st.path}: building the index ({why})")
    idx = load_index(opts.store, opts.kind, params, rebuild=True, text_vectors=texts, progress=opts.progress,
                     announce=announce)
    return {**summary_of(idx), "built": True, "path": str(index_paths(opts.store)[0])}


__all__ = ["IndexBuildOptions", "run_index_build", "index_after_embed", "prompt_text_vectors"]
