"""The store's FAISS index (issue 16): the automatic choice and its regimes, builds that say what they
need and refuse what would not fit, nprobe tuned on text-like queries, memory-mapped reads, on-disk
lists, what a query does without a fresh index, the query-text cache, and the text-only model of
a cold ``clefctl query``. Small stores throughout (a few thousand rows)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from clefctl.data.records import Sample
from clefctl.errors import ClefError
from clefctl.store import EmbeddingStore
from clefctl.store import index as I
from clefctl.store.index import build as B
from clefctl.store.index import clustering
from clefctl.store.index.tuning import recall_at_k

D = 32


def unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def clustered(rng, n, d=D, centres=40, spread=0.35, shared=0.0, direction=None):
    c = unit(rng.standard_normal((centres, d)))
    x = c[rng.integers(0, centres, n)] + spread * rng.standard_normal((n, d))
    if direction is not None:
        x = x + shared * direction
    return unit(x)


def make_store(path, emb, fp="m@test"):
    with EmbeddingStore.create(path, fp, emb.shape[1], "set") as st:
        for s in range(0, len(emb), 1000):
            block = emb[s:s + 1000]
            st.append(block, [Sample(id=f"r{s + i:05d}", subject="") for i in range(len(block))])
        st.mark_complete()
    return path


@pytest.fixture(scope="module")
def data():
    """4000 clustered rows, held-out image-like queries and text-like ones (another shared direction)."""
    rng = np.random.default_rng(0)
    text_dir = unit(rng.standard_normal(D))
    rows = clustered(rng, 4000)
    texts = unit(clustered(np.random.default_rng(1), 160) + 1.2 * text_dir)
    return {"rows": rows, "image_q": clustered(np.random.default_rng(2), 50), "text_tune": texts[:100],
            "text_eval": texts[100:]}


def exact(rows, q, k=10):
    return np.argsort(-(q @ rows.T), axis=1, kind="stable")[:, :k]


# ----------------------------------------------------------------------------------------------
# the choice


def test_auto_choice_regimes_budget_and_memory():
    assert I.resolve_index_kind("auto", 99_999) == "flat"
    assert I.resolve_index_kind("auto", 1_000_000) == "ivf-sq8"
    assert I.resolve_index_kind("auto", I.ONDISK_LIMIT) == "ivf-ondisk"
    # in-memory index would not fit the memory available: lists go to disk
    assert I.resolve_index_kind("auto", 1_000_000, 512, available=100_000_000) == "ivf-ondisk"
    # the default budget is the float16 embeddings; ivf-sq8 needs about half of that
    assert I.estimate_bytes("ivf-sq8", 1_000_000, 512) <= 0.55 * I.float16_bytes(1_000_000, 512)
    assert I.estimate_bytes("ivf", 1_000_000, 512) > 2 * I.float16_bytes(1_000_000, 512)
    with pytest.raises(ClefError, match="no index family fits .* the smallest \\(ivf-sq8\\) needs"):
        I.resolve_index_kind("auto", 1_000_000, 512, I.IndexParams(budget_bytes=100_000_000))
    with pytest.raises(ClefError, match="unknown index kind"):
        I.resolve_index_kind("lsh", 10)
    assert I.parse_size("600MB") == 600_000_000 and I.parse_size("1.5GB") == 1_500_000_000
    assert I.parse_size("2GiB") == 2 * 2**30 and I.parse_size(None) is None
    with pytest.raises(ClefError, match="not a size"):
        I.parse_size("lots")


def test_bf16_assignment_is_the_exact_nearest_centroid():
    rng = np.random.default_rng(3)
    x = clustered(rng, 6000, 64, centres=80)
    c = clustering.spherical_kmeans(x[:3000], 300, iterations=6)
    assert c.shape == (300, 64) and np.allclose(np.linalg.norm(c, axis=1), 1, atol=1e-5)
    assert np.bincount(clustering.assign(x[:3000], c), minlength=300).min() >= 1  # no empty list
    assert np.array_equal(clustering.assign(x, c), np.argmax(x @ c.T, axis=1))


# ----------------------------------------------------------------------------------------------
# builds


def test_ivf_sq8_build_tunes_nprobe_on_text_queries_and_reads_back_mapped(tmp_path, data):
    path = make_store(tmp_path / "s.h5", data["rows"])
    lines = []
    params = I.IndexParams(nlist=64, target_recall=0.97)
    idx = I.build_index(path, "ivf-sq8", params, text_vectors=data["text_tune"], announce=lines.append)
    assert lines and "ivf-sq8 index over 4,000 rows, 64 lists" in lines[0] and "more memory while building" in lines[0]
    tuning = idx.meta["params"]["tuning"]
    assert tuning["tuned_on"] == ["text", "gap"] and tuning["queries"] == {"text": 100, "gap": 128, "image": 64}
    assert min(tuning["recall"]["text"], tuning["recall"]["gap"]) >= 0.97
    nprobe = idx.meta["params"]["nprobe"]
    assert nprobe == tuning["nprobe"] and nprobe in [s["nprobe"] for s in tuning["sweep"]]
    assert all(min(s["text"], s["gap"]) < 0.97 for s in tuning["sweep"][:-1])   # the smallest that reaches it
    meta = json.loads(Path(f"{path}.faiss.json").read_text())
    assert meta["kind"] == "ivf-sq8" and meta["bytes"] == Path(f"{path}.faiss").stat().st_size
    assert meta["bytes"] < meta["float16_bytes"]
    with EmbeddingStore.open(path) as st:
        q = I.index_for_query(st)
        assert isinstance(q, I.StoreIndex) and q.mapped and q.kind == "ivf-sq8" and q.params.nprobe == nprobe
        _, rows = q.search(data["text_eval"], 10)
    assert recall_at_k(rows, exact(data["rows"], data["text_eval"])) >= 0.9   # held-out text-like queries
    _, rows = q.search(data["image_q"], 10)
    assert recall_at_k(rows, exact(data["rows"], data["image_q"])) >= 0.9


def test_without_text_vectors_nprobe_is_scaled_and_said(tmp_path, data):
    path = make_store(tmp_path / "s.h5", data["rows"])
    idx = I.build_index(path, "ivf-sq8", I.IndexParams(nlist=64), save=False)
    tuning = idx.meta["params"]["tuning"]
    assert tuning["tuned_on"] == ["image"] and "no text embeddings" in tuning["note"]
    assert not Path(f"{path}.faiss").exists()                                 # save=False wrote nothing


def test_cached_text_embeddings_are_the_tuning_texts(tmp_path, data):
    path = make_store(tmp_path / "s.h5", data["rows"])
    with EmbeddingStore.open(path) as st:
        st.text_embeddings("prompts", "m@test", [f"t{i}" for i in range(100)], lambda t: data["text_tune"])
    idx = I.build_index(path, "ivf-sq8", I.IndexParams(nlist=64))
    assert idx.meta["params"]["tuning"]["tuned_on"] == ["text", "gap"]


def test_ondisk_lists_build_in_shards_and_match_in_memory(tmp_path, data, monkeypatch):
    monkeypatch.setattr(B, "SHARD_ROWS", 1500)                                # 3 shards merged
    path = make_store(tmp_path / "s.h5", data["rows"])
    params = I.IndexParams(nlist=64, nprobe=64)                               # every list: exact up to SQ8
    disk = I.build_index(path, "ivf-ondisk", params)
    assert I.ondisk_path(path).is_file() and disk.meta["bytes"] >= I.ondisk_path(path).stat().st_size
    assert not list(tmp_path.glob(".faiss-shards-*"))                        # temporary shards removed
    _, rows = disk.search(data["image_q"], 10)
    assert recall_at_k(rows, exact(data["rows"], data["image_q"])) >= 0.97
    with EmbeddingStore.open(path) as st:
        assert I.index_status(st) == (True, "fresh")
        again = I.index_for_query(st)
        assert again.kind == "ivf-ondisk" and np.array_equal(again.search(data["image_q"], 10)[1], rows)
        I.ondisk_path(path).unlink()
        fresh, reason = I.index_status(st)
    assert not fresh and "ivfdata" in reason


def test_a_build_that_would_not_fit_is_refused_before_it_starts(tmp_path, data, monkeypatch):
    path = make_store(tmp_path / "s.h5", data["rows"])
    monkeypatch.setattr(B, "available_memory", lambda: 1_000_000)
    with pytest.raises(ClefError, match="would need about .* of memory to build, but only 1.00 MB is available"):
        I.build_index(path, "ivf-sq8", I.IndexParams(nlist=64))
    assert not Path(f"{path}.faiss").exists()


# ----------------------------------------------------------------------------------------------
# queries


def test_query_without_fresh_index_searches_exactly_or_builds_after_a_warning(tmp_path, data, monkeypatch):
    from clefctl.store.index import load as L

    path = make_store(tmp_path / "s.h5", data["rows"])
    with EmbeddingStore.open(path) as st:
        ex = I.index_for_query(st)
        assert isinstance(ex, I.ExactIndex) and ex.meta["reason"] == "missing"
        _, rows = ex.search(data["image_q"], 10)
        stored = st.embeddings()                                               # the float16-rounded rows
    assert np.array_equal(rows, exact(stored, data["image_q"]))
    assert not Path(f"{path}.faiss").exists()                                 # nothing built or written
    monkeypatch.setattr(L, "EXACT_QUERY_LIMIT", 1000)
    with EmbeddingStore.open(path) as st, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        built = I.index_for_query(st, "auto", I.IndexParams(nlist=32))
    said = " ".join(str(w.message) for w in caught)
    assert "building it now" in said and "clefctl index build" in said and "more memory while building" in said
    assert built.kind == "flat" and Path(f"{path}.faiss").is_file()          # auto below 100k rows: exact flat


def test_query_text_cache_answers_without_a_model(tmp_path, data):
    from clefctl.search import query_text
    from clefctl.store.textcache import QueryTextCache

    path = make_store(tmp_path / "s.h5", data["rows"])

    class Model:
        fingerprint = "m@test"
        calls = 0

        def encode_texts(self, texts):
            Model.calls += 1
            return data["text_eval"][:len(texts)]

    built = []

    def loader():
        built.append(1)
        return Model()

    first = query_text(path, loader, "lip corners up", k=5)
    assert built == [1] and Model.calls == 1
    again = query_text(path, lambda: pytest.fail("the model must not be built for a cached text"), "lip corners up",
                       k=5)
    assert again["row"].tolist() == first["row"].tolist()
    assert QueryTextCache(path, "other@model").lookup(["lip corners up"]) == {}   # another model's: ignored
    with pytest.raises(ClefError, match="embedded with model m@test"):
        query_text(path, lambda: type("M", (), {"fingerprint": "x@y", "encode_texts": None})(), "new text")


def test_cli_index_build_and_status(tmp_path, data):
    from click.testing import CliRunner

    from clefctl.cli import cli

    path = make_store(tmp_path / "s.h5", data["rows"])
    r = CliRunner().invoke(cli, ["index", "status", "--store", str(path), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["index"] is None
    r = CliRunner().invoke(cli, ["index", "build", "--store", str(path), "--kind", "ivf-sq8", "--nlist", "32",
                                 "--recall", "0.9", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["built"] and out["kind"] == "ivf-sq8" and out["params"]["nlist"] == 32 and out["bytes"] > 0
    r = CliRunner().invoke(cli, ["index", "build", "--store", str(path), "--kind", "ivf-sq8", "--nlist", "32"])
    assert r.exit_code == 0 and "fresh already" in r.output
    r = CliRunner().invoke(cli, ["index", "status", "--store", str(path)])
    assert r.exit_code == 0 and "ivf-sq8, 32 lists" in r.output and "fresh" in r.output
    from clefctl.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["index", "build", "--store", str(path), "--budget", "1kB", "--rebuild"])
    assert exc.value.code == 2


# ----------------------------------------------------------------------------------------------
# the text-only model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from clefctl.model import create, save_checkpoint

    path = tmp_path_factory.mktemp("ck") / "model.pt"
    save_checkpoint(path, create("clef-tiny", seed=5), {"stage": "finetune", "dataset": "synthetic-fer"})
    return path


def test_text_only_model_encodes_like_the_full_model(checkpoint):
    from clefctl.model import create
    from clefctl.model.text import TextModel, create_text

    full, text = create("clef-tiny", str(checkpoint)), create_text("clef-tiny", str(checkpoint))
    assert isinstance(text, TextModel) and text.fingerprint == full.fingerprint and text.meta == full.meta
    texts = ["a photo of a face where the lip corners are pulled up.", "a frown", "x " * 40]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, b = full.encode_texts(texts), text.encode_texts(texts)
    assert float((a - b).abs().max()) < 1e-5
    other = create("clef-tiny", seed=6).encode_texts(texts[:1])
    assert float((other - b[:1]).abs().max()) > 1e-2                           # a real comparison
    assert abs(float(text.logit_scale) - float(full.logit_scale.detach())) < 1e-6
    assert isinstance(create_text("clef-tiny", None), type(full))              # random weights: the full model


def test_text_only_model_imports_neither_open_clip_nor_torchvision(checkpoint):
    code = ("import sys; from clefctl.model.text import create_text; "
            f"m = create_text('clef-tiny', {str(checkpoint)!r}); m.encode_texts(['a smile']); "
            "print(type(m).__name__, 'open_clip' in sys.modules, 'torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["TextModel", "False", "False"], out.stderr


@pytest.mark.skipif(not __import__("clefctl.store.index.gpu", fromlist=["x"]).gpu_count("auto"),
                    reason="needs GPU FAISS and a GPU")
def test_gpu_build_has_the_recall_of_the_cpu_build(tmp_path, data):  # pragma: no cover - GPU machines
    path = make_store(tmp_path / "s.h5", data["rows"])
    truth = exact(data["rows"], data["text_eval"])
    recalls = {}
    for gpu in ("no", "yes"):
        idx = I.build_index(path, "ivf-sq8", I.IndexParams(nlist=64, nprobe=16, gpu=gpu), save=False)
        recalls[gpu] = recall_at_k(idx.search(data["text_eval"], 10)[1], truth)
    assert abs(recalls["yes"] - recalls["no"]) <= 0.03
