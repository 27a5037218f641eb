"""Search and re-scoring: text/image queries, nearest classes, re-scoring an edited prompt YAML
without the image encoder, contact sheets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from clefctl import embed as E
from clefctl import store as S
from clefctl import search
from clefctl.data.records import Sample
from clefctl.errors import ClefError
from clefctl.model import create
from clefctl.prompts import load_prompts

pytestmark = [pytest.mark.filterwarnings("ignore:unreadable image skipped:RuntimeWarning"),
              pytest.mark.usefixtures("one_thread")]




@pytest.fixture(scope="module")
def model():
    return create("clef-tiny")


@pytest.fixture(scope="module")
def fer_store(tmp_path_factory, model):
    """A store of 36 small images labelled with synthetic-fer's classes."""
    root = tmp_path_factory.mktemp("fer")
    classes = load_prompts("synthetic-fer").class_ids
    rng = np.random.default_rng(0)
    samples = []
    for i in range(36):
        p = root / f"{i:03d}.png"
        arr = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
        arr[..., i % 3] //= 3
        Image.fromarray(arr).save(p)
        samples.append(Sample(id=f"img{i:03d}", subject=f"p{i % 4}", path=str(p), label=i % len(classes),
                              box=(2, 2, 30, 30) if i % 2 else None))
    path = root / "fer.h5"
    E.embed_into_store(model, samples, path, batch_size=12, chunk_size=12, progress=False,
                       image_set="toy-fer", task="fer", classes=classes, num_workers=0)
    return path


def no_image_encoder(model, monkeypatch):
    """Make every image-encoding entry point of ``model`` raise."""
    def boom(*a, **k):
        raise AssertionError("the image encoder was called")

    monkeypatch.setattr(model, "encode_images", boom)
    monkeypatch.setattr(model.clip, "encode_image", boom)
    monkeypatch.setattr(model.clip.visual, "forward", boom)


def edited_prompts(tmp_path):
    """A copy of prompts/synthetic-fer.yaml with 'fear' renamed and 'contempt' added."""
    data = load_prompts("synthetic-fer").to_dict()
    for c in data["classes"]:
        if c["id"] == "fear":
            c["name"] = "terror"
    data["classes"].append({"id": "contempt", "name": "contempt",
                            "descriptions": ["one lip corner is tightened and raised on one side only"]})
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_prompts(path)


def test_rescore_edited_yaml_changes_only_edited_columns(tmp_path, fer_store, model, monkeypatch):
    original = load_prompts("synthetic-fer")
    edited = edited_prompts(tmp_path)
    no_image_encoder(model, monkeypatch)
    before = search.rescore(fer_store, model, original, "names")
    after = search.rescore(fer_store, model, edited, "names")
    assert before.scores.shape == (36, 7) and after.scores.shape == (36, 8)
    assert after.class_ids == original.class_ids + ["contempt"]
    fear = original.class_ids.index("fear")
    same = [j for j in range(7) if j != fear]
    np.testing.assert_allclose(after.scores[:, same], before.scores[:, same], atol=1e-5)
    assert np.max(np.abs(after.scores[:, fear] - before.scores[:, fear])) > 1e-3   # renamed
    # the new class is scored zero-shot: cosine with the embedding of its name text
    with S.EmbeddingStore.open(fer_store) as st:
        emb = st.embeddings()
        ids = st.ids
    text = model.encode_texts(["a photo of a person with contempt."]).numpy()[0]
    np.testing.assert_allclose(after.scores[:, 7], emb @ text, atol=1e-4)
    assert after.ids == ids
    # descriptions: re-describing one class changes only that column
    d_before = search.rescore(fer_store, model, original, "descriptions")
    data = original.to_dict()
    data["classes"][0]["descriptions"] = ["the mouth is a perfect circle and the brows fly up"]
    (tmp_path / "redescribed.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    d_after = search.rescore(fer_store, model, load_prompts(tmp_path / "redescribed.yaml"), "descriptions")
    np.testing.assert_allclose(d_after.scores[:, 1:], d_before.scores[:, 1:], atol=1e-5)
    assert np.max(np.abs(d_after.scores[:, 0] - d_before.scores[:, 0])) > 1e-3
    # FER heads: softmax of logit_scale * cosine, argmax
    p = after.probabilities
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)
    assert np.array_equal(after.predictions, np.argmax(after.scores, 1))
    assert after.logit_scale == pytest.approx(float(model.logit_scale.detach()))
    frame = after.to_frame()
    assert list(frame.columns) == ["id"] + after.class_ids + ["predicted"] and len(frame) == 36
    agree = after.agreement(S.EmbeddingStore.open(fer_store))
    assert agree["labelled"] == 36 and 0.0 <= agree["accuracy"] <= 1.0


