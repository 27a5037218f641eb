"""What a saved index holds, as ``embed --json``, ``index build --json`` (:func:`summary_of`) and
``clefctl index status`` (:func:`index_report`) report it."""

from __future__ import annotations

import json

from clefctl.store.format import EmbeddingStore
from clefctl.store.index.kinds import IVF_KINDS
from clefctl.store.index.load import index_status
from clefctl.store.index.saved import index_paths


def summary_of(index) -> dict:
    """What ``embed --json`` and ``index build --json`` report about an index."""
    meta = index.meta
    p = meta.get("params", {})
    tuning = p.get("tuning", {})
    out = {"kind": index.kind, "rows": int(index.ntotal), "params": {k: v for k, v in p.items() if k != "tuning"},
           "bytes": meta.get("bytes"), "float16_bytes": meta.get("float16_bytes"),
           "resident_bytes": meta.get("resident_bytes"), "seconds": meta.get("seconds"),
           "build_extra_rss_mb": meta.get("build_extra_rss_mb"), "gpus": meta.get("gpus", 0)}
    if tuning:
        out["recall_at_10"] = tuning.get("recall")
        out["tuned_on"] = tuning.get("tuned_on")
        if tuning.get("note"):
            out["note"] = tuning["note"]
    if meta.get("reason"):
        out["reason"] = meta["reason"]
    return out


def index_report(store_path) -> dict:
    """``clefctl index status``: the saved index's metadata and whether it is fresh."""
    faiss_path, meta_path = index_paths(store_path)
    with EmbeddingStore.open(store_path) as st:
        fresh, reason = index_status(st)
        rows, d = st.count, st.dim
    meta = {}
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            meta = {}
    tuning = meta.get("params", {}).get("tuning", {})
    return {"store": str(store_path), "rows": rows, "dim": d,
            "index": str(faiss_path) if faiss_path.is_file() else None,
            "fresh": fresh, "reason": reason, "kind": meta.get("kind"), "bytes": meta.get("bytes"),
            "float16_bytes": 2 * rows * d, "nlist": meta.get("params", {}).get("nlist"),
            "nprobe": meta.get("params", {}).get("nprobe"), "recall_at_10": tuning.get("recall"),
            "built": meta.get("built"), "seconds": meta.get("seconds"),
            "ivf": meta.get("kind") in IVF_KINDS}


__all__ = ["summary_of", "index_report"]
