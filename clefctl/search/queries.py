"""Text, image and id queries over an embedding store, and the classes a query text is nearest to."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from clefctl.data.images import read_rgb
from clefctl.errors import ClefError
from clefctl.prompts import load_prompts
from clefctl.search.encoding import class_text_embeddings, encode_texts, open_store
from clefctl.store.format import EmbeddingStore
from clefctl.store.layout import is_face_image_set, unit_rows
from clefctl.store.index import IndexParams, index_for_query
from clefctl.store.textcache import QueryTextCache
from clefctl.weights.hub import model_prompts_file

log = logging.getLogger(__name__)

HIT_COLUMNS = ("rank", "row", "id", "path", "subject", "score", "labels")


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


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
    st, own = open_store(store)
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
    st, own = open_store(store, None if _is_loader(model) else model)
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
    qc = QueryTextCache(store.path, store.fingerprint) if cache else None
    found = qc.lookup(texts) if qc is not None else {}
    missing = [t for t in dict.fromkeys(texts) if t not in found]
    if missing:
        m = model() if _is_loader(model) else model
        if getattr(m, "fingerprint", store.fingerprint) != store.fingerprint:
            raise ClefError(f"store was embedded with model {store.fingerprint}, but the model given is "
                            f"{m.fingerprint}", path=store.path,
                            hint="embed the images again with this model, or load the model that made this store")
        emb = encode_texts(m, missing)
        found.update(zip(missing, emb))
        if qc is not None:
            qc.add(missing, emb)
    return np.stack([np.asarray(found[t], dtype=np.float32) for t in texts])


def face_store(st: EmbeddingStore) -> bool:
    """Whether the store's rows are face crops cut from larger images (``embed PATH...``'s faces or a data
    set's face-crop cache: :func:`clefctl.store.layout.is_face_image_set`)."""
    return is_face_image_set(st.image_set)


def store_detector(st: EmbeddingStore, detector: str = "auto") -> str:
    """The ``--detector`` that crops a query image's face as the store's faces were cropped: ``auto``
    stays ``auto`` unless the store records that its faces came from the Haar cascades (``haar``)."""
    if detector != "auto":
        return detector
    import json

    media = st.attrs.get("media")
    try:
        recorded = (json.loads(media) if isinstance(media, str) else media or {}).get("detector") or {}
    except (ValueError, AttributeError):
        recorded = {}
    return "haar" if isinstance(recorded, dict) and recorded.get("name") == "haar" else "auto"


def query_image(store, model, image: str | os.PathLike, k: int = 10, *, index: str = "auto",
                params: IndexParams | None = None, progress: bool = False, face: bool | None = None,
                detector: str = "auto", min_confidence: float | None = None):
    """The ``k`` store images nearest to an image file, or to a store row given by its id
    (then the image encoder is not run and the row itself comes first, score 1).

    ``face``: search with the largest face of the image, cropped as ``embed PATH...`` crops faces
    (None: when the store's rows are face crops, :func:`face_store`); the hits' ``attrs["query_face"]``
    is its box (x, y, w, h), or None when the whole image was searched (a warning when no face was
    found). ``detector``, ``min_confidence``: the ``--detector`` choice that finds it (``auto``: as the
    store's faces were found, :func:`store_detector`)."""
    st, own = open_store(store, model)
    try:
        p = Path(str(image)).expanduser()
        query_face = None
        if p.is_file():
            vec, query_face = _encode_image_file(model, p, face_store(st) if face is None else face,
                                                 store_detector(st, detector), min_confidence)
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
        hits = search_vectors(st, vec, k, index=index, params=params, queries=[label], progress=progress)[0]
        hits.attrs["query_face"] = query_face
        return hits
    finally:
        if own:
            st.close()


def _query_face(model, path: Path, detector: str = "auto", min_confidence: float | None = None):
    """(crop as PIL, box) of the largest face of the image ``path`` (the face pipeline of ``embed
    PATH...``), or None when it has none."""
    from PIL import Image

    from clefctl.data.faces import iter_faces
    from clefctl.data.faces.choice import resolve_detector

    for ff in iter_faces([path], size=model.image_size, faces=resolve_detector(detector, min_confidence)):
        if ff.faces:
            best = max(ff.faces, key=lambda f: f.box[2] * f.box[3])
            return Image.fromarray(best.crop), tuple(int(v) for v in best.box)
    return None


def _encode_image_file(model, path: Path, face: bool = False, detector: str = "auto",
                       min_confidence: float | None = None):
    """(unit embedding (1, D), the face box searched or None) of a query image; ``face``: its largest
    face (the whole image, with a warning, when none is found)."""
    from clefctl.data.transforms import transforms_for

    try:
        img = read_rgb(path)
    except (OSError, ValueError) as exc:
        raise ClefError(f"cannot read the query image ({exc})", path=path) from None
    box = None
    if face:
        found = _query_face(model, path, detector, min_confidence)
        if found is None:
            warnings.warn(f"no face found in the query image {path}: the whole image is searched", stacklevel=3)
        else:
            img, box = found
    pixels = transforms_for(model, train=False)(img).unsqueeze(0)
    out = model.encode_images(pixels)
    return unit_rows(out.detach().cpu().numpy() if hasattr(out, "detach") else np.asarray(out)), box


def nearest_classes(model, prompts, text: str, k: int = 5):
    """Which prompt classes a free text is nearest to: cosine between the text and each class's
    label name rendered with every name template (mean embedding, renormalised).

    Returns a DataFrame rank, class_id, name, score (k rows, best first).
    """
    import pandas as pd

    if not str(text).strip():
        raise ClefError("the query text is empty")
    class_vecs = class_text_embeddings(model, prompts, "names", all_name_templates=True)
    q = encode_texts(model, [text])[0]
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

    cfg = store_config or {}
    weights = cfg.get("weights")
    run_prompts = model_prompts_file(weights)   # the run's prompts.yaml, or an exported model's own
    name = str(run_prompts) if run_prompts is not None else (
        model.meta.get("dataset") or cfg.get("dataset") or "bp4d")
    near = nearest_classes(model, load_prompts(name), text, k=k)
    records = near.to_dict(orient="records")
    best = records[0]["class_id"]
    labelled = [str(v) for v in hits["labels"]]
    precision = None
    if any(labelled):
        precision = sum(best in lab.replace("+", " ").split() for lab in labelled) / max(1, len(labelled))
    return {"nearest": records, "precision_at_k": precision}
