"""The store's text-embedding caches: ``/text/<key>`` groups of text embeddings keyed by
(prompt-set hash, text-encoder fingerprint, texts), written only when no other process has the
file open (part of :class:`clefctl.store.EmbeddingStore`, a mixin), and the query texts'
embeddings in a small file beside the store (:class:`QueryTextCache`)."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from clefctl.errors import ClefError
from clefctl.store._hdf5 import WriterLock, fence, first_line, h5py_module, now, open_reader

log = logging.getLogger("clefctl.store")

TEXT_CACHE_ROOM = 16 << 20     # free disk space the (non-SWMR) text-cache write needs beyond its data


def text_key(prompt_hash: str, text_fingerprint: str, texts: Sequence[str]) -> str:
    payload = json.dumps([prompt_hash, text_fingerprint, list(texts)], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


class TextCache:
    """The text-cache methods of :class:`EmbeddingStore` (uses its file, path, mode and dim)."""

    def text_embeddings(self, prompt_hash: str, text_fingerprint: str, texts: Sequence[str],
                        encode_fn: Callable[[list[str]], object]) -> np.ndarray:
        """Embeddings (T, D) float32 of ``texts``, cached in the store under
        (prompt-set hash, text-encoder fingerprint, texts).

        A hit returns the cached array without calling ``encode_fn``; a miss calls
        ``encode_fn(texts)`` and stores the result when the file can be written now (no other
        process has it open; otherwise the result is returned uncached). ``last_text_cache_hit``
        and the ``text_cache_hits`` / ``text_cache_misses`` counters say which happened.
        """
        texts = [str(t) for t in texts]
        key = text_key(prompt_hash, text_fingerprint, texts)
        grp = self._h5.get(f"text/{key}")
        if grp is not None:
            cached = np.asarray(grp["embedding"][...], dtype=np.float32)
            stored = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in grp["texts"][...]]
            if stored == texts and cached.shape == (len(texts), self.dim):
                self.text_cache_hits += 1
                self.last_text_cache_hit = True
                return cached
        out = encode_fn(texts)
        emb = out.detach().cpu().numpy() if hasattr(out, "detach") else np.asarray(out)
        emb = np.asarray(emb, dtype=np.float32)
        if emb.shape != (len(texts), self.dim):
            raise ClefError(f"text encoder returned shape {tuple(emb.shape)} for {len(texts)} texts; "
                            f"the store holds {self.dim}-d embeddings",
                            hint="use the model the store was embedded with")
        self.text_cache_misses += 1
        self.last_text_cache_hit = False
        self._cache_texts(key, prompt_hash, text_fingerprint, texts, emb)
        return emb

    def _cache_texts(self, key, prompt_hash, text_fingerprint, texts, emb) -> bool:
        if self.mode != "r":
            return False  # an SWMR writer cannot add objects; the next reader caches it
        lock = _try_lock(WriterLock(self.path))
        if lock is None:
            return False
        # Not an SWMR write: a write failing half-way (a full disk) could damage the file, so
        # the cache is only written with room to spare, and a failed write is fenced.
        try:
            room = shutil.disk_usage(self.path.parent).free >= emb.nbytes + TEXT_CACHE_ROOM
        except OSError:
            room = False
        if not room:
            lock.release()
            log.debug("text embeddings not cached in %s: too little free disk space", self.path)
            return False
        self._h5.close()
        try:
            return self._write_text_group(key, prompt_hash, text_fingerprint, texts, emb)
        finally:
            lock.release()
            self._h5 = open_reader(self.path)
            self._state = (-1, -1, -1)
            self.refresh()

    def _write_text_group(self, key, prompt_hash, text_fingerprint, texts, emb) -> bool:
        h5py = h5py_module()
        try:
            f = h5py.File(self.path, "a", libver="latest")
        except OSError as exc:  # read-only file system, readers holding the file, ...
            log.debug("text embeddings not cached in %s: %s", self.path, exc)
            return False
        try:
            top = f.require_group("text")
            if key in top:
                del top[key]
            g = top.create_group(key)
            g.create_dataset("embedding", data=emb.astype(np.float32))
            g.create_dataset("texts", data=np.array(texts, dtype=object), dtype=h5py.string_dtype())
            g.attrs.update({"prompt_hash": prompt_hash, "text_fingerprint": text_fingerprint,
                            "created": now(), "count": len(texts)})
            f.flush()
            f.close()
        except (OSError, RuntimeError) as exc:
            fence(f)
            log.warning("text embeddings not cached in %s: %s", self.path, first_line(exc))
            return False
        return True

    def text_cache_keys(self) -> list[str]:
        return sorted(self._h5["text"].keys()) if "text" in self._h5 else []


# ----------------------------------------------------------------------------------------------
# query texts: one small file beside the store
# ----------------------------------------------------------------------------------------------

QUERY_CACHE_LIMIT = 4096       # query texts kept per store (the most recent)


def query_cache_path(store_path) -> Path:
    """``<store>.queries.npz``: the query texts' embeddings (see :class:`QueryTextCache`)."""
    return Path(f"{store_path}.queries.npz")


