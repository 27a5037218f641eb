"""Embedding store: round trip, fingerprint refusal, kill -9 resume, merge of torchrun parts,
FAISS index freshness and agreement, text cache, the bf16 fast path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clefctl import distributed
from clefctl import embed as E
from clefctl import store as S
from clefctl.data.records import Sample
from clefctl.errors import ClefError
from clefctl.model import create
from clefctl.model.inference import ImageEncoder, cpu_has_native_bf16, inference_dtype

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.filterwarnings("ignore:unreadable image skipped:RuntimeWarning"),
              pytest.mark.usefixtures("one_thread")]
FER = ["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"]




@pytest.fixture(scope="module")
def model():
    return create("clef-tiny")


def make_images(folder: Path, n: int, bad: tuple[int, ...] = (), size: int = 32, seed: int = 0) -> list[Sample]:
    """n small PNGs (blobs on a coloured ground, one colour family per class); ``bad`` positions
    are files that are not images. Samples carry FER labels, subjects, frames and some boxes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        p = folder / f"img{i:04d}.png"
        label = i % len(FER)
        if i in bad:
            p.write_bytes(b"this is not an image")
        else:
            base = np.array([40 + 30 * label, 200 - 25 * label, (97 * label) % 255], dtype=np.float32)
            arr = base + rng.normal(0, 35, (size, size, 3))
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(p)
        samples.append(Sample(id=f"S{i % 9}/{i:04d}", subject=f"S{i % 9}", path=str(p), frame=i,
                              label=label, split="test",
                              box=(1, 2, size - 3, size - 4) if i % 5 == 0 else None))
    return samples