def test_rescore_uses_the_text_cache_and_template_ensembles(fer_store, model, monkeypatch):
    prompts = load_prompts("synthetic-fer")
    no_image_encoder(model, monkeypatch)
    first = search.rescore(fer_store, model, prompts, "ensemble")
    calls = []
    real = model.encode_texts

    def counting(texts, *a, **k):
        calls.append(len(texts))
        return real(texts, *a, **k)

    monkeypatch.setattr(model, "encode_texts", counting)
    second = search.rescore(fer_store, model, prompts, "ensemble")
    assert second.text_cache_hit is True and calls == []
    np.testing.assert_array_equal(first.scores, second.scores)
    # the description ensemble is the renormalised mean of normalised description embeddings
    vecs = search.class_text_embeddings(model, prompts, "descriptions")
    groups = prompts.description_groups()
    e = real(groups[2]).numpy()
    m = e.mean(0)
    np.testing.assert_allclose(vecs[2], m / np.linalg.norm(m), atol=1e-5)
    with pytest.raises(ClefError, match="re-scoring mode"):
        search.rescore(fer_store, model, prompts, "best")


def test_rescore_au_thresholds_the_sigmoid(tmp_path, model, monkeypatch):
    prompts = load_prompts("synthetic-au")
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((20, model.embed_dim)).astype(np.float32)
    path = tmp_path / "au.h5"
    aus = np.zeros(len(prompts.class_ids), np.float32)
    aus[0] = 1
    with S.EmbeddingStore.create(path, model.fingerprint, model.embed_dim, "au", task="au",
                                 classes=prompts.class_ids) as st:
        st.append(emb, [Sample(id=f"a{i}", subject="s", aus=aus) for i in range(20)])
    no_image_encoder(model, monkeypatch)
    res = search.rescore(path, model, prompts, "names", logit_scale=50.0)
    assert res.task == "au" and res.scores.shape == (20, len(prompts.class_ids))
    assert np.array_equal(res.predictions, res.probabilities > 0.5)
    assert res.logit_scale == 50.0
    assert "mean_f1" in res.agreement(S.EmbeddingStore.open(path))


def test_text_and_image_queries(tmp_path, fer_store, model):
    hits = search.query_text(fer_store, model, "a photo of a smiling face", k=5)
    assert list(hits.columns[:7]) == list(search.HIT_COLUMNS) and len(hits) == 5
    assert np.all(np.diff(hits["score"].values) <= 1e-6)
    with S.EmbeddingStore.open(fer_store) as st:
        row = 8  # no face box: the file as a whole is what was embedded
        target = st.ids[row]
        path = st.column("path", [row])[0]
        labels = st.label_texts([row])[0]
    by_id = search.query_image(fer_store, model, target, k=3)
    assert by_id["id"].iloc[0] == target and by_id["score"].iloc[0] > 0.999
    assert by_id["labels"].iloc[0] == labels
    by_file = search.query_image(fer_store, model, path, k=3)
    assert by_file["id"].iloc[0] == target and by_file["score"].iloc[0] > 0.99
    many = search.query_text(fer_store, model, ["a frown", "a grin"], k=2)
    assert len(many) == 2 and many[1].attrs["query"] == "a grin"
    with pytest.raises(ClefError, match="neither an image file nor an id"):
        search.query_image(fer_store, model, "no-such-id", k=3)
    with pytest.raises(ClefError, match="empty"):
        search.query_text(fer_store, model, "  ")
    out = search.contact_sheet_of_hits(hits, tmp_path / "sheet.png", cols=3, thumb=64)
    with Image.open(out) as im:
        assert im.size == (3 * 64, 18 + 2 * (64 + 34))
        # a tile holds a real thumbnail, not the grey "missing" fill
        tile = np.asarray(im.convert("RGB"))[18:18 + 64, 0:64]
        assert tile.std() > 10


