"""Tuning an IVF index for the queries users type: text.

Text embeddings sit apart from image embeddings (CLIP's modality gap), and an IVF partition
trained on images ranks its lists worse for them: the probes that find an image-like query's
neighbours miss many of a text-like query's (docs/performance.md). So the build measures recall
on text-like queries and picks the smallest ``nprobe`` that reaches the target (as autofaiss
tunes its search parameters), with three query sets (:func:`tuning_queries`):

* ``text``: real text embeddings: the vectors given to the build (``embed`` passes the data set's
  prompt names and descriptions, encoded by the store's model), else every text embedding the
  store has cached (``rescore``'s prompt texts, ``query``'s query texts);
* ``gap``: stored rows shifted by the measured modality gap (mean text vector - mean row),
  renormalised: image content, seen from where texts lie;
* ``image``: stored rows themselves, each query's own row left out of both result lists.

The exact neighbours are computed block by block while the rows are added (:class:`ExactTopK`);
the target must hold on ``text`` and ``gap`` (on ``image`` when there are no text vectors; then
the ``nprobe`` found is multiplied by :data:`NO_TEXT_FACTOR`, the ratio text-like queries needed on
the benchmark, and the index's metadata says so).
"""

from __future__ import annotations

import numpy as np

from clefctl.store.layout import unit_rows

NPROBE_LADDER = (4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
TEXT_QUERIES = 128          # at most this many real text vectors
GAP_QUERIES = 128
IMAGE_QUERIES = 64
NO_TEXT_FACTOR = 4
K = 10


def cached_text_vectors(store, limit: int = 4 * TEXT_QUERIES) -> np.ndarray | None:
    """Every text embedding the store holds (its ``/text`` cache and its query-text cache) of the
    store's dimension, deduplicated; None when there is none."""
    from clefctl.store.textcache import QueryTextCache

    found = []
    h5 = store._h5
    if "text" in h5:
        for key in h5["text"]:
            emb = np.asarray(h5["text"][key]["embedding"][...], dtype=np.float32)
            if emb.ndim == 2 and emb.shape[1] == store.dim:
                found.append(emb)
    qc = QueryTextCache(store.path, store.fingerprint).vectors()
    if qc is not None and qc.shape[1] == store.dim:
        found.append(qc)
    if not found:
        return None
    vecs = np.unique(np.concatenate(found).round(6), axis=0)[:limit]
    return unit_rows(vecs)


def tuning_queries(store, text_vectors: np.ndarray | None, *, seed: int = 0) -> dict:
    """``{"text": (T, d) or None, "gap": (G, d) or None, "image": (I, d), "image_rows": (I,)}``
    (see the module docstring). Reads a few hundred stored rows."""
    n = store.count
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, min(n, GAP_QUERIES + IMAGE_QUERIES), replace=False))
    sampled = store.embeddings(rows)
    image_rows = rows[GAP_QUERIES:] if len(rows) > GAP_QUERIES else rows
    image = sampled[len(rows) - len(image_rows):]
    out = {"text": None, "gap": None, "image": image, "image_rows": image_rows.astype(np.int64)}
    if text_vectors is not None and len(text_vectors):
        text = unit_rows(np.asarray(text_vectors, dtype=np.float32))
        if len(text) > TEXT_QUERIES:
            text = text[np.sort(rng.choice(len(text), TEXT_QUERIES, replace=False))]
        out["text"] = text
        mean_rows = store.embeddings(np.sort(rng.choice(n, min(n, 4096), replace=False))).mean(0)
        gap = text.mean(0) - mean_rows
        out["gap"] = unit_rows(sampled[:GAP_QUERIES] + gap)
        out["gap_norm"] = float(np.linalg.norm(gap))
    return out


class ExactTopK:
    """The exact top-``k`` rows of fixed queries over rows seen block by block."""

    def __init__(self, queries: np.ndarray, k: int = K):
        self.q = np.ascontiguousarray(queries, dtype=np.float32)
        self.k = k
        self.scores = np.full((len(self.q), k), -np.inf, dtype=np.float32)
        self.rows = np.full((len(self.q), k), -1, dtype=np.int64)

    def add(self, block: np.ndarray, start: int) -> None:
        if not len(self.q):
            return
        s = self.q @ np.ascontiguousarray(block, dtype=np.float32).T
        kk = min(self.k, s.shape[1])
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        cand_s = np.concatenate([self.scores, np.take_along_axis(s, part, 1)], 1)
        cand_r = np.concatenate([self.rows, part + start], 1)
        top = np.argsort(-cand_s, axis=1, kind="stable")[:, :self.k]
        self.scores, self.rows = np.take_along_axis(cand_s, top, 1), np.take_along_axis(cand_r, top, 1)