def unit_rows(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def structured(rng, n, d, centres=12, spread=0.15):
    c = unit_rows(rng, centres, d)
    x = c[rng.integers(0, centres, n)] + spread * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def plain_samples(prefix: str, n: int) -> list[Sample]:
    return [Sample(id=f"{prefix}{i:05d}", subject=prefix, path=f"/nowhere/{prefix}{i}.png", frame=i,
                   label=i % 3) for i in range(n)]


# ----------------------------------------------------------------------------------------------


def test_round_trip_metadata_and_planted_neighbour(tmp_path, model):
    samples = make_images(tmp_path / "img", 48, bad=(5, 30))
    path = tmp_path / "fer.h5"
    rep = E.embed_into_store(model, samples, path, batch_size=8, chunk_size=16, progress=False,
                             image_set="toy", task="fer", classes=FER, num_workers=0)
    assert rep.complete and rep.rows == 46 and rep.skipped == 2
    assert rep.skipped_ids == [samples[5].id, samples[30].id]
    with S.EmbeddingStore.open(path, model.fingerprint) as st:
        good = [s for i, s in enumerate(samples) if i not in (5, 30)]
        assert st.ids == [s.id for s in good]
        assert st.count == 46 and st.dim == model.embed_dim and st.dtype == "float16"
        assert st.image_set == "toy" and st.task == "fer" and st.classes == FER
        attrs = st.attrs
        assert attrs["clefctl_store"] == S.SCHEMA_VERSION and attrs["model_fingerprint"] == model.fingerprint
        assert st._h5["images/embedding"].compression is None  # uncompressed, chunked
        assert st._h5["images/embedding"].chunks[1] == st.dim
        e = st.embeddings()
        assert e.dtype == np.float32 and np.allclose(np.linalg.norm(e, axis=1), 1, atol=2e-3)
        md = st.metadata()
        assert md["path"].tolist() == [s.path for s in good]
        assert md["subject"].tolist() == [s.subject for s in good]
        assert md["frame"].tolist() == [s.frame for s in good]
        assert md["label"].tolist() == [s.label for s in good]
        assert md["label_name"].tolist() == [FER[s.label] for s in good]
        assert [tuple(r) for r in md[["box_x", "box_y", "box_w", "box_h"]].values[:1]] == [good[0].box]
        assert md["box_w"].iloc[1] == -1
        # rows in any order come back in that order
        assert np.array_equal(st.embeddings([7, 2, 7]), e[[7, 2, 7]])
        # same embeddings as the plain fp32 model, up to bf16 inference + fp16 storage
        from clefctl.data.records import open_image
        from clefctl.data.transforms import transforms_for

        tf = transforms_for(model, train=False)
        ref = model.encode_images(torch.stack([tf(open_image(s)) for s in good[:6]])).numpy()
        assert np.min(np.sum(ref * e[:6], axis=1)) > 0.995
    # plant a row equal to a query's embedding; the text query must find it first
    q = model.encode_texts(["a photo of a person with a planted query."]).numpy()
    with S.EmbeddingStore.open(path, mode="a") as st:
        st.append(q, [Sample(id="planted", subject="zz", path="", label=3)])
        assert st.count == 47 and st.complete
    from clefctl.search import query_text

    hits = query_text(path, model, "a photo of a person with a planted query.", k=5)
    assert hits["id"].iloc[0] == "planted" and hits["score"].iloc[0] > 0.999
    assert list(hits["rank"]) == [1, 2, 3, 4, 5]
    # a rerun over the same images finds the store complete and adds nothing
    again = E.embed_into_store(model, samples, tmp_path / "fer2.h5", batch_size=8, chunk_size=16,
                               progress=False, task="fer", classes=FER, num_workers=0)
    again2 = E.embed_into_store(model, samples, tmp_path / "fer2.h5", batch_size=8, chunk_size=16,
                                progress=False, task="fer", classes=FER, num_workers=0)
    assert again.embedded_now == 46 and again2.embedded_now == 0 and again2.rows == 46


def test_fingerprint_mismatch_is_refused(tmp_path, model):
    path = tmp_path / "s.h5"
    with S.EmbeddingStore.create(path, model.fingerprint, model.embed_dim, "x") as st:
        st.append(unit_rows(np.random.default_rng(0), 3, model.embed_dim), plain_samples("a", 3))
    other = create("clef-tiny", seed=1)
    with pytest.raises(ClefError) as err:
        S.EmbeddingStore.open(path, other.fingerprint)
    assert model.fingerprint in str(err.value) and other.fingerprint in str(err.value)
    with pytest.raises(ClefError) as err:
        E.embed_into_store(other, plain_samples("a", 3), path, progress=False, num_workers=0)
    assert "clef-tiny@random:1" in str(err.value) and "clef-tiny@random:0" in str(err.value)
    from clefctl.search import query_text

    with pytest.raises(ClefError, match="clef-tiny@random:1"):
        query_text(path, other, "anything")
    with pytest.raises(ClefError, match="already exists"):
        S.EmbeddingStore.create(path, model.fingerprint, model.embed_dim, "x")
    with pytest.raises(ClefError, match="not found"):
        S.EmbeddingStore.open(tmp_path / "missing.h5")


_CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(1)
from clefctl.data.records import Sample
from clefctl.data.transforms import transforms_for
from clefctl.model import create
from clefctl.embed import embed_into_store
samples = [Sample(**d) for d in json.load(open(sys.argv[1]))]
m = create("clef-tiny")
tf = transforms_for(m, train=False)
def slow(img):  # a slow image pipeline, so that the parent can kill us mid-run
    time.sleep(0.006)
    return tf(img)
embed_into_store(m, samples, sys.argv[2], batch_size=10, chunk_size=20, progress=False,
                 image_set="kill", task="fer", classes=json.loads(sys.argv[3]), num_workers=0,
                 transform=slow)
"""


def _sample_dicts(samples):
    return [{"id": s.id, "subject": s.subject, "path": s.path, "frame": s.frame, "label": s.label,
             "split": s.split, "box": list(s.box) if s.box else None} for s in samples]


def _run_and_kill(samples_json, path, kill_at, expected_ids, log):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(samples_json), str(path), json.dumps(FER)],
                             env=env, stdout=log, stderr=log)
    seen = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if child.poll() is not None:
                log.flush()
                raise AssertionError("the embedding process ended before it could be killed:\n"
                                     + Path(log.name).read_text(errors="replace")[-2000:])
            if path.exists():
                with S.EmbeddingStore.open(path) as st:   # a concurrent SWMR reader
                    n = st.count
                    ids = st.ids
                    e = st.embeddings()
                    # never a half-written chunk: whole chunks, right ids, finite unit rows
                    assert ids == expected_ids[:n]
                    assert st.consumed % 20 == 0
                    assert np.all(np.abs(np.linalg.norm(e, axis=1) - 1) < 3e-3)
                    seen.append(n)
                if n >= kill_at:
                    break
            time.sleep(0.01)
        else:
            raise AssertionError("no committed chunk within the time limit")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    return seen


def test_kill9_mid_run_then_resume_equals_uninterrupted(tmp_path, model):
    samples = make_images(tmp_path / "img", 300, bad=(3, 151))
    expected = [s.id for i, s in enumerate(samples) if i not in (3, 151)]
    sj = tmp_path / "samples.json"
    sj.write_text(json.dumps(_sample_dicts(samples)))
    path = tmp_path / "killed.h5"
    with open(tmp_path / "child.log", "wb") as log:
        _run_and_kill(sj, path, 40, expected, log)
        # the writer died holding the file: plain HDF5 refuses it until the flags are cleared
        import h5py

        with pytest.raises(OSError):
            h5py.File(path, "r").close()
        with S.EmbeddingStore.open(path) as st:
            first = st.count
            assert 40 <= first < 298 and not st.complete
        # second run, killed again later
        _run_and_kill(sj, path, min(first + 60, 280), expected, log)
    with S.EmbeddingStore.open(path) as st:
        second = st.count
        assert second >= min(first + 60, 280) and not st.complete
    # third run finishes (in this process; same settings)
    tf = __import__("clefctl.data.transforms", fromlist=["x"]).transforms_for(model, train=False)
    rep = E.embed_into_store(model, samples, path, batch_size=10, chunk_size=20, progress=False,
                             image_set="kill", task="fer", classes=FER, num_workers=0, transform=tf)
    assert rep.resumed_from > second and rep.complete
    ref_path = tmp_path / "reference.h5"
    E.embed_into_store(model, samples, ref_path, batch_size=10, chunk_size=20, progress=False,
                       image_set="kill", task="fer", classes=FER, num_workers=0)
    with S.EmbeddingStore.open(path) as a, S.EmbeddingStore.open(ref_path) as b:
        assert a.ids == b.ids == expected                    # no duplicates, no holes, same order
        assert a.skipped_ids == b.skipped_ids == [samples[3].id, samples[151].id]
        np.testing.assert_allclose(a.embeddings(), b.embeddings(), atol=2e-3)
        assert a.metadata().drop(columns=[]).equals(b.metadata())
        assert a.complete and b.complete


def test_rerun_with_other_images_is_refused(tmp_path, model):
    samples = make_images(tmp_path / "img", 12)
    path = tmp_path / "s.h5"
    E.embed_into_store(model, samples, path, batch_size=4, chunk_size=4, progress=False,
                       task="fer", classes=FER, num_workers=0)
    with pytest.raises(ClefError, match="different image list"):
        E.embed_into_store(model, samples[::-1], path, batch_size=4, chunk_size=4, progress=False,
                           task="fer", classes=FER, num_workers=0)
    dup = samples[:3] + samples[:1]
    with pytest.raises(ClefError, match="not unique"):
        E.embed_into_store(model, dup, tmp_path / "d.h5", progress=False, num_workers=0)


def _part(path, prefix, n, d, seed, skipped=(), complete=True, fp="m@x"):
    rng = np.random.default_rng(seed)
    emb = unit_rows(rng, n, d)
    with S.EmbeddingStore.create(path, fp, d, "set", task="fer", classes=["a", "b", "c"]) as st:
        half = n // 2
        st.append(emb[:half], plain_samples(prefix, n)[:half])
        st.append(emb[half:], plain_samples(prefix, n)[half:], skipped)
        if complete:
            st.mark_complete()
    return emb


def test_merge_parts_keeps_the_order_given(tmp_path):
    d = 16
    e0 = _part(tmp_path / "p0.h5", "a", 7, d, 0, skipped=["a-bad"])
    e1 = _part(tmp_path / "p1.h5", "b", 5, d, 1, skipped=["b-bad1", "b-bad2"])
    out = S.merge_parts([tmp_path / "p0.h5", tmp_path / "p1.h5"], tmp_path / "merged.h5")
    with S.EmbeddingStore.open(out) as st:
        assert st.ids == [f"a{i:05d}" for i in range(7)] + [f"b{i:05d}" for i in range(5)]
        np.testing.assert_allclose(st.embeddings(), np.concatenate([e0, e1]), atol=1e-3)
        assert st.skipped_ids == ["a-bad", "b-bad1", "b-bad2"]
        assert st.metadata()["label"].tolist() == [i % 3 for i in range(7)] + [i % 3 for i in range(5)]
        assert st.complete and st.consumed == 15
    rev = S.merge_parts([tmp_path / "p1.h5", tmp_path / "p0.h5"], tmp_path / "rev.h5")
    with S.EmbeddingStore.open(rev) as st:
        assert st.ids[:5] == [f"b{i:05d}" for i in range(5)]
    _part(tmp_path / "p2.h5", "c", 4, d, 2, complete=False)
    with pytest.raises(ClefError, match="incomplete"):
        S.merge_parts([tmp_path / "p0.h5", tmp_path / "p2.h5"], tmp_path / "bad.h5")
    _part(tmp_path / "p3.h5", "d", 4, d, 3, fp="other@y")
    with pytest.raises(ClefError, match="different models"):
        S.merge_parts([tmp_path / "p0.h5", tmp_path / "p3.h5"], tmp_path / "bad.h5")
    assert not (tmp_path / "bad.h5").exists()
    # contiguous shards cover everything once, in order
    for n, w in ((10, 3), (2, 4), (0, 2), (101, 7)):
        ranges = [distributed.shard_range(n, r, w) for r in range(w)]
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))


def test_torchrun_sharding_merges_to_the_single_process_store(tmp_path, model, monkeypatch):
    samples = make_images(tmp_path / "img", 26, bad=(11,))
    single = tmp_path / "single.h5"
    E.embed_into_store(model, samples, single, batch_size=4, chunk_size=8, progress=False,
                       task="fer", classes=FER, num_workers=0)
    local = threading.local()
    gate = threading.Barrier(2, timeout=60)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: local.rank)
    monkeypatch.setattr(distributed, "barrier", lambda: gate.wait())
    path = tmp_path / "ddp.h5"
    errors, reports = [], {}

    def rank_main(r):
        local.rank = r
        try:
            reports[r] = E.embed_into_store(model, samples, path, batch_size=4, chunk_size=8,
                                            progress=False, task="fer", classes=FER, num_workers=0)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            gate.abort()

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert not E.part_path(path, 0, 2).exists() and not E.part_path(path, 1, 2).exists()
    with S.EmbeddingStore.open(path) as a, S.EmbeddingStore.open(single) as b:
        assert a.ids == b.ids and a.skipped_ids == b.skipped_ids == [samples[11].id]
        np.testing.assert_allclose(a.embeddings(), b.embeddings(), atol=2e-3)
        assert a.complete
    assert reports[0].rows == 25


def _store_of(path, emb, fp="m@x"):
    with S.EmbeddingStore.create(path, fp, emb.shape[1], "set") as st:
        for s in range(0, len(emb), 1000):
            st.append(emb[s:s + 1000], plain_samples("r", len(emb))[s:s + 1000])
        st.mark_complete()


def test_index_is_rebuilt_when_stale_and_ivf_agrees_with_flat(tmp_path):
    rng = np.random.default_rng(0)
    emb = structured(rng, 3000, 32)
    path = tmp_path / "ix.h5"
    _store_of(path, emb)
    flat = S.load_index(path)                       # auto -> exact below 100k rows
    assert flat.kind == "flat" and flat.ntotal == 3000
    meta = json.loads(Path(f"{path}.faiss.json").read_text())
    assert meta["rows"] == 3000 and meta["kind"] == "flat"
    with S.EmbeddingStore.open(path) as st:
        assert S.index_status(st) == (True, "fresh")
        assert meta["checksum"] == st.checksum()
    stamp = Path(f"{path}.faiss").stat().st_mtime_ns
    again = S.load_index(path)
    assert again.meta.get("reason") is None and Path(f"{path}.faiss").stat().st_mtime_ns == stamp
    extra = structured(np.random.default_rng(1), 50, 32)
    with S.EmbeddingStore.open(path, mode="a") as st:
        st.append(extra, plain_samples("x", 50))
    with S.EmbeddingStore.open(path) as st:
        fresh, reason = S.index_status(st)
        assert not fresh and "3000" in reason
    rebuilt = S.load_index(path)
    assert rebuilt.ntotal == 3050 and "3000" in rebuilt.meta["reason"]
    assert json.loads(Path(f"{path}.faiss.json").read_text())["rows"] == 3050
    # the appended rows are findable
    s, r = rebuilt.search(extra[:3], 1)
    assert r[:, 0].tolist() == [3000, 3001, 3002]

    queries = structured(np.random.default_rng(2), 100, 32)
    _, exact = S.load_index(path, "flat").search(queries, 10)
    ivf = S.load_index(path, "ivf", S.IndexParams(nlist=32, nprobe=32))
    assert ivf.kind == "ivf" and ivf.meta["params"]["nlist"] == 32
    _, rows_all = ivf.search(queries, 10)
    assert np.array_equal(np.sort(rows_all, 1), np.sort(exact, 1))   # nprobe = nlist: exhaustive
    ivf.set_nprobe(12)
    _, rows = ivf.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, exact)])
    assert recall >= 0.9
    hnsw = S.load_index(path, "hnsw")
    _, rows = hnsw.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, exact)])
    assert recall >= 0.9
    assert S.resolve_index_kind("auto", 99_999) == "flat" and S.resolve_index_kind("auto", 100_000) == "ivf-sq8"
    with pytest.raises(ClefError, match="unknown index"):
        S.resolve_index_kind("lsh", 10)


def test_text_cache_hits_and_misses(tmp_path, model):
    path = tmp_path / "t.h5"
    _store_of(path, unit_rows(np.random.default_rng(0), 10, model.embed_dim), fp=model.fingerprint)
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return model.encode_texts(texts)

    texts = ["a photo of a person with happiness.", "a photo of a person with anger."]
    with S.EmbeddingStore.open(path) as st:
        a = st.text_embeddings("hash1", model.fingerprint, texts, encode)
        assert st.last_text_cache_hit is False and len(calls) == 1
        b = st.text_embeddings("hash1", model.fingerprint, texts, encode)
        assert st.last_text_cache_hit is True and len(calls) == 1
        np.testing.assert_array_equal(a, b)
        st.text_embeddings("hash2", model.fingerprint, texts, encode)      # other prompt set
        st.text_embeddings("hash1", "other-model", texts, encode)          # other text encoder
        assert len(calls) == 3 and st.text_cache_misses == 3 and st.text_cache_hits == 1
        assert st.count == 10                                              # still readable
    with S.EmbeddingStore.open(path) as st:                                # persisted
        st.text_embeddings("hash1", model.fingerprint, texts, encode)
        assert st.last_text_cache_hit is True and len(st.text_cache_keys()) == 3


def test_fast_encoder_is_a_bf16_copy_when_the_cpu_has_bf16(model):
    enc = ImageEncoder(model)
    expected = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert enc.dtype == expected
    assert next(model.clip.visual.parameters()).dtype == torch.float32   # the model is untouched
    px = torch.randn(4, 3, model.image_size, model.image_size)
    ref = model.encode_images(px)
    for dt in ("auto", "bfloat16", "float32"):
        out = ImageEncoder(model, dt)(px)
        assert out.dtype == torch.float32 and out.shape == ref.shape
        assert torch.min(torch.sum(out * ref, dim=1)) > 0.995
    with pytest.raises(ClefError, match="inference dtype"):
        inference_dtype("cpu", "int8")


def test_lookup3_and_status_flags(tmp_path):
    # test vectors of Bob Jenkins' lookup3.c (driver5)
    assert S.lookup3(b"") == 0xDEADBEEF
    assert S.lookup3(b"Four score and seven years ago") == 0x17770551
    assert S.lookup3(b"Four score and seven years ago", 1) == 0xCD628161
    path = tmp_path / "c.h5"
    _store_of(path, unit_rows(np.random.default_rng(0), 5, 8))
    assert S.clear_status_flags(path) is False      # closed cleanly: checksum verified, no change
    (tmp_path / "junk.h5").write_bytes(b"x" * 100)
    with pytest.raises(ClefError, match="not an HDF5"):
        S.clear_status_flags(tmp_path / "junk.h5")
    with pytest.raises(ClefError):
        S.EmbeddingStore.open(tmp_path / "junk.h5")


def test_writer_lock_is_exclusive(tmp_path):
    path = tmp_path / "w.h5"
    _store_of(path, unit_rows(np.random.default_rng(0), 5, 8))
    with S.EmbeddingStore.open(path, mode="a") as st:
        assert st.mode == "a"
        held = S.WriterLock(path)
        code = ("import sys; from clefctl.store import WriterLock; "
                f"sys.exit(0 if WriterLock({str(path)!r}).try_acquire() else 3)")
        rc = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(ROOT))).returncode
        assert rc == 3
        del held
    assert S.WriterLock(path).try_acquire()


def test_run_embed_returns_the_run_and_writes_its_files(tmp_path, image_folder):
    from clefctl.embed import EmbedOptions, run_embed
    from clefctl.store import STORE_NAME
    from clefctl.workspace import Run, Workspace

    image_folder(5)
    ws = str(tmp_path / "ws")
    opts = EmbedOptions(dataset="folder", dataset_root=str(tmp_path / "imgs"), weights="random", arch="clef-tiny",
                        workspace=ws, batch_size=4, chunk_size=4, workers=0, progress=False)
    res = run_embed(opts)
    assert isinstance(res.run, Run) and res.main and res.store_path == res.run.path / STORE_NAME
    assert res.report.rows == 10 and res.report.complete and res.summary["index"]["kind"] == "flat"
    cfg = res.run.config()
    assert cfg["store"] == STORE_NAME and cfg["weights"] == "random" and cfg["fingerprint"] == "clef-tiny@random:0"
    assert json.loads((res.run.path / "report.json").read_text()) == json.loads(json.dumps(res.summary, default=str))
    assert Workspace(ws).latest("embed").path == res.run.path
    again = run_embed(opts)                                          # same model and images: resumes, nothing to do
    assert again.run.path == res.run.path and again.report.embedded_now == 0
    out = tmp_path / "elsewhere" / "s.h5"                            # --out: a store file, no run folder
    other = run_embed(EmbedOptions(**{**opts.__dict__, "out": str(out), "index": "none"}))
    assert other.run is None and other.store_path == out and out.is_file() and "index" not in other.summary
    assert not (out.parent / "config.yaml").exists() and Workspace(ws).latest("embed").path == res.run.path


def test_the_inference_copy_follows_the_model_weights():
    m = create("clef-tiny")
    px = torch.randn(3, 3, m.image_size, m.image_size)
    before = m.encode_images(px, dtype="bfloat16")
    assert torch.equal(before, ImageEncoder(m, "bfloat16")(px))       # one path, one cached copy
    with torch.no_grad():
        for p in m.clip.visual.parameters():
            p.mul_(1.5)
    after = m.encode_images(px, dtype="bfloat16")
    assert not torch.equal(before, after)                            # trained weights: a new copy
    assert torch.min(torch.sum(after * m.encode_images(px), dim=1)) > 0.995
    assert next(m.clip.visual.parameters()).dtype == torch.float32