class QueryTextCache:
    """The embeddings of texts queried on one store, by the store's model (``fingerprint``).

    Kept beside the store in ``<store>.queries.npz`` (arrays ``texts``, ``embedding`` float32,
    ``fingerprint``; no pickles), rewritten whole (atomically, under ``<file>.lock``) with the
    newest :data:`QUERY_CACHE_LIMIT` texts when new ones are added. A text query found here needs
    no model at all: ``clefctl query`` then imports neither torch nor open_clip. A file written
    for another fingerprint is ignored; one that cannot be written (a read-only folder) is skipped.
    """

    def __init__(self, store_path, fingerprint: str):
        self.path = query_cache_path(store_path)
        self.fingerprint = str(fingerprint)

    def _read(self) -> tuple[list[str], np.ndarray | None]:
        try:
            with np.load(self.path, allow_pickle=False) as z:
                if str(z["fingerprint"]) != self.fingerprint:
                    return [], None
                return [str(t) for t in z["texts"]], np.asarray(z["embedding"], dtype=np.float32)
        except (OSError, KeyError, ValueError):
            return [], None

    def lookup(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """``{text: (D,) float32}`` for the ``texts`` that are cached."""
        known, emb = self._read()
        if emb is None:
            return {}
        where = {t: i for i, t in enumerate(known)}
        return {t: emb[where[t]] for t in texts if t in where}

    def vectors(self) -> np.ndarray | None:
        """Every cached query-text embedding (for tuning the index), or None."""
        return self._read()[1]

    def add(self, texts: Sequence[str], embeddings: np.ndarray) -> bool:
        """Remember ``texts`` -> ``embeddings`` (T, D); True when the file was written."""
        from clefctl.paths import FileLock, atomic_path

        emb = np.asarray(embeddings, dtype=np.float32)
        lock = _try_lock(FileLock(f"{self.path}.lock"))
        if lock is None:
            return False
        try:
            known, old = self._read()
            merged = {t: old[i] for i, t in enumerate(known)} if old is not None else {}
            for t, v in zip(texts, emb):
                merged.pop(t, None)
                merged[t] = v
            items = list(merged.items())[-QUERY_CACHE_LIMIT:]
            with atomic_path(self.path) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, texts=np.array([t for t, _ in items], dtype=str),
                             embedding=np.stack([v for _, v in items]).astype(np.float32),
                             fingerprint=np.array(self.fingerprint))
            return True
        except OSError as exc:
            log.debug("query texts not cached in %s: %s", self.path, exc)
            return False
        finally:
            lock.release()


def _try_lock(lock):
    """``lock`` when it could be taken without waiting; None when another process holds it or the
    lock file cannot be made (a cache write is then skipped, never waited for)."""
    try:
        return lock if lock.try_acquire() else None
    except OSError:
        return None