def test_nearest_classes_finds_the_class_of_its_own_prompt(model):
    prompts = load_prompts("synthetic-fer")
    res = search.nearest_classes(model, prompts, "a photo of a person with happiness.", k=3)
    assert res["class_id"].iloc[0] == "happiness" and res["score"].iloc[0] > 0.999
    assert list(res["rank"]) == [1, 2, 3] and len(res) == 3


def test_embed_and_query_commands(tmp_path, image_folder):
    import json

    from click.testing import CliRunner

    from clefctl.commands.embed import embed
    from clefctl.commands.query import query

    image_folder(6)
    ws = str(tmp_path / "ws")
    args = ["--dataset", "folder", "--dataset-root", str(tmp_path / "imgs"), "--weights", "random",
            "--arch", "clef-tiny", "--workspace", ws, "--batch-size", "4", "--chunk-size", "4",
            "--workers", "0"]
    runner = CliRunner()
    res = runner.invoke(embed, args + ["--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["rows"] == 12 and report["complete"] and report["index"]["kind"] == "flat"
    res = runner.invoke(embed, args)                       # same model and images: nothing to do
    assert res.exit_code == 0 and "already complete" in res.output
    res = runner.invoke(query, ["a happy face", "-k", "3", "--workspace", ws, "--json",
                                "--contact-sheet", str(tmp_path / "q.png")])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert [h["rank"] for h in out["hits"]] == [1, 2, 3] and (tmp_path / "q.png").is_file()
    target = out["hits"][0]["id"]
    res = runner.invoke(query, ["--image", target, "-k", "2", "--workspace", ws, "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["hits"][0]["id"] == target
    res = runner.invoke(query, ["--workspace", ws])
    assert res.exit_code != 0 and "exactly one" in str(res.exception)


def _folder_images(root, n=6):
    rng = np.random.default_rng(3)
    for cls in ("happy", "sad"):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def test_query_without_a_store_builds_it_through_run_embed(tmp_path, monkeypatch):
    import dataclasses
    import json

    from click.testing import CliRunner

    from clefctl.commands.query import query
    from clefctl.embed import run as store_embed

    imgs = _folder_images(tmp_path / "imgs")
    ws = str(tmp_path / "ws")
    real, calls = store_embed.run_embed, []

    def spy(opts):
        calls.append(opts)
        # the bare `clefctl embed` of this workspace, pointed at a data set and a random model
        return real(dataclasses.replace(opts, dataset="folder", dataset_root=str(imgs), weights="random",
                                        arch="clef-tiny", workers=0, batch_size=4, chunk_size=4))

    monkeypatch.setattr(store_embed, "run_embed", spy)
    res = CliRunner().invoke(query, ["a happy face", "-k", "3", "--workspace", ws, "--json"])
    assert res.exit_code == 0, res.output
    assert calls == [store_embed.EmbedOptions(workspace=ws)]            # the same defaults as `clefctl embed`
    assert [h["rank"] for h in json.loads(res.stdout)["hits"]] == [1, 2, 3]   # stdout: the query's JSON only
    assert "no embedding store yet" in res.stderr and "12 images in" in res.stderr
    res = CliRunner().invoke(query, ["a sad face", "-k", "2", "--workspace", ws, "--json"])
    assert res.exit_code == 0 and len(calls) == 1                       # the store exists now: no embedding
