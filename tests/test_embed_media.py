"""embed PATH...: one store row per face of photos and videos, query hits that say where in
which video they are, resuming, and stores older than the face columns."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from clefctl.cli import main


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    from clefctl.data.faces.scenes import group_photo, write_scene_video

    d = tmp_path_factory.mktemp("media")
    truth = write_scene_video(d / "talk.avi", frames=40, width=480, height=270, face=96, people=3, seed=4)
    rgb, _ = group_photo(3, width=480, height=240, face=110, seed=5)
    Image.fromarray(rgb).save(d / "group.png")
    (d / "broken.mp4").write_bytes(b"\x00" * 64)
    return d, truth


def _cli(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_embed_a_video_then_query_says_where_each_hit_is(media, tmp_path, capsys):
    d, truth = media
    ws = tmp_path / "ws"
    code, out, err = _cli(["embed", d / "talk.avi", d / "group.png", d / "broken.mp4", "--every", "2",
                           "--weights", "random", "--arch", "clef-tiny", "--workspace", ws, "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["sources"] == 3 and summary["frames"] == 20 + 1 and summary["skipped"] == 1
    assert summary["skipped_ids"] == [str(d / "broken.mp4")]
    assert summary["rows"] == summary["faces"] > 20 and summary["complete"]
    assert summary["index"]["kind"] == "flat" and "bytes" in summary["index"]     # index_after_embed's summary
    code, out, err = _cli(["query", "a smiling face", "-k", "50", "--workspace", ws, "--json"], capsys)
    assert code == 0, err
    hits = json.loads(out)["hits"]
    assert len(hits) == 50
    video = [h for h in hits if h["source"] == str(d / "talk.avi")]
    photo = [h for h in hits if h["source"] == str(d / "group.png")]
    assert video and photo
    for h in video:
        assert {"source", "frame", "timestamp", "face_id", "score"} <= set(h)
        assert h["frame"] % 2 == 1 and h["timestamp"] == pytest.approx((h["frame"] - 1) / truth.fps, abs=1e-3)
        assert h["face_id"] in (0, 1, 2) and h["id"] == f"talk.avi@{h['frame']}#{h['face_id']}"
    assert all(h["frame"] == 1 and h["timestamp"] == 0 and h["face_id"] in (0, 1, 2) for h in photo)
    code, out, err = _cli(["query", "a smiling face", "-k", "4", "--workspace", ws, "--sheet", tmp_path / "s.png"],
                          capsys)
    assert code == 0, err
    assert "timestamp" in out and "talk.avi" in out and (tmp_path / "s.png").stat().st_size > 1000
    # an image query on a store of faces searches with the photo's largest face, cropped as embed crops it
    code, out, err = _cli(["query", "--image", d / "group.png", "-k", "3", "--workspace", ws, "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    from clefctl.store.format import EmbeddingStore

    qx, qy, qw, qh = doc["query_face"]
    with EmbeddingStore.open(doc["store"]) as st:
        meta = st.metadata(np.arange(st.count))
    same = meta[(meta["source"] == str(d / "group.png")) & (meta["box_x"] == qx) & (meta["box_y"] == qy)
                & (meta["box_w"] == qw) & (meta["box_h"] == qh)]
    assert len(same) == 1 and doc["hits"][0]["id"] == same["id"].iloc[0]      # that very face's row comes first
    code, out, err = _cli(["query", "--image", d / "group.png", "-k", "3", "--workspace", ws, "--whole-image",
                           "--json"], capsys)
    assert code == 0, err
    whole = json.loads(out)
    assert whole["query_face"] is None
    # explain reads a stored video face back from its frame
    code, out, err = _cli(["explain", video[0]["id"], "--store", doc["store"], "--checkpoint", "random", "--text",
                           "a smiling face", "--out", tmp_path / "why.png", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["face"] == "stored box" and (tmp_path / "why.png").stat().st_size > 1000


def test_an_interrupted_embed_resumes_to_the_same_store(media, tmp_path, monkeypatch):
    import clefctl.data.faces as pipeline
    from clefctl.model import create
    from clefctl.store import EmbeddingStore
    from clefctl.embed.media import embed_media_into_store

    d, _ = media
    model = create("clef-tiny")
    inputs = [d / "group.png", d / "talk.avi"]
    whole, _ = embed_media_into_store(model, inputs, tmp_path / "whole.h5", chunk_size=8, progress=False)

    real = pipeline.iter_faces

    def dies_after_25_frames(*args, **kwargs):
        for i, ff in enumerate(real(*args, **kwargs)):
            if i == 25:
                raise KeyboardInterrupt
            yield ff

    monkeypatch.setattr(pipeline, "iter_faces", dies_after_25_frames)
    with pytest.raises(KeyboardInterrupt):
        embed_media_into_store(model, inputs, tmp_path / "part.h5", chunk_size=8, progress=False)
    with EmbeddingStore.open(tmp_path / "part.h5") as st:
        assert 0 < st.count < whole.rows and not st.complete
        kept = st.count
    monkeypatch.setattr(pipeline, "iter_faces", real)
    again, counts = embed_media_into_store(model, inputs, tmp_path / "part.h5", chunk_size=8, progress=False)
    assert again.resumed_from == kept and again.rows == whole.rows and again.complete
    with EmbeddingStore.open(tmp_path / "whole.h5") as a, EmbeddingStore.open(tmp_path / "part.h5") as b:
        assert a.ids == b.ids
        assert np.allclose(a.embeddings(), b.embeddings(), atol=2e-3)
        ma, mb = a.metadata(), b.metadata()
        for col in ("frame", "timestamp", "face_id", "box_x", "box_w", "source"):
            assert list(ma[col]) == list(mb[col])


def test_stores_without_the_face_columns_still_read(tmp_path):
    import h5py

    from clefctl.store import EmbeddingStore

    path = tmp_path / "old.h5"
    with EmbeddingStore.create(path, "m@x", 4, "imgs") as st:
        from clefctl.data.records import Sample

        st.append(np.eye(4, dtype=np.float32)[:2], [Sample("a", "s1", frame=7), Sample("b", "s2")])
        st.mark_complete()
    with h5py.File(path, "a") as f:   # as a store written before the face columns existed
        del f["images/timestamp"], f["images/face_id"]
    with EmbeddingStore.open(path) as st:
        meta = st.metadata()
    assert list(meta["frame"].astype("float").fillna(-1)) == [7, -1]
    assert np.isnan(meta["timestamp"]).all() and list(meta["face_id"]) == [-1, -1]
    with EmbeddingStore.open(path, mode="a") as st:   # and take more rows
        from clefctl.data.records import Sample

        st.append(np.eye(4, dtype=np.float32)[2:3], [Sample("c", "s3")])
        assert st.count == 3


def test_a_media_store_index_is_tuned_on_the_texts_of_the_models_data_set():
    from types import SimpleNamespace

    from clefctl.embed.media import media_prompts

    assert media_prompts(SimpleNamespace(meta={"dataset": "rafdb"})) == "rafdb"
    assert media_prompts(SimpleNamespace(meta={})) == "bp4d" and media_prompts(object()) == "bp4d"
