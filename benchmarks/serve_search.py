"""Benchmark: `clefctl serve`'s search latency at the API on a 100k-row store.

Builds a store of random unit vectors (written with :class:`clefctl.store.EmbeddingStore` directly,
labelled with synthetic-au's AUs so the page's prompt classes load), starts the real app on uvicorn
on 127.0.0.1 (in a thread) over a clef-tiny model (its text tower encodes the queries), and times
HTTP requests over one keep-alive connection:

* ``new text``: ``GET /api/search?q=...&k=60``, every query a text not seen before (the text tower
  runs: what a user typing a query sees);
* ``next page``: the same query at ``offset=60, 120, ...`` (the text vector is cached);
* ``k=1000``: a long page;
* ``filtered``: a new text filtered by a class combination (AU6 and AU12 predicted);
* ``rank``: ``GET /api/rank?class=AU12&k=60`` after a re-score (a new sort of every row).

Baseline, measured in the same run: :func:`clefctl.search.query_text` called from Python with the
same model (it loads the index for every call), so the ratio shows what the warm server saves.
Target: median and p99 of ``new text`` under 100 ms.

Usage::

    python benchmarks/serve_search.py              # 100k rows
    python benchmarks/serve_search.py --n 20000 --queries 20 --json
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TARGET_MS = 100.0
WORDS = ("raised inner brows", "lip corners pulled up", "wrinkled nose", "jaw dropped", "eyes narrowed",
         "lips pressed together", "cheeks raised", "brows lowered", "upper lip raised", "chin raised")


def build_store(path: Path, n: int, dim: int, fingerprint: str, seed: int = 0) -> float:
    """``n`` random unit rows with ids, paths and AU labels; returns the seconds it took."""
    from clefctl.prompts import load_prompts
    from clefctl.store import EmbeddingStore
    from clefctl.store.layout import Columns

    classes = load_prompts("synthetic-au").class_ids
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    with EmbeddingStore.create(path, fingerprint, dim, "random-100k", task="au", classes=classes) as st:
        for start in range(0, n, 16384):
            k = min(16384, n - start)
            emb = rng.standard_normal((k, dim)).astype(np.float32)
            emb /= np.linalg.norm(emb, axis=1, keepdims=True)
            rows = range(start, start + k)
            cols = Columns(embedding=emb.astype(np.float16),
                           strings={"id": [f"img{r:07d}" for r in rows],
                                    "path": [f"/data/random/{r // 1000:04d}/{r:07d}.png" for r in rows],
                                    "subject": [f"S{r % 500:03d}" for r in rows], "activity": [""] * k,
                                    "split": [""] * k},
                           frame=np.full(k, -1, np.int64), label=np.full(k, -1, np.int32),
                           box=np.full((k, 4), -1, np.int32),
                           aus=(rng.random((k, len(classes))) < 0.2).astype(np.uint8),
                           au_mask=np.ones((k, len(classes)), np.uint8))
            st.append_columns(cols)
        st.mark_complete()
    return time.perf_counter() - t0


def serve_in_thread(app):
    """uvicorn on 127.0.0.1, a free port, in a daemon thread; returns (server, port)."""
    import uvicorn

    from clefctl.serve import bind_socket

    sock = bind_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    return server, sock.getsockname()[1]


def timed(conn, path: str, method: str = "GET", body: bytes | None = None) -> tuple[float, dict]:
    t0 = time.perf_counter()
    conn.request(method, path, body=body, headers={"content-type": "application/json"} if body else {})
    resp = conn.getresponse()
    data = resp.read()
    ms = 1000 * (time.perf_counter() - t0)
    if resp.status != 200:
        raise SystemExit(f"{path}: HTTP {resp.status}: {data[:300]!r}")
    return ms, json.loads(data)


def stats(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"n": len(a), "median_ms": round(float(np.median(a)), 2), "p99_ms": round(float(np.percentile(a, 99)), 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="store rows")
    ap.add_argument("--queries", type=int, default=60, help="new-text queries timed")
    ap.add_argument("--baseline", type=int, default=10, help="query_text calls timed for the baseline")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from clefctl.model import create
    from clefctl.search import query_text
    from clefctl.serve import Explorer, create_app

    torch.manual_seed(0)
    model = create("clef-tiny")
    dim = model.embed_dim
    texts = [f"{WORDS[i % len(WORDS)]} (query {i})" for i in range(args.queries + args.baseline + 30)]
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store.h5"
        build_s = build_store(store, args.n, dim, model.fingerprint)
        t0 = time.perf_counter()
        explorer = Explorer.open(store, model)
        start_s = time.perf_counter() - t0
        server, port = serve_in_thread(create_app(explorer))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        q = iter(texts)
        for _ in range(3):                                    # warm-up (threads, allocators)
            timed(conn, "/api/search?" + urlencode({"q": next(q), "k": 60}))
        results = {}
        new = [timed(conn, "/api/search?" + urlencode({"q": next(q), "k": 60}))[0] for _ in range(args.queries)]
        results["new text, k=60"] = stats(new)
        same = next(q)
        timed(conn, "/api/search?" + urlencode({"q": same, "k": 60}))
        results["next page, k=60"] = stats([timed(conn, "/api/search?" + urlencode(
            {"q": same, "k": 60, "offset": 60 * (i + 1)}))[0] for i in range(20)])
        results["new text, k=1000"] = stats([timed(conn, "/api/search?" + urlencode(
            {"q": next(q), "k": 1000}))[0] for _ in range(10)])
        results["filtered AU6+AU12, k=60"] = stats([timed(conn, "/api/search?" + urlencode(
            {"q": next(q), "k": 60, "classes": "AU6,AU12"}))[0] for _ in range(10)])
        summary = explorer.scores.summary()
        prompts = summary["prompts"]
        prompts["classes"][7]["name"] = "a wide toothy grin"
        rescore_ms, _ = timed(conn, "/api/rescore", "POST", json.dumps({"prompts": prompts}).encode())
        results["rank AU12, k=60"] = stats([timed(conn, "/api/rank?" + urlencode(
            {"class": "AU12", "k": 60, "offset": 60 * i}))[0] for i in range(10)])
        conn.close()
        server.should_exit = True
        base = []
        for _ in range(args.baseline):
            t0 = time.perf_counter()
            query_text(store, model, next(q), k=60)
            base.append(1000 * (time.perf_counter() - t0))
        results["baseline query_text, k=60"] = stats(base)
        index_kind = explorer.index.kind
        explorer.close()
    head = results["new text, k=60"]
    ratio = results["baseline query_text, k=60"]["median_ms"] / max(head["median_ms"], 1e-9)
    report = {"rows": args.n, "dim": dim, "index": index_kind, "threads": torch.get_num_threads(),
              "cpus": os.cpu_count(), "build_store_s": round(build_s, 2), "explorer_start_s": round(start_s, 2),
              "rescore_ms": round(rescore_ms, 1), "results": results, "target_ms": TARGET_MS,
              "meets_target": head["median_ms"] < TARGET_MS and head["p99_ms"] < TARGET_MS,
              "speedup_vs_query_text": round(ratio, 1)}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"store: {args.n} random unit rows x {dim} (float16), {index_kind} index; built in {build_s:.1f} s, "
          f"explorer warm in {start_s:.1f} s; {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads")
    for name, r in results.items():
        print(f"  {name:28s} median {r['median_ms']:8.2f} ms   p99 {r['p99_ms']:8.2f} ms   ({r['n']} requests)")
    print(f"  re-score of every row (POST /api/rescore): {rescore_ms:.0f} ms")
    print(f"target: a new text query answers in under {TARGET_MS:.0f} ms at the API (median and p99): "
          f"{'met' if report['meets_target'] else 'NOT met'}; {ratio:.1f}x faster than query_text from Python")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