def recall_at_k(found: np.ndarray, truth: np.ndarray, exclude: np.ndarray | None = None, k: int = K) -> float:
    """Mean share of each query's true top-``k`` that ``found`` holds (``exclude``: one row per
    query left out of both, for queries that are stored rows)."""
    total = 0.0
    for i in range(len(truth)):
        t, f = truth[i], found[i]
        if exclude is not None:
            t, f = t[t != exclude[i]], f[f != exclude[i]]
        t, f = t[t >= 0][:k], f[f >= 0][:k]
        total += len(set(t.tolist()) & set(f.tolist())) / max(1, len(t))
    return total / max(1, len(truth))


class Tuner:
    """Exact neighbours of the tuning queries (fed block by block) and the nprobe choice."""

    def __init__(self, queries: dict):
        self.sets = {name: queries[name] for name in ("text", "gap", "image") if queries.get(name) is not None}
        self.exclude = {"image": queries["image_rows"]}
        self.names = list(self.sets)
        self.sizes = [len(self.sets[nm]) for nm in self.names]
        # k + 1: an image-like query's own row is left out afterwards
        self.exact = ExactTopK(np.concatenate([self.sets[nm] for nm in self.names]), K + 1) if self.names else None

    def add(self, block: np.ndarray, start: int) -> None:
        if self.exact is not None:
            self.exact.add(block, start)

    def truth(self, name: str) -> np.ndarray:
        i = self.names.index(name)
        a = sum(self.sizes[:i])
        return self.exact.rows[a:a + self.sizes[i]]

    def recalls(self, search) -> dict:
        """``{set: recall@10}`` of ``search(queries, k) -> rows``."""
        out = {}
        for name, q in self.sets.items():
            found = search(q, K + 1)
            truth = self.truth(name)
            if name == "image":
                out[name] = recall_at_k(found, truth, self.exclude["image"])
            else:
                out[name] = recall_at_k(found[:, :K], truth[:, :K])
        return out

    def tune(self, index, set_nprobe, nlist: int, target: float) -> dict:
        """The smallest nprobe of :data:`NPROBE_LADDER` (<= nlist, then nlist) whose recall@10 reaches
        ``target`` on the sets that count; ``{"nprobe", "recall", "sweep", "tuned_on", "note"}``."""
        counted = [s for s in ("text", "gap") if s in self.sets] or ["image"]
        ladder = [p for p in NPROBE_LADDER if p < nlist] + [nlist]
        sweep, chosen = [], None
        for p in ladder:
            set_nprobe(p)
            rec = self.recalls(lambda q, k: index.search(q, k)[1])
            sweep.append({"nprobe": p, **{k: round(v, 4) for k, v in rec.items()}})
            if min(rec[s] for s in counted) >= target:
                chosen = (p, rec)
                break
        note = ""
        if chosen is None:
            chosen = (ladder[-1], rec)
            note = f"recall@10 {min(rec[s] for s in counted):.3f} < {target} even with every list probed"
        nprobe = chosen[0]
        if counted == ["image"]:
            nprobe = min(nlist, nprobe * NO_TEXT_FACTOR)
            note = (f"no text embeddings to tune with: nprobe = {NO_TEXT_FACTOR} x the {chosen[0]} image-like "
                    "queries needed (the ratio text-like queries needed on the benchmark)")
            set_nprobe(nprobe)
            chosen = (nprobe, self.recalls(lambda q, k: index.search(q, k)[1]))
        set_nprobe(nprobe)
        return {"nprobe": int(nprobe), "recall": {k: round(v, 4) for k, v in chosen[1].items()}, "sweep": sweep,
                "tuned_on": counted, "target": target, "queries": dict(zip(self.names, self.sizes)), "note": note}
