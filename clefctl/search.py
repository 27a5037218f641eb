"""Search and re-scoring over an embedding store (:mod:`clefctl.store`).

Owns text and image queries (:func:`query_text`, :func:`query_image`), the class a free text is
nearest to (:func:`nearest_classes`; precision@k of a query's hits: :func:`nearest_with_precision`),
zero-shot re-scoring of the cached image embeddings against an edited prompt set (:func:`rescore`:
only texts are encoded), and contact sheets of hits (:func:`contact_sheet_of_hits`).

All scores are cosine similarities: stored image embeddings and text embeddings are unit
vectors, so inner product = cosine. Class probabilities follow the paper's heads: softmax over
classes of ``logit_scale * cosine`` for expressions (FER), an independent sigmoid per AU with
"present" when ``sigmoid(logit_scale * cosine) > 0.5``.

Example::

    >>> hits = query_text("runs/rafdb.h5", model, "lip corners pulled up", k=8)   # doctest: +SKIP
    >>> contact_sheet_of_hits(hits, "hits.png")                                  # doctest: +SKIP
    >>> res = rescore("runs/rafdb.h5", model, load_prompts("my-rafdb.yaml"))     # doctest: +SKIP
    >>> res.scores.shape                                                         # doctest: +SKIP
    (15339, 7)
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from clefctl.errors import ClefError
from clefctl.store.format import EmbeddingStore
from clefctl.store.layout import unit_rows
from clefctl.store.index import IndexParams, index_for_query

log = logging.getLogger(__name__)

RESCORE_MODES = ("names", "descriptions", "ensemble")
HIT_COLUMNS = ("rank", "row", "id", "path", "subject", "score", "labels")


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def _open_store(store, model=None) -> tuple[EmbeddingStore, bool]:
    """An open store (and whether we opened it); refuses a store of another model."""
    fingerprint = getattr(model, "fingerprint", None)
    if isinstance(store, EmbeddingStore):
        if store.closed:
            raise ClefError("the embedding store is closed", path=store.path)
        if fingerprint is not None and fingerprint != store.fingerprint:
            raise ClefError(f"store was embedded with model {store.fingerprint}, but the model "
                            f"given is {fingerprint}", path=store.path,
                            hint="embed the images again with this model, or load the model "
                                 "that made this store")
        return store, False
    return EmbeddingStore.open(store, fingerprint=fingerprint), True


def _encode(model, texts: Sequence[str]) -> np.ndarray:
    out = model.encode_texts(list(texts))
    out = out.detach().cpu().numpy() if hasattr(out, "detach") else np.asarray(out)
    return unit_rows(out)


def hits_frame(store: EmbeddingStore, scores: np.ndarray, rows: np.ndarray, query: str = ""):
    """A DataFrame of search hits (one query): rank, row, id, path, subject, score, labels, plus
    activity, frame and the face box for contact sheets, and where in which photo or video a face
    hit is: source (the file), timestamp (seconds, NaN = none) and face_id (-1 = none; frame
    is 1-based for faces of ``embed PATH...``). ``attrs["query"]`` keeps the query."""
    import pandas as pd

    keep = rows >= 0
    rows, scores = rows[keep], scores[keep]
    if rows.size:
        meta = store.metadata(rows)
        labels = store.label_texts(rows)
    else:
        meta, labels = None, []
    df = pd.DataFrame({
        "rank": np.arange(1, rows.size + 1),
        "row": rows.astype(np.int64),
        "id": meta["id"].tolist() if meta is not None else [],
        "path": meta["path"].tolist() if meta is not None else [],
        "subject": meta["subject"].tolist() if meta is not None else [],
        "score": scores.astype(np.float32),
        "labels": labels,
    })
    if meta is not None:
        for col in ("activity", "frame", "box_x", "box_y", "box_w", "box_h", "source", "timestamp", "face_id"):
            df[col] = meta[col].values
    df.attrs["query"] = query
    df.attrs["store"] = str(store.path)
    return df


def search_vectors(store, vectors: np.ndarray, k: int = 10, *, index: str = "auto",
                   params: IndexParams | None = None, queries: Sequence[str] | None = None,
                   progress: bool = False):
    """Nearest store rows of each query vector: a list of hit DataFrames (one per query).

    Searches the store's saved index (memory-mapped); without a fresh one, small stores are
    searched exactly and larger ones get their index built first, after a warning
    (:func:`clefctl.store.index.index_for_query`; ``progress``: its progress bar)."""
    st, own = _open_store(store)
    try:
        if st.count == 0:
            raise ClefError("the store has no embeddings yet", path=st.path, hint="run `clefctl embed`")
        vectors = unit_rows(np.atleast_2d(np.asarray(vectors, dtype=np.float32)))
        if vectors.shape[1] != st.dim:
            raise ClefError(f"query vectors are {vectors.shape[1]}-d, the store holds {st.dim}-d rows")
        idx = index_for_query(st, index, params, progress=progress)
        scores, rows = idx.search(vectors, k)
        names = list(queries) if queries is not None else [""] * len(vectors)
        return [hits_frame(st, scores[i], rows[i], names[i]) for i in range(len(vectors))]
    finally:
        if own:
            st.close()


# ----------------------------------------------------------------------------------------------
# queries
# ----------------------------------------------------------------------------------------------


def query_text(store, model, text: str | Sequence[str], k: int = 10, *, index: str = "auto",
               params: IndexParams | None = None, cache: bool = True, progress: bool = False):
    """The ``k`` store images nearest to a text (or the list of hit frames for a list of texts).

    ``model`` is the store's model, or a callable that builds it (e.g. a text-only model,
    :func:`clefctl.model.text.create_text`): it is called only when a text is not in the store's
    query-text cache (``cache``; :func:`query_text_vectors`).

    Columns: rank, row, id, path, subject, score (cosine), labels, activity, frame, box_*.
    """
    st, own = _open_store(store, None if _is_loader(model) else model)
    try:
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or any(not str(t).strip() for t in texts):
            raise ClefError("the query text is empty")
        vectors = query_text_vectors(st, model, texts, cache=cache)
        hits = search_vectors(st, vectors, k, index=index, params=params, queries=texts, progress=progress)
        return hits[0] if isinstance(text, str) else hits
    finally:
        if own:
            st.close()


def _is_loader(model) -> bool:
    return callable(model) and not hasattr(model, "encode_texts")


def query_text_vectors(store: EmbeddingStore, model, texts: Sequence[str], *, cache: bool = True) -> np.ndarray:
    """(T, D) unit embeddings of query ``texts`` by the store's model: those in the store's
    query-text cache (:class:`clefctl.store.textcache.QueryTextCache`) are read from it, the
    others encoded (``model`` built first when it is a callable; a model of another fingerprint
    than the store's is refused) and added to it."""
    from clefctl.store.textcache import QueryTextCache

    qc = QueryTextCache(store.path, store.fingerprint) if cache else None
    found = qc.lookup(texts) if qc is not None else {}
    missing = [t for t in dict.fromkeys(texts) if t not in found]
    if missing:
        m = model() if _is_loader(model) else model
        if getattr(m, "fingerprint", store.fingerprint) != store.fingerprint:
            raise ClefError(f"store was embedded with model {store.fingerprint}, but the model given is "
                            f"{m.fingerprint}", path=store.path,
                            hint="embed the images again with this model, or load the model that made this store")
        emb = _encode(m, missing)
        found.update(zip(missing, emb))
        if qc is not None:
            qc.add(missing, emb)
    return np.stack([np.asarray(found[t], dtype=np.float32) for t in texts])


def query_image(store, model, image: str | os.PathLike, k: int = 10, *, index: str = "auto",
                params: IndexParams | None = None, progress: bool = False):
    """The ``k`` store images nearest to an image file, or to a store row given by its id
    (then the image encoder is not run and the row itself comes first, score 1)."""
    st, own = _open_store(store, model)
    try:
        p = Path(str(image)).expanduser()
        if p.is_file():
            vec = _encode_image_file(model, p)
            label = str(p)
        else:
            ids = st.ids
            try:
                row = ids.index(str(image))
            except ValueError:
                raise ClefError(f"{str(image)!r} is neither an image file nor an id in the store",
                                path=st.path, hint="give an image path or an id such as "
                                                   f"{ids[0]!r}" if ids else None) from None
            vec = st.embeddings([row])
            label = f"id:{image}"
        return search_vectors(st, vec, k, index=index, params=params, queries=[label], progress=progress)[0]
    finally:
        if own:
            st.close()


def _encode_image_file(model, path: Path) -> np.ndarray:
    from clefctl.data.images import read_rgb
    from clefctl.data.transforms import transforms_for

    try:
        img = read_rgb(path)
    except (OSError, ValueError) as exc:
        raise ClefError(f"cannot read the query image ({exc})", path=path) from None
    pixels = transforms_for(model, train=False)(img).unsqueeze(0)
    out = model.encode_images(pixels)
    return unit_rows(out.detach().cpu().numpy() if hasattr(out, "detach") else np.asarray(out))


def nearest_classes(model, prompts, text: str, k: int = 5):
    """Which prompt classes a free text is nearest to: cosine between the text and each class's
    label name rendered with every name template (mean embedding, renormalised).

    Returns a DataFrame rank, class_id, name, score (k rows, best first).
    """
    import pandas as pd

    if not str(text).strip():
        raise ClefError("the query text is empty")
    class_vecs = class_text_embeddings(model, prompts, "names", all_name_templates=True)
    q = _encode(model, [text])[0]
    scores = class_vecs @ q
    order = np.argsort(-scores, kind="stable")[: max(1, int(k))]
    return pd.DataFrame({"rank": np.arange(1, len(order) + 1),
                         "class_id": [prompts.class_ids[i] for i in order],
                         "name": [prompts.class_names[i] for i in order],
                         "score": scores[order].astype(np.float32)})


def nearest_with_precision(model, text: str, hits, store_config: dict | None = None, k: int = 3) -> dict:
    """The ``k`` prompt classes nearest to ``text`` and precision@len(hits): the share of ``hits``
    labelled with the nearest class (None when no hit carries a label).

    The prompt set is the model's: the ``prompts.yaml`` of the run its weights file
    (``store_config["weights"]``, from the embed run's config) lies in, else the prompt set of
    the data set it was fine-tuned on (``model.meta``) or the store was embedded from, else bp4d.
    Returns ``{"nearest": [{rank, class_id, name, score}, ...], "precision_at_k": float | None}``.
    """
    from clefctl.prompts import load_prompts

    cfg = store_config or {}
    weights = cfg.get("weights")
    run_prompts = Path(weights).parent / "prompts.yaml" if weights and weights != "random" else None
    name = str(run_prompts) if run_prompts is not None and run_prompts.is_file() else (
        model.meta.get("dataset") or cfg.get("dataset") or "bp4d")
    near = nearest_classes(model, load_prompts(name), text, k=k)
    records = near.to_dict(orient="records")
    best = records[0]["class_id"]
    labelled = [str(v) for v in hits["labels"]]
    precision = None
    if any(labelled):
        precision = sum(best in lab.replace("+", " ").split() for lab in labelled) / max(1, len(labelled))
    return {"nearest": records, "precision_at_k": precision}


# ----------------------------------------------------------------------------------------------
# re-scoring
# ----------------------------------------------------------------------------------------------


def class_texts(prompts, mode: str, all_name_templates: bool = False) -> tuple[list[str], list[int]]:
    """The texts a mode encodes and, per text, its class index."""
    if mode not in RESCORE_MODES:
        raise ClefError(f"unknown re-scoring mode {mode!r}", hint="use names, descriptions or ensemble")
    texts: list[str] = []
    owner: list[int] = []
    if mode in ("names", "ensemble"):
        templates = prompts.templates["name"] if (all_name_templates or mode == "ensemble") \
            else prompts.templates["name"][:1]
        for tpl in templates:
            for c, t in enumerate(prompts.name_texts(tpl)):
                texts.append(t)
                owner.append(c)
    if mode in ("descriptions", "ensemble"):
        for c, group in enumerate(prompts.description_groups()):
            texts.extend(group)
            owner.extend([c] * len(group))
    return texts, owner


def _class_means(emb: np.ndarray, owner: np.ndarray, n_classes: int) -> np.ndarray:
    out = np.zeros((n_classes, emb.shape[1]), dtype=np.float32)
    np.add.at(out, owner, unit_rows(emb))
    return unit_rows(out)


def class_text_embeddings(model, prompts, mode: str = "names", *, store: EmbeddingStore | None = None,
                          all_name_templates: bool = False) -> np.ndarray:
    """One unit vector per prompt class (C, D) for ``mode``:

    * ``names``: the label name in the (first) name template;
    * ``descriptions``: the template ensemble of the descriptions: the mean of the normalised
      embeddings of every description in every description template, renormalised;
    * ``ensemble``: the renormalised sum of the name vector (mean over every name template) and
      the description vector.

    With ``store`` the text embeddings come from (and go to) its text cache.
    """
    if not prompts.classes:
        raise ClefError(f"prompt set '{prompts.dataset}' has no classes to score")
    texts, owner = class_texts(prompts, mode, all_name_templates)
    if store is not None:
        emb = store.text_embeddings(prompts.hash, model.fingerprint, texts,
                                    lambda t: model.encode_texts(t))
    else:
        emb = _encode(model, texts)
    owner_arr = np.asarray(owner)
    c = len(prompts.classes)
    if mode == "ensemble":
        n_names = len(prompts.templates["name"]) * c
        names = _class_means(emb[:n_names], owner_arr[:n_names], c)
        descs = _class_means(emb[n_names:], owner_arr[n_names:], c)
        return unit_rows(names + descs)
    return _class_means(emb, owner_arr, c)


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
    from clefctl.prompts import available_prompt_sets, load_prompts

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
    st, own = _open_store(store, model)
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


# ----------------------------------------------------------------------------------------------
# contact sheets
# ----------------------------------------------------------------------------------------------


def _thumb(row, size: int):
    from PIL import ImageOps

    path = row.get("path") or ""
    if not path:
        return None, "no image file"
    bw = row.get("box_w", -1)
    box = None
    if bw is not None and not (isinstance(bw, float) and np.isnan(bw)) and int(bw) > 0:
        box = (row["box_x"], row["box_y"], row["box_w"], row["box_h"])
    try:
        img = _hit_image(path, row.get("frame"), box, size)
    except FileNotFoundError:
        return None, "not found"
    except (OSError, ValueError, ClefError):
        return None, "unreadable"
    return ImageOps.pad(img, (size, size), color=(30, 30, 30)), ""


def _hit_image(path: str, frame, box=None, min_side: int | None = None):
    """The face of a hit: the file (decoded reduced while the face keeps ``min_side`` pixels), or for a
    video its frame (1-based) read back, cut to ``box`` (x, y, w, h) when given."""
    import pandas as pd
    from PIL import Image

    from clefctl.data.faces import is_video, read_frame
    from clefctl.data.images import crop_to_box, read_cropped

    if not is_video(path):
        face = read_cropped(path, box, min_side)
        return face if face is not None else read_cropped(path, None, min_side)
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    if frame is None or pd.isna(frame) or int(frame) < 1:
        raise ClefError("a video hit without a frame number", path=path)
    img = Image.fromarray(read_frame(path, int(frame)))
    face = crop_to_box(img, box) if box is not None else None
    return img if face is None else face


def contact_sheet_of_hits(hits, out_png: str | os.PathLike, *, cols: int = 5, thumb: int = 128,
                          title: str | None = None) -> Path:
    """Draw search hits as a grid of thumbnails captioned with rank, score, id and labels.

    ``hits`` is a DataFrame from :func:`query_text` / :func:`query_image` (or a list of them:
    one row of the sheet per query). An image that cannot be read gets a grey tile, and how many
    did is logged as a warning (stderr); when no image at all can be read a :class:`ClefError`
    is raised and no sheet written. Written atomically.
    """
    import pandas as pd

    from clefctl.plots import Tile, thumbnail_grid

    frames = hits if isinstance(hits, (list, tuple)) else [hits]
    frames = [f if isinstance(f, pd.DataFrame) else pd.DataFrame(f) for f in frames]
    if not frames or all(len(f) == 0 for f in frames):
        raise ClefError("no hits to draw")
    sections = []
    failed: list[tuple[str, str]] = []   # (path or id, why) of the tiles drawn grey
    for f in frames:
        head = title if (title and len(frames) == 1) else (f.attrs.get("query") or title or "")
        cells = []
        for i, (_, r) in enumerate(f.iterrows()):
            rec = r.to_dict()
            img, why = _thumb(rec, thumb)
            if img is None:
                failed.append((str(rec.get("path") or rec.get("id", "")), why))
            line1 = f"#{int(rec.get('rank', i + 1))} {float(rec.get('score', float('nan'))):.3f} {rec.get('id', '')}"
            cells.append(Tile(img, (line1, str(rec.get("labels", ""))), note=why))
        sections.append((str(head), cells))
    tiles = sum(len(f) for f in frames)
    if failed:
        where, why = failed[0]
        if len(failed) == tiles:
            moved = any(w != "no image file" for _, w in failed)
            raise ClefError(f"none of the {tiles} hit images could be read for the contact sheet "
                            f"(e.g. {where}: {why})", path=frames[0].attrs.get("store"),
                            hint=("the image files were moved or deleted since `clefctl embed`; "
                                  "embed them again from where they are now") if moved else
                                 "the store's images were embedded from memory, not from files")
        log.warning("%d of %d hit images could not be read and are drawn as grey tiles "
                    "(e.g. %s: %s)", len(failed), tiles, where, why)
    return thumbnail_grid(sections, out_png, cols=cols, tile_px=thumb)


__all__ = ["query_text", "query_text_vectors", "query_image", "search_vectors", "hits_frame", "nearest_classes", "nearest_with_precision",
           "class_texts", "class_text_embeddings", "rescore", "RescoreResult", "score_matrix",
           "contact_sheet_of_hits", "RESCORE_MODES"]
