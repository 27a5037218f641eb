"""The warm state behind ``clefctl serve``: one store, one model, its index, and the actions of the page.

:class:`Explorer` opens the store once, loads the FAISS index once (:func:`clefctl.store.load_index`),
keeps the rows' metadata in memory (so a page of hits costs no HDF5 read), scores every row with the
model's fine-tuned head when it has one (:func:`clefctl.scoring.scores_from_features`) and with the
store's prompt set (:class:`~clefctl.serve.classes.ClassScores`), and answers:

* :meth:`search` a text, an uploaded image or a stored row ("more like this"), paged, optionally
  filtered by a class combination. The ranking is :func:`clefctl.search.query_text`'s (the same
  index, cosine, order), but the index stays loaded and query texts are encoded once (an LRU of
  their vectors), where ``query_text`` loads the index for every call;
* :meth:`rank` the rows by a prompt class;
* :meth:`hit` one row in full; :meth:`face` its crop; :meth:`explain` the relevancy map for a text;
* :meth:`rescore` with an edited prompt set.

Every method returns plain JSON-able values and raises :class:`~clefctl.errors.ClefError` (HTTP 400)
or :class:`~clefctl.serve.media.MediaError` (403/404) for what a client can fix. Model and store work
is serialised by one lock (the web server calls from several threads).
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from typing import Sequence

import numpy as np

from clefctl.data.landmarks import LANDMARK_COLUMNS
from clefctl.errors import ClefError
from clefctl.serve.classes import ClassScores, class_mask, default_prompts, parse_class_list
from clefctl.serve.media import MediaError, RowMedia, SourceGuard, face_image, is_video
from clefctl.serve.why import explain_face

MAX_K = 5000                   # hits per request
MAX_QUERY_CHARS = 1000
OPTIONAL_COLUMNS = ("source", "timestamp", "face_id")   # the face columns of photos and videos


class _Lru:
    """A small least-recently-used cache, safe to share between the server's threads."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def put(self, key, value):
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def take(self, key):
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def _none_if_missing(v, *, negative_is_none: bool = True):
    if v is None:
        return None
    if hasattr(v, "item"):
        v = v.item()
    try:
        if isinstance(v, float) and math.isnan(v):
            return None
    except TypeError:
        return None
    if negative_is_none and isinstance(v, (int, float)) and v < 0:
        return None
    return v


class Rows:
    """Every row's metadata, read once: ids, files, subjects, labels, frames, boxes (and the video
    columns ``source``, ``timestamp``, ``face_id`` when the store has them)."""

    def __init__(self, store):
        import pandas as pd

        df = store.metadata()
        self.n = len(df)
        self.columns = list(df.columns)
        self.id = df["id"].to_numpy(object)
        self.path = df["path"].to_numpy(object)
        self.subject = df["subject"].to_numpy(object)
        self.activity = df["activity"].to_numpy(object)
        self.split = df["split"].to_numpy(object)
        self.frame = pd.to_numeric(df["frame"], errors="coerce").fillna(-1).to_numpy(np.int64)
        self.box = np.stack([df[c].to_numpy(np.int64) for c in ("box_x", "box_y", "box_w", "box_h")], axis=1) \
            if self.n else np.zeros((0, 4), np.int64)
        self.labels = np.array(store.label_texts(), dtype=object) if self.n else np.zeros(0, object)
        self.extra = {c: df[c].to_numpy(object) for c in OPTIONAL_COLUMNS if c in df.columns}
        if "source" in self.extra:
            src = [store.resolve_path(s) if s else "" for s in self.extra["source"]]
            self.extra["source"] = np.array(src, dtype=object)
            self.file = np.array([s or p for s, p in zip(src, self.path)], dtype=object)
        else:
            self.file = self.path
        lm = df[list(LANDMARK_COLUMNS)].to_numpy(np.float64) if self.n and "lmk_x_0" in df.columns else None
        self.landmarks = lm.reshape(-1, 2, 5).transpose(0, 2, 1) if lm is not None else None   # (n, 5, 2)
        ts = self.extra.get("timestamp")
        self.video_rows = int(np.isfinite(pd.to_numeric(pd.Series(ts), errors="coerce")).sum()) if ts is not None else 0

    def media(self, row: int) -> RowMedia:
        box = tuple(int(v) for v in self.box[row])
        frame = int(self.frame[row])
        lm = self.landmarks[row] if self.landmarks is not None else None
        return RowMedia(row, str(self.file[row] or ""), frame if frame >= 0 else None,
                        box if box[2] > 0 and box[3] > 0 else None,
                        lm if lm is not None and np.isfinite(lm).all() else None)

    def record(self, row: int) -> dict:
        """The fields every hit carries (the issue's list: row, id, source, frame, timestamp, labels...)."""
        frame = int(self.frame[row])
        source = str(self.file[row] or "")
        out = {"row": int(row), "id": str(self.id[row]), "source": source, "subject": str(self.subject[row]),
               "frame": frame if frame >= 0 else None,
               "timestamp": _none_if_missing(self.extra["timestamp"][row]) if "timestamp" in self.extra else None,
               "face_id": _none_if_missing(self.extra["face_id"][row]) if "face_id" in self.extra else None,
               "labels": str(self.labels[row]), "image": f"/media/{int(row)}"}
        out["video"] = f"/media/{int(row)}/source" if source and is_video(source) else None
        return out


