"""`clefctl serve`'s JSON API, in-process (Starlette's test client): search by text and image, paging,
hit details, explain, re-scoring with an edited class, class filters, path safety, the token on a
non-loopback bind, JSON errors. The store: tests/serve_helpers.py (real photos + synthetic AU faces)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("httpx")
from starlette.testclient import TestClient  # noqa: E402

from clefctl.errors import ClefError  # noqa: E402
from clefctl.serve import Explorer, create_app, is_loopback  # noqa: E402
from clefctl.serve.media import MediaError, RowMedia, SourceGuard, face_image  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from serve_helpers import build_serve_store  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
BASE = "http://127.0.0.1:8765"
TEXT = "a smiling face with raised cheeks"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_serve_store(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def explorer(built):
    ex = Explorer.open(built["store"], built["model"])
    yield ex
    ex.close()


@pytest.fixture
def client(explorer):
    """A fresh client over the shared explorer, whose prompt set is put back after each test."""
    before = explorer.scores
    with TestClient(create_app(explorer), base_url=BASE) as c:
        yield c
    explorer.scores = before
    explorer._orders.clear()


# ----------------------------------------------------------------------------------------------
# search
# ----------------------------------------------------------------------------------------------


def test_text_search_returns_the_hits_of_query_text_with_every_field(client, built):
    from clefctl.search import query_text

    doc = client.get("/api/search", params={"q": TEXT, "k": 12}).json()
    ref = query_text(built["store"], built["model"], TEXT, k=12)
    assert [h["row"] for h in doc["hits"]] == ref["row"].tolist()
    assert np.allclose([h["score"] for h in doc["hits"]], ref["score"].to_numpy(), atol=1e-5)
    assert doc["query"] == {"text": TEXT} and doc["matching"] == len(built["ids"])
    for key in ("row", "score", "id", "source", "frame", "timestamp", "labels", "image", "rank", "predicted"):
        assert key in doc["hits"][0], key
    first = doc["hits"][0]
    assert first["id"] == built["ids"][first["row"]] and first["image"] == f"/media/{first['row']}"
    assert set(first["predicted"]) == set(built["classes"])
    assert all(0.0 <= p <= 1.0 for p in first["predicted"].values())
    ok = next(h for h in doc["hits"] if h["row"] != built["link_row"])
    img = client.get(ok["image"], params={"size": 96})
    assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(img.content)).size == (96, 96)


def test_paging_concatenates_to_one_long_page(client, built):
    n = len(built["ids"])
    whole = client.get("/api/search", params={"q": TEXT, "k": 30}).json()["hits"]
    pages, offset = [], 0
    while offset is not None:
        doc = client.get("/api/search", params={"q": TEXT, "k": 10, "offset": offset}).json()
        pages += doc["hits"]
        offset = doc["next_offset"]
        if len(pages) >= 30:
            break
    assert [h["row"] for h in pages[:30]] == [h["row"] for h in whole]
    assert [h["rank"] for h in pages[:30]] == list(range(1, 31))
    last = client.get("/api/search", params={"q": TEXT, "k": 10, "offset": n - 5}).json()
    assert len(last["hits"]) == 5 and last["more"] is False and last["next_offset"] is None
    past = client.get("/api/search", params={"q": TEXT, "k": 10, "offset": n + 3}).json()
    assert past["hits"] == [] and past["more"] is False
    too_many = client.get("/api/search", params={"q": TEXT, "k": 100000})
    assert too_many.status_code == 400 and "k must be between 1 and" in too_many.json()["error"]


def test_image_search_by_upload_and_more_like_this(client, built):
    row = 5
    data = (built["images"] / "lfw_05.png").read_bytes()
    doc = client.post("/api/search/image", params={"k": 4}, content=data,
                      headers={"content-type": "image/png"}).json()
    assert doc["hits"][0]["row"] == row and doc["hits"][0]["score"] > 0.98
    again = client.get("/api/search", params={"image": doc["image"], "k": 4, "offset": 1}).json()
    assert [h["row"] for h in again["hits"][:3]] == [h["row"] for h in doc["hits"][1:4]]
    like = client.get("/api/search", params={"row": row, "k": 3}).json()
    assert like["hits"][0]["row"] == row and like["hits"][0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert like["query"] == {"row": row, "id": built["ids"][row]}
    gone = client.get("/api/search", params={"image": "0" * 20})
    assert gone.status_code == 404 and "upload it again" in gone.json()["hint"]
    junk = client.post("/api/search/image", content=b"not an image at all", headers={"content-type": "image/png"})
    assert junk.status_code == 400 and "not an image" in junk.json()["error"]


def test_upload_size_is_limited(explorer, built):
    with TestClient(create_app(explorer, max_upload_bytes=1000), base_url=BASE) as c:
        big = c.post("/api/search/image", content=(built["images"] / "astronaut.png").read_bytes(),
                     headers={"content-type": "image/png"})
    assert big.status_code == 413 and "at most 1000" in big.json()["error"]


# ----------------------------------------------------------------------------------------------
# hits, explain
# ----------------------------------------------------------------------------------------------


def test_hit_details_with_box_labels_and_probabilities(client, built):
    astro = client.get(f"/api/hit/{built['astronaut_row']}").json()
    assert astro["id"] == "astronaut" and astro["box"] == [165, 30, 120, 150] and astro["subject"] == "eileen"
    synth = client.get(f"/api/hit/{len(built['ids']) - 2}").json()
    assert synth["id"].startswith("synth/") and synth["labels"]          # ground truth from the store
    assert set(synth["classes"]) == set(built["classes"]) and set(synth["predicted"]) == set(built["classes"])
    crop = Image.open(io.BytesIO(client.get(f"/media/{built['astronaut_row']}", params={"size": 128}).content))
    assert crop.size == (128, 128)
    assert client.get("/api/hit/100000").status_code == 404
    bad = client.get("/api/hit/abc")
    assert bad.status_code == 400 and "whole number" in bad.json()["error"]


def test_explain_matches_the_explain_machinery(client, explorer, built):
    from clefctl.explain import relevancy

    row = built["astronaut_row"]
    doc = client.get("/api/explain", params={"row": row, "q": TEXT}).json()
    ref = relevancy(built["model"], explorer.face(row), TEXT)
    assert doc["similarity"] == pytest.approx(ref.similarity, abs=1e-5)
    assert [w["word"] for w in doc["words"]] == TEXT.split()
    assert max(w["score"] for w in doc["words"]) == pytest.approx(1.0)
    assert np.asarray(doc["patch_map"]).shape == ref.patch_map.shape
    png = client.get("/api/explain", params={"row": row, "q": TEXT, "format": "png"})
    assert png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == (256, 256)
    empty = client.get("/api/explain", params={"row": row, "q": " "})
    assert empty.status_code == 400 and "empty" in empty.json()["error"]


# ----------------------------------------------------------------------------------------------
# prompt classes: re-score, rank, filter
# ----------------------------------------------------------------------------------------------


def _edited(client, **rename):
    prompts = client.get("/api/prompts").json()["prompt_classes"]["prompts"]
    for c in prompts["classes"]:
        if c["id"] in rename:
            c["name"] = rename[c["id"]]
    return prompts


def test_rescore_with_an_edited_class_changes_its_ranking_only(client, built, monkeypatch, explorer):
    def boom(*a, **k):
        raise AssertionError("the image encoder ran")
    monkeypatch.setattr(explorer.model, "encode_images", boom)
    before = client.get("/api/rank", params={"class": "AU12", "k": 20}).json()
    other = client.get("/api/hit/3").json()["classes"]
    summary = client.post("/api/rescore", json={"prompts": _edited(client, AU12="a wide toothy grin"),
                                                "mode": "names"}).json()
    assert next(c for c in summary["classes"] if c["id"] == "AU12")["name"] == "a wide toothy grin"
    after = client.get("/api/rank", params={"class": "AU12", "k": 20}).json()
    assert after["query"]["prompt_hash"] == summary["prompt_hash"] != before["query"]["prompt_hash"]
    assert [h["row"] for h in after["hits"]] != [h["row"] for h in before["hits"]]
    scores = [h["score"] for h in after["hits"]]
    assert scores == sorted(scores, reverse=True)
    now = client.get("/api/hit/3").json()["classes"]
    assert now["AU1"] == other["AU1"] and now["AU12"] != other["AU12"]
    saved = client.get("/api/prompts.yaml")
    assert "attachment" in saved.headers["content-disposition"]
    from clefctl.prompts import parse_prompts
    assert parse_prompts(saved.text).hash == summary["prompt_hash"]


def test_rescore_takes_yaml_and_added_classes_and_refuses_bad_sets(client):
    prompts = _edited(client)
    prompts["classes"].append({"id": "AU43", "name": "eyes closed", "descriptions": ["the eyelids are shut"]})
    summary = client.post("/api/rescore", content=yaml.safe_dump(prompts),
                          headers={"content-type": "application/yaml"}).json()
    assert summary["classes"][-1]["id"] == "AU43"
    assert client.get("/api/rank", params={"class": "AU43", "k": 3}).json()["hits"]
    broken = client.post("/api/rescore", content="dataset: x\ntask: au\ntemplates: [\n",
                         headers={"content-type": "text/yaml"})
    assert broken.status_code == 400 and "YAML syntax error" in broken.json()["error"]
    fer = client.post("/api/rescore", json={"prompts": yaml.safe_load(
        (Path(__file__).parents[1] / "prompts" / "rafdb.yaml").read_text())})
    assert fer.status_code == 400 and "au labels" in fer.json()["error"]
    unknown = client.get("/api/rank", params={"class": "AU99"})
    assert unknown.status_code == 400 and "AU12" in unknown.json()["hint"]


def test_class_combination_filter(client, built, explorer):
    doc = client.get("/api/search", params={"q": TEXT, "k": 50, "classes": "AU6,AU12", "by": "labels"}).json()
    lab = explorer.store.labels()
    cls = explorer.store.classes
    want = {r for r in range(len(built["ids"]))
            if all(lab["aus"][r, cls.index(c)] and lab["au_mask"][r, cls.index(c)] for c in ("AU6", "AU12"))}
    assert doc["matching"] == len(want) > 0 and {h["row"] for h in doc["hits"]} == want
    assert all({"AU6", "AU12"} <= set(h["labels"].split()) for h in doc["hits"])
    pred = client.get("/api/rank", params={"class": "AU6", "k": 50, "classes": "AU6+AU12"}).json()
    sc = explorer.scores
    both = sc.present[:, sc.column("AU6")] & sc.present[:, sc.column("AU12")]
    assert pred["matching"] == int(both.sum()) > 0 and {h["row"] for h in pred["hits"]} == set(np.nonzero(both)[0])
    for h in pred["hits"]:
        probs = client.get(f"/api/hit/{h['row']}").json()["classes"]
        assert probs["AU6"] >= 0.5 and probs["AU12"] >= 0.5
    bad = client.get("/api/search", params={"q": TEXT, "classes": "AU6", "by": "mood"})
    assert bad.status_code == 400


def test_expression_filters_take_any_of_the_classes_and_json_may_carry_yaml():
    from clefctl.prompts import load_prompts
    from clefctl.serve.classes import ClassScores, class_mask, parse_edited

    labels = {"label": np.array([0, 1, 2, -1, 1], np.int32)}
    classes = ["anger", "happiness", "surprise"]
    mask = class_mask(["happiness", "surprise"], "labels", None, labels, classes, "fer")
    assert mask.tolist() == [False, True, True, False, True]
    ps = load_prompts("synthetic-fer")
    probs = np.eye(len(ps.class_ids), dtype=np.float32)[[0, 3, 3]]
    scores = ClassScores(ps, "names", probs, probs > 0.5, {}, 0.0)
    picked = ps.class_ids[3]
    assert class_mask([picked], "predicted", scores, None, [], "").tolist() == [False, True, True]
    with pytest.raises(ClefError, match="no class 'AU12'"):
        class_mask(["AU12"], "predicted", scores, None, [], "")
    parsed, mode = parse_edited(json.dumps({"prompts": ps.to_yaml(), "mode": "ensemble"}).encode(),
                                "application/json")
    assert parsed.hash == ps.hash and mode == "ensemble"
    with pytest.raises(ClefError, match="invalid JSON"):
        parse_edited(b"{not json", "application/json")


# ----------------------------------------------------------------------------------------------
# safety
# ----------------------------------------------------------------------------------------------


def _raw_get(app, path: str) -> tuple[int, bytes]:
    """One request with a raw, un-normalised path (clients fold '..' away before sending)."""
    out = {}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        elif message["type"] == "http.response.body":
            out["body"] = out.get("body", b"") + message.get("body", b"")

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1:8765")], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8765)}
    asyncio.run(app(scope, receive, send))
    return out["status"], out.get("body", b"")


def test_media_by_row_only_and_never_outside_the_sources(client, explorer, built):
    link = built["link_row"]
    refused = client.get(f"/media/{link}")
    assert refused.status_code == 403 and "outside the store's own source folders" in refused.json()["error"]
    assert client.get(f"/media/{link}/source").status_code == 403
    for path in ("/media/..%2F..%2Fetc%2Fpasswd", "/media/%2e%2e/%2e%2e/etc/passwd", "/media/etc/passwd"):
        r = client.get(path)
        assert r.status_code == 403 and "by row number only" in r.json()["error"], path
    app = create_app(explorer)
    for path in ("/media/../../etc/passwd", f"/media/{link}/../../../etc/passwd"):
        status, body = _raw_get(app, path)
        assert status == 403 and b"root:" not in body, path
    assert client.get("/media/0", params={"path": "/etc/passwd"}).headers["content-type"] == "image/jpeg"
    src = client.get("/media/0/source")
    assert src.status_code == 200 and src.content == (built["images"] / "lfw_00.png").read_bytes()
    part = client.get("/media/0/source", headers={"range": "bytes=0-9"})
    assert part.status_code == 206 and len(part.content) == 10


def test_source_guard_refuses_dotdot_relative_and_links_out(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.png").write_bytes(b"x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "b.png").write_bytes(b"y")
    os.symlink(tmp_path / "other" / "b.png", tmp_path / "data" / "b.png")
    guard = SourceGuard([str(tmp_path / "data" / "a.png"), str(tmp_path / "data" / "b.png")])
    assert guard.check(str(tmp_path / "data" / "a.png"), 0) == os.path.realpath(tmp_path / "data" / "a.png")
    for bad in (str(tmp_path / "data" / ".." / "other" / "b.png"), "data/a.png", str(tmp_path / "data" / "b.png")):
        with pytest.raises(MediaError) as err:
            guard.check(bad, 1)
        assert err.value.status == 403, bad
    with pytest.raises(MediaError) as err:
        guard.check(str(tmp_path / "data" / "gone.png"), 2)
    assert err.value.status == 404


def _clip(path: Path) -> None:
    """12 frames at 10 fps: frame 7 (1-based) red, the others blue."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(12):
        frame = np.zeros((48, 64, 3), np.uint8)
        frame[:, :, 2 if i == 6 else 0] = 220                # BGR
        writer.write(frame)
    writer.release()


