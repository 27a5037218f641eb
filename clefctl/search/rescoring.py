"""Zero-shot re-scoring of the cached image embeddings against a prompt set (only texts are encoded)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from clefctl.errors import ClefError
from clefctl.prompts import available_prompt_sets, load_prompts
from clefctl.search.encoding import class_text_embeddings, open_store
from clefctl.store.format import EmbeddingStore

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# re-scoring
# ----------------------------------------------------------------------------------------------


@dataclass
class RescoreResult:
    """Zero-shot scores of every store row against every prompt class."""

    class_ids: list[str]
    class_names: list[str]
    scores: np.ndarray              # (N, C) float32 cosine similarities
    task: str                       # "fer" | "au"
    mode: str
    logit_scale: float
    ids: list[str] = field(default_factory=list)
    prompt_hash: str = ""
    text_cache_hit: bool | None = None
    seconds: float = 0.0

    @property
    def probabilities(self) -> np.ndarray:
        """FER: softmax over classes of logit_scale * cosine; AU: sigmoid per AU."""
        z = self.scores.astype(np.float32) * np.float32(self.logit_scale)
        if self.task == "au":
            return 1.0 / (1.0 + np.exp(-z))
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    @property
    def predictions(self) -> np.ndarray:
        """FER: (N,) class index (argmax); AU: (N, C) bool, sigmoid(logit_scale * s) > 0.5."""
        if self.task == "au":
            return self.scores > 0  # sigmoid(scale * s) > 0.5  <=>  s > 0 for scale > 0
        return np.argmax(self.scores, axis=1)

    def to_frame(self, probabilities: bool = True):
        """One row per image: id, then one column per class (probability or cosine), and the
        predicted class (FER) or the predicted AUs (AU)."""
        import pandas as pd

        values = self.probabilities if probabilities else self.scores
        df = pd.DataFrame(values, columns=self.class_ids)
        df.insert(0, "id", self.ids if self.ids else np.arange(len(values)))
        pred = self.predictions
        if self.task == "au":
            df["predicted"] = [" ".join(c for c, on in zip(self.class_ids, row) if on) for row in pred]
        else:
            df["predicted"] = [self.class_ids[i] for i in pred]
        return df

    def agreement(self, store: EmbeddingStore) -> dict:
        """Agreement with the store's labels, classes matched by id: FER accuracy over labelled
        rows; AU per-class F1 over coded rows (classes the store lacks are left out)."""
        lab = store.labels()
        out: dict = {"task": self.task}
        if self.task == "au" and "aus" in lab:
            f1 = {}
            for j, cid in enumerate(self.class_ids):
                if cid not in store.classes:
                    continue
                s = store.classes.index(cid)
                coded = lab["au_mask"][:, s] > 0
                y, p = lab["aus"][coded, s] > 0, self.predictions[coded, j]
                tp = int(np.sum(y & p))
                denom = int(np.sum(y)) + int(np.sum(p))
                f1[cid] = 2 * tp / denom if denom else 0.0
            out["f1"] = f1
            out["mean_f1"] = float(np.mean(list(f1.values()))) if f1 else float("nan")
        else:
            mapping = np.array([self.class_ids.index(c) if c in self.class_ids else -1
                                for c in store.classes] or [-1])
            y = lab["label"].astype(np.int64)
            ok = (y >= 0) & (y < len(store.classes))
            target = mapping[y[ok]] if ok.any() else np.zeros(0, dtype=np.int64)
            out["labelled"] = int(ok.sum())
            out["accuracy"] = float(np.mean(self.predictions[ok] == target)) if ok.any() else float("nan")
        return out


def check_prompts_fit(store: EmbeddingStore, model, prompts) -> None:
    """Refuse (:class:`ClefError`) a prompt set that cannot score this store: its task (au/fer)
    differs from the store's labels or from the fine-tuned head of ``model``, or none of its
    class ids is among the store's classes. The message says what differs and names the
    shipped prompt sets that would fit. Extra or missing classes are fine (zero-shot, subsets)."""
    meta = getattr(model, "meta", None) or {}
    head = meta.get("task") if meta.get("stage") == "finetune" else None
    ptask, pids = prompts.task, list(prompts.class_ids)
    what = f"prompt set '{prompts.dataset}' is for task {ptask} ({len(pids)} classes: {_few(pids)})"
    problem = None
    if store.task in ("au", "fer") and ptask in ("au", "fer") and ptask != store.task:
        problem = (f"{what}, but the store holds {store.task} labels ({store.n_classes} classes: "
                   f"{_few(store.classes)})")
    elif head in ("au", "fer") and ptask in ("au", "fer") and ptask != head:
        problem = f"{what}, but the model's head was fine-tuned for {head} ({meta.get('dataset', '?')})"
    elif store.task in ("au", "fer") and store.classes and not set(pids) & set(store.classes):
        problem = (f"{what}: none of them is among the store's {store.n_classes} classes "
                   f"({_few(store.classes)})")
    if problem is None:
        return
    fits = fitting_prompt_sets(store.task or head or "", store.classes)
    hint = (f"use --prompts {' or '.join(fits)}" if fits else
            f"write a prompt YAML for task {store.task or head} with classes {_few(store.classes)}")
    raise ClefError(problem, path=store.path, hint=hint)


def _few(items: Sequence[str], n: int = 6) -> str:
    items = list(items)
    return ", ".join(items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else "")


def fitting_prompt_sets(task: str, classes: Sequence[str]) -> list[str]:
    """Shipped prompt sets of ``task`` holding every one of ``classes`` (exact sets first)."""

    exact, cover = [], []
    for name in available_prompt_sets():
        try:
            ps = load_prompts(name)
        except ClefError:  # pragma: no cover - a broken shipped file
            continue
        if ps.task != task or not set(classes) <= set(ps.class_ids):
            continue
        (exact if set(ps.class_ids) == set(classes) else cover).append(name)
    return exact + cover


def score_matrix(store: EmbeddingStore, class_vecs: np.ndarray, block_rows: int = 65536,
                 sub_rows: int = 2048) -> np.ndarray:
    """``(N, C)`` cosine of every committed row with every class vector: a chunked matmul
    reading the stored float16/float32 rows block by block (float32 accumulate)."""
    import torch

    c = class_vecs.shape[0]
    padded = -(-c // 16) * 16          # a skinny (n, 7) GEMM is slower than (n, 16) on CPU
    t = torch.zeros(class_vecs.shape[1], padded)
    t[:, :c] = torch.from_numpy(np.ascontiguousarray(class_vecs, dtype=np.float32)).T
    out = np.empty((store.count, c), dtype=np.float32)
    out_t = torch.from_numpy(out)
    scratch = torch.empty(sub_rows, padded)
    with torch.inference_mode():
        for start, block in store.iter_embeddings(block_rows, raw=True):
            b = torch.from_numpy(block)
            for s in range(0, b.shape[0], sub_rows):  # sub-blocks stay in cache while converted
                sub = b[s:s + sub_rows].float()
                k = sub.shape[0]
                torch.mm(sub, t, out=scratch[:k])
                out_t[start + s:start + s + k] = scratch[:k, :c]
    return out


def rescore(store, model, prompts, mode: str = "names", *, logit_scale: float | None = None,
            block_rows: int = 65536) -> RescoreResult:
    """Score every stored image against every class of ``prompts`` without the image encoder.

    Only the prompt texts are encoded (through the store's text cache); the cached image
    embeddings are multiplied by the class vectors of ``mode`` (see
    :func:`class_text_embeddings`). A class added to the prompt file is scored zero-shot, and a
    renamed or re-described class changes only its own column of ``scores``. ``logit_scale``
    (1/tau) defaults to the model's. A prompt set that does not fit the store or the model's
    head is refused first (:func:`check_prompts_fit`).
    """
    import time

    t0 = time.perf_counter()
    st, own = open_store(store, model)
    try:
        check_prompts_fit(st, model, prompts)
        task = prompts.task if prompts.task in ("au", "fer") else (st.task or "fer")
        if logit_scale is None:
            ls = model.logit_scale
            logit_scale = float(ls.detach().cpu().item() if hasattr(ls, "detach") else ls)
        class_vecs = class_text_embeddings(model, prompts, mode, store=st)
        scores = score_matrix(st, class_vecs, block_rows)
        return RescoreResult(class_ids=list(prompts.class_ids), class_names=list(prompts.class_names),
                             scores=scores, task=task, mode=mode, logit_scale=float(logit_scale),
                             ids=st.ids, prompt_hash=prompts.hash,
                             text_cache_hit=st.last_text_cache_hit,
                             seconds=time.perf_counter() - t0)
    finally:
        if own:
            st.close()