class Explorer:
    """The warm store + model + index of one ``clefctl serve`` (see the module docstring)."""

    def __init__(self, store, model, *, config: dict | None = None, prompts: str | None = None,
                 mode: str = "names", index: str = "auto", progress: bool = False):
        from clefctl.store.index import load_index
        from clefctl.ui import progress_bar

        self.store, self.model, self.config = store, model, dict(config or {})
        self.lock = threading.RLock()
        if store.count == 0:
            raise ClefError("the store has no embeddings yet", path=store.path, hint="run `clefctl embed`")
        with progress_bar("starting the explorer", total=4, enabled=progress, fields="{task.fields[step]}",
                          transient=True, step="metadata") as bar:
            self.rows = Rows(store)
            self.guard = SourceGuard(self.rows.file)
            bar.advance(1, step="index")
            self.index = load_index(store, index)
            bar.advance(1, step="model head")
            self.head_classes, self.head_probs = self._head_scores()
            bar.advance(1, step="prompt classes")
            ps = default_prompts(store, model, self.config, prompts)
            self.scores = ClassScores.compute(store, model, ps, mode) if ps is not None else None
            bar.advance(1, step="ready")
        self.store_labels = store.labels() if store.task in ("au", "fer") else None
        self._text_vectors = _Lru(512)
        self._image_vectors = _Lru(64)
        self._orders = _Lru(16)

    @classmethod
    def open(cls, store_path, model, **kwargs) -> "Explorer":
        """Open the store at ``store_path`` (refusing one of another model) and warm everything up."""
        from clefctl.store import EmbeddingStore

        store = EmbeddingStore.open(store_path, fingerprint=getattr(model, "fingerprint", None))
        try:
            return cls(store, model, **kwargs)
        except BaseException:
            store.close()
            raise

    def close(self) -> None:
        self.store.close()

    # -- state ------------------------------------------------------------------------------------

    def _head_scores(self) -> tuple[list[str], np.ndarray | None]:
        """Every row scored by the model's fine-tuned head (name embeddings or linear head), if any."""
        import torch

        from clefctl.scoring import scores_from_features

        extras = getattr(getattr(self.model, "load_report", None), "extras", None) or {}
        meta = getattr(self.model, "meta", None) or {}
        task, classes = meta.get("task"), list(meta.get("classes") or [])
        if task not in ("au", "fer") or not classes or not ({"name_embeddings", "head_weight"} & set(extras)):
            return [], None
        scale = float(self.model.logit_scale.detach())
        out = np.empty((self.store.count, len(classes)), dtype=np.float32)
        for start, block in self.store.iter_embeddings(65536):
            out[start:start + len(block)] = scores_from_features(torch.from_numpy(block), extras, task, scale)
        return classes, out

    def info(self) -> dict:
        """What the page shows on load: the store, the model, the prompt classes, the limits."""
        st = self.store
        cls = self.scores.summary() if self.scores is not None else None
        return {"store": str(st.path), "rows": st.count, "dim": st.dim, "image_set": st.image_set,
                "task": st.task, "label_classes": st.classes, "fingerprint": st.fingerprint,
                "model": getattr(self.model, "arch", ""), "index": self.index.kind,
                "head": {"task": (self.model.meta or {}).get("task"), "classes": self.head_classes}
                if self.head_probs is not None else None,
                "video_rows": self.rows.video_rows,
                "prompt_classes": cls, "max_k": MAX_K}

    # -- hits -------------------------------------------------------------------------------------

    def _hits(self, rows: np.ndarray, scores: np.ndarray, offset: int) -> list[dict]:
        out = []
        for i, (r, s) in enumerate(zip(rows.tolist(), scores.tolist())):
            h = self.rows.record(r)
            h["rank"] = offset + i + 1
            h["score"] = round(float(s), 6)
            if self.head_probs is not None:
                h["predicted"] = {c: round(float(p), 4) for c, p in zip(self.head_classes, self.head_probs[r])}
            out.append(h)
        return out

    def _row(self, row) -> int:
        try:
            r = int(row)
        except (TypeError, ValueError):
            raise ClefError(f"row must be a whole number, not {row!r}") from None
        if not 0 <= r < self.rows.n:
            raise MediaError(f"no row {r}: the store has rows 0 to {self.rows.n - 1}", 404)
        return r

    def hit(self, row) -> dict:
        """One row in full: the hit fields, the face box, split, activity, the head's probabilities
        and the prompt classes' probabilities."""
        r = self._row(row)
        h = self.rows.record(r)
        box = self.rows.media(r).box
        h.update(box=list(box) if box else None, split=str(self.rows.split[r]),
                 activity=str(self.rows.activity[r]), path=str(self.rows.path[r]))
        if self.head_probs is not None:
            h["predicted"] = {c: round(float(p), 4) for c, p in zip(self.head_classes, self.head_probs[r])}
        sc = self.scores
        if sc is not None:
            h["classes"] = {c: round(float(p), 4) for c, p in zip(sc.class_ids, sc.probabilities[r])}
        return h

    def face(self, row, min_side: int | None = None):
        """The row's face crop (PIL), read from the store's own sources only (``min_side``: see
        :func:`clefctl.serve.media.face_image`)."""
        return face_image(self.rows.media(self._row(row)), self.guard, min_side)

    def source_file(self, row) -> str:
        """The resolved source file of a row (a video for the player, or the photo)."""
        m = self.rows.media(self._row(row))
        return self.guard.check(m.file, m.row)

    # -- queries ----------------------------------------------------------------------------------

    def _text_vector(self, text: str) -> np.ndarray:
        text = str(text).strip()
        if not text:
            raise ClefError("the query text is empty", hint="type what to look for, e.g. 'lip corners pulled up'")
        if len(text) > MAX_QUERY_CHARS:
            raise ClefError(f"the query is {len(text)} characters long; at most {MAX_QUERY_CHARS} are taken")
        vec = self._text_vectors.take(text)
        if vec is None:
            with self.lock:
                out = self.model.encode_texts([text])
            vec = self._text_vectors.put(text, np.asarray(out.detach().cpu().numpy() if hasattr(out, "detach")
                                                          else out, dtype=np.float32).reshape(-1))
        return vec

    def add_image(self, data: bytes) -> str:
        """Encode an uploaded image (the query image of an image search); returns its id (``image=``)."""
        import io

        from PIL import Image, UnidentifiedImageError

        from clefctl.data.transforms import transforms_for

        if not data:
            raise ClefError("the upload is empty", hint="post the image file's bytes")
        key = hashlib.sha256(data).hexdigest()[:20]
        if self._image_vectors.take(key) is not None:
            return key
        try:
            with Image.open(io.BytesIO(data)) as raw:
                raw.load()
                img = raw.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            raise ClefError(f"the upload is not an image that can be read ({exc})",
                            hint="upload a PNG, JPEG, BMP or WebP file") from None
        pixels = transforms_for(self.model, train=False)(img).unsqueeze(0)
        with self.lock:
            out = self.model.encode_images(pixels)
        self._image_vectors.put(key, np.asarray(out.detach().cpu().numpy(), dtype=np.float32).reshape(-1))
        return key

    def _query(self, text, row, image) -> tuple[str, dict, np.ndarray]:
        given = [x for x in (text, row, image) if x is not None]
        if len(given) != 1:
            raise ClefError("give exactly one of q (a text), row (more like this) or image (an uploaded image id)")
        if text is not None:
            return f"text:{text}", {"text": str(text).strip()}, self._text_vector(text)
        if row is not None:
            r = self._row(row)
            with self.lock:
                vec = self.store.embeddings([r])[0]
            return f"row:{r}", {"row": r, "id": str(self.rows.id[r])}, vec
        vec = self._image_vectors.take(str(image))
        if vec is None:
            raise MediaError(f"no uploaded image {image!r} (the server keeps the last 64)", 404,
                             hint="upload it again: POST /api/search/image")
        return f"image:{image}", {"image": str(image)}, vec

    def _nearest(self, vec: np.ndarray, need: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The ``need`` best rows (passing ``mask``) by cosine: the index first; with a filter that
        leaves too few of the index's candidates, an exact pass over the store."""
        n = self.rows.n
        kk = min(n, need if mask is None else max(4 * need, 1024))
        with self.lock:
            scores, rows = self.index.search(vec[None, :], kk)
        scores, rows = scores[0], rows[0]
        keep = rows >= 0
        scores, rows = scores[keep], rows[keep]
        if mask is None:
            return scores, rows
        passing = mask[rows]
        if passing.sum() >= need or (kk >= n and keep.all()):
            return scores[passing], rows[passing]
        from clefctl.search import score_matrix

        with self.lock:
            exact = score_matrix(self.store, vec[None, :])[:, 0]
        cand = np.nonzero(mask)[0]
        order = cand[np.argsort(-exact[cand], kind="stable")][:need]
        return exact[order], order

    def search(self, *, text: str | None = None, row=None, image: str | None = None, k: int = 60,
               offset: int = 0, classes: Sequence[str] | str = (), by: str = "predicted") -> dict:
        """Hits ``offset`` .. ``offset + k`` of a text, row or uploaded-image query (cosine, best first)."""
        t0 = time.perf_counter()
        k, offset = _page(k, offset)
        key, query, vec = self._query(text, row, image)
        classes = parse_class_list(classes) if isinstance(classes, str) else list(classes)
        mask = self._mask(classes, by)
        need = min(self.rows.n, offset + k)
        scores, rows = self._nearest(vec, need, mask)
        avail = int(mask.sum()) if mask is not None else self.rows.n
        page_rows, page_scores = rows[offset:offset + k], scores[offset:offset + k]
        more = offset + len(page_rows) < avail and len(rows) >= need
        return {"query": query, "offset": offset, "k": k, "hits": self._hits(page_rows, page_scores, offset),
                "matching": avail, "more": bool(more), "next_offset": offset + len(page_rows) if more else None,
                "filter": {"classes": classes, "by": by} if classes else None,
                "ms": round(1000 * (time.perf_counter() - t0), 2)}

    def rank(self, class_id: str | Sequence[str], *, k: int = 60, offset: int = 0,
             classes: Sequence[str] | str = (), by: str = "predicted") -> dict:
        """Rows ranked by the current prompt classes' probability of ``class_id`` (several: their mean)."""
        t0 = time.perf_counter()
        k, offset = _page(k, offset)
        sc = self.scores
        if sc is None:
            raise ClefError("the store has no prompt classes to rank by", hint="post a prompt set to /api/rescore")
        wanted = parse_class_list(class_id) if isinstance(class_id, str) else list(class_id)
        if not wanted:
            raise ClefError("name the class to rank by", hint=f"e.g. class={sc.class_ids[0]}")
        cols = [sc.column(c) for c in wanted]
        classes = parse_class_list(classes) if isinstance(classes, str) else list(classes)
        mask = self._mask(classes, by)
        key = (sc.prompts.hash, sc.mode, tuple(cols), tuple(classes), by)
        order = self._orders.take(key)
        prob = sc.probabilities[:, cols].mean(axis=1)
        if order is None:
            cand = np.arange(self.rows.n) if mask is None else np.nonzero(mask)[0]
            order = self._orders.put(key, cand[np.argsort(-prob[cand], kind="stable")])
        page = order[offset:offset + k]
        more = offset + len(page) < len(order)
        return {"query": {"class": wanted, "prompt_hash": sc.prompts.hash}, "offset": offset, "k": k,
                "hits": self._hits(page, prob[page], offset), "matching": int(len(order)), "more": bool(more),
                "next_offset": offset + len(page) if more else None,
                "filter": {"classes": classes, "by": by} if classes else None,
                "ms": round(1000 * (time.perf_counter() - t0), 2)}

    def _mask(self, classes: list[str], by: str) -> np.ndarray | None:
        return class_mask(classes, by, self.scores, self.store_labels, self.store.classes, self.store.task)

    # -- explain and re-score ---------------------------------------------------------------------

    def explain(self, row, text: str) -> tuple[dict, bytes]:
        """The relevancy of row ``row``'s face for ``text``: (JSON document, heatmap PNG bytes)."""
        from clefctl.serve.why import heatmap_png

        r = self._row(row)
        face = self.face(r)
        with self.lock:
            doc, rel = explain_face(self.model, face, text)
        doc.update(row=r, id=str(self.rows.id[r]))
        return doc, heatmap_png(face, rel.image_map, self.model.image_size)

    def rescore(self, prompts, mode: str | None = None) -> dict:
        """Re-score every row against an edited prompt set (only the text encoder runs); it becomes
        the set the page shows, ranks and filters by."""
        from clefctl.search import RESCORE_MODES

        mode = mode or (self.scores.mode if self.scores is not None else "names")
        if mode not in RESCORE_MODES:
            raise ClefError(f"unknown re-scoring mode {mode!r}", hint="use names, descriptions or ensemble")
        with self.lock:
            new = ClassScores.compute(self.store, self.model, prompts, mode)
        self.scores = new
        self._orders.clear()
        return new.summary()

    def prompts_yaml(self) -> str:
        if self.scores is None:
            raise MediaError("the store has no prompt set yet", 404, hint="post one to /api/rescore")
        return self.scores.prompts.to_yaml()


def _page(k, offset) -> tuple[int, int]:
    try:
        k, offset = int(k), int(offset)
    except (TypeError, ValueError):
        raise ClefError(f"k and offset must be whole numbers (got k={k!r}, offset={offset!r})") from None
    if not 1 <= k <= MAX_K:
        raise ClefError(f"k must be between 1 and {MAX_K}, not {k}", hint="page with offset= for more hits")
    if offset < 0:
        raise ClefError(f"offset must be 0 or more, not {offset}")
    return k, offset


__all__ = ["Explorer", "Rows", "MAX_K"]