def test_video_rows_show_their_moment_and_serve_their_frame_and_video(tmp_path, built):
    from clefctl.store import EmbeddingStore
    from clefctl.store.layout import STRING_COLUMNS, Columns

    video = tmp_path / "clip.avi"
    _clip(video)
    model = built["model"]
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((2, model.embed_dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    strings = {c: [""] * 2 for c in STRING_COLUMNS}
    strings.update(id=["clip/f7/face0", "clip/f3/face1"], path=[str(video)] * 2)
    cols = Columns(embedding=emb, strings=strings, frame=np.array([7, 3]), label=np.full(2, -1, np.int32),
                   box=np.array([[8, 8, 32, 24], [0, 0, 64, 48]], np.int32),
                   timestamp=np.array([0.6, 0.2]), face_id=np.array([0, 1], np.int32))
    with EmbeddingStore.create(tmp_path / "video.h5", model.fingerprint, model.embed_dim, "clip") as st:
        st.append_columns(cols)
    ex = Explorer.open(tmp_path / "video.h5", model)
    try:
        with TestClient(create_app(ex), base_url=BASE) as c:
            assert c.get("/api/info").json()["video_rows"] == 2
            hit = c.get("/api/hit/0").json()
            assert (hit["frame"], hit["timestamp"], hit["face_id"]) == (7, 0.6, 0)
            assert hit["source"] == str(video) and hit["video"] == "/media/0/source"
            hits = c.get("/api/search", params={"q": "a face", "k": 2}).json()["hits"]
            assert {(h["timestamp"], h["face_id"]) for h in hits} == {(0.6, 0), (0.2, 1)}
            red = np.asarray(Image.open(io.BytesIO(c.get("/media/0", params={"size": 64}).content)))
            blue = np.asarray(Image.open(io.BytesIO(c.get("/media/1", params={"size": 64}).content)))
            assert red[24:40, 24:40, 0].mean() > 150 > red[24:40, 24:40, 2].mean()
            assert blue[24:40, 24:40, 2].mean() > 150 > blue[24:40, 24:40, 0].mean()
            part = c.get("/media/0/source", headers={"range": "bytes=0-99"})
            assert part.status_code == 206 and part.content == video.read_bytes()[:100]
            assert part.headers["content-type"].startswith("video/")
            # no labels in this store: the model's own prompt set is shown, a filter by labels is refused
            assert c.get("/api/prompts").json()["prompt_classes"]["prompts"]["dataset"] == "synthetic-au"
            assert len(c.get("/api/rank", params={"class": "AU12"}).json()["hits"]) == 2
            unlabelled = c.get("/api/search", params={"q": "a face", "classes": "AU12", "by": "labels"})
            assert unlabelled.status_code == 400 and "no labels" in unlabelled.json()["error"]
    finally:
        ex.close()
    guard = SourceGuard([str(video)])
    with pytest.raises(MediaError) as err:
        face_image(RowMedia(0, str(video), frame=500), guard)
    assert err.value.status == 404 and "no frame 500" in str(err.value)


def test_host_guard_cross_site_posts_and_json_errors(explorer):
    app = create_app(explorer)
    with TestClient(app, base_url=BASE, raise_server_exceptions=False) as c:
        rebound = c.get("/api/info", headers={"host": "attacker.example:8765"})
        assert rebound.status_code == 403 and "127.0.0.1 or localhost" in rebound.json()["error"]
        assert c.get("/api/info", headers={"host": "localhost:8765"}).status_code == 200
        cross = c.post("/api/rescore", content="x", headers={"origin": "https://attacker.example"})
        assert cross.status_code == 403 and "cross-site" in cross.json()["error"]
        missing = c.get("/api/nothing-here")
        assert missing.status_code == 404 and missing.json()["status"] == 404
        page = c.get("/")
        assert page.status_code == 200 and "content-security-policy" in page.headers and "app.js" in page.text
        original = explorer.info
        explorer.info = lambda: 1 / 0
        try:
            crash = c.get("/api/info")
        finally:
            explorer.info = original
        assert crash.status_code == 500 and crash.headers["content-type"] == "application/json"
        assert "ZeroDivisionError" in crash.json()["error"] and "Traceback" not in crash.text


def test_writes_need_a_declared_type_and_the_same_origin(client, built):
    """Issue 22, item 8: a page on another site (a sandboxed frame sends Origin: null) cannot post a
    prompt set as text/plain, a form or with no type; the page's own JSON post still works."""
    yaml_text = yaml.safe_dump(_edited(client))
    for headers in ({"origin": "null", "content-type": "text/plain"},
                    {"origin": "null", "content-type": "application/json"},
                    {"content-type": "text/plain"},
                    {"content-type": "application/x-www-form-urlencoded"},
                    {},
                    {"sec-fetch-site": "cross-site", "content-type": "application/yaml"},
                    {"origin": "http://127.0.0.1:9999", "content-type": "application/yaml"}):
        r = client.post("/api/rescore", content=yaml_text, headers=headers)
        assert r.status_code in (403, 415), (headers, r.status_code, r.text)
        assert r.headers["content-type"] == "application/json" and r.json()["status"] == r.status_code
    image = (built["images"] / "lfw_05.png").read_bytes()
    assert client.post("/api/search/image", content=image, headers={"content-type": "text/plain"}).status_code == 415
    assert client.post("/api/search/image", content=image,
                       headers={"content-type": "application/json"}).status_code == 415
    ok = client.post("/api/rescore", content=yaml_text, headers={
        "origin": BASE, "sec-fetch-site": "same-origin", "content-type": "application/yaml"})
    assert ok.status_code == 200, ok.text


def test_hostile_bodies_and_parameters_are_400_without_server_paths(client, built):
    deep = client.post("/api/rescore", content="[" * 100_000 + "]" * 100_000,
                       headers={"content-type": "application/json"})
    assert deep.status_code == 400 and "nested too deeply" in deep.json()["error"]
    digits = client.post("/api/rescore", content='{"prompts": {"dataset": ' + "9" * 5000 + "}}",
                         headers={"content-type": "application/json"})
    assert digits.status_code == 400 and digits.json()["status"] == 400
    by = client.get("/api/search", params={"q": "a face", "by": "evil"})
    assert by.status_code == 400 and "predicted" in by.json()["hint"] and "labels" in by.json()["hint"]
    big = client.post("/api/rescore", content=b"x" * ((1 << 20) + 1), headers={"content-type": "application/yaml"})
    assert big.status_code == 413 and "--max-upload-mb" not in big.text and "1 MB" in big.json()["hint"]
    root = str(Path(built["store"]).parent)
    linked = built["ids"].index("linked")  # a link out of the store's folders: refused, naming the file
    for r in (client.get("/api/hit/999999"), client.get("/media/999999"), client.get(f"/media/{linked}/source"),
              client.post("/api/rescore", content="dataset: x\ntask: au\ntemplates: [\n",
                          headers={"content-type": "application/yaml"})):
        assert r.status_code >= 400 and root not in r.text and "/tmp/" not in r.text, r.text
    from clefctl.serve.app import _no_server_paths

    assert _no_server_paths(f"cannot read {root}/store.h5: gone (see /api/info)") == \
        "cannot read store.h5: gone (see /api/info)"


def test_token_is_required_when_set(explorer):
    app = create_app(explorer, token="s3cret-token", loopback_only=False)
    with TestClient(app, base_url="http://192.0.2.7:8765") as c:
        denied = c.get("/api/info")
        assert denied.status_code == 401 and "token" in denied.json()["error"]
        assert c.get("/api/info", headers={"authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/api/info", headers={"authorization": "Bearer s3cret-token"}).status_code == 200
        assert c.get("/api/info", headers={"x-clef-token": "s3cret-token"}).status_code == 200
        page = c.get("/", params={"token": "s3cret-token"})
        assert page.status_code == 200 and "clef_token=s3cret-token" in page.headers["set-cookie"]
        assert c.get("/media/0").status_code == 200            # the page's cookie now carries the token


# ----------------------------------------------------------------------------------------------
# the command
# ----------------------------------------------------------------------------------------------


def _serve(built, *args):
    cmd = [sys.executable, "-m", "clefctl.cli", "serve", "--store", str(built["store"]), "--weights",
           str(built["weights"]), "--port", "0", "--json", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))


def _get(url: str, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_non_loopback_bind_prints_a_token_and_requires_it(built):
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and not is_loopback("0.0.0.0")
    proc = _serve(built, "--host", "0.0.0.0")
    try:
        record = json.loads(proc.stdout.readline())
        token, port = record["token"], record["port"]
        assert token and len(token) >= 24 and f"?token={token}" in record["url"]
        status, doc = _get(f"http://127.0.0.1:{port}/api/info")
        assert status == 401 and "token" in doc["error"]
        status, doc = _get(f"http://127.0.0.1:{port}/api/info", {"Authorization": f"Bearer {token}"})
        assert status == 200 and doc["rows"] == len(built["ids"])
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_command_errors_are_one_line(built, tmp_path):
    from clefctl.serve import bind_socket

    missing = subprocess.run([sys.executable, "-m", "clefctl.cli", "serve", "--store", str(tmp_path / "none.h5"),
                              "--weights", "random", "--arch", "clef-tiny"], capture_output=True, text=True,
                             timeout=120)
    assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0
    assert "embedding store not found" in missing.stderr
    busy = bind_socket("127.0.0.1", 0)
    try:
        with pytest.raises(ClefError, match="cannot listen on 127.0.0.1"):
            bind_socket("127.0.0.1", busy.getsockname()[1])
    finally:
        busy.close()
    helped = subprocess.run([sys.executable, "-m", "clefctl.cli", "serve", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "Example: clefctl serve" in helped.stdout
