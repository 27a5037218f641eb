"""Relevancy maps (Chefer et al. 2021) on open_clip towers, the Fig. 4 figure, the pointing check
and the ``clefctl explain`` command."""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from clefctl import explain as ex
from clefctl.explain import pointing as ex_pointing
from clefctl.commands.explain import explain as explain_cmd
from clefctl.errors import ClefError
from clefctl.model import create

CLIP_MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
CLIP_STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)




pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def tiny():
    return create("clef-tiny")


def _face(tmp_path: Path, size: int = 64) -> Path:
    from clefctl.data import synthetic

    ident = synthetic.make_identity("F001", np.random.default_rng(3))
    img, _ = synthetic.render_face(ident, {"AU12": 0.9, "AU6": 0.8}, size=size, seed=1)
    path = tmp_path / "face.png"
    img.save(path)
    return path


# ----------------------------------------------------------------------------------------------
# relevance maps
# ----------------------------------------------------------------------------------------------


def test_maps_have_the_right_shapes_are_nonnegative_and_depend_on_the_text(tiny, tmp_path):
    face = Image.open(_face(tmp_path)).convert("RGB")
    a = ex.relevancy(tiny, face, "a bright square")
    b = ex.relevancy(tiny, face, "a photo of a person with lip corner puller.")
    for rel in (a, b):
        assert rel.image_map.shape == (64, 64) and rel.image_map.dtype == np.float32
        assert rel.image_map.min() == 0.0 and rel.image_map.max() == pytest.approx(1.0)
        assert rel.patch_map.shape == tuple(tiny.clip.visual.grid_size) == (4, 4) and (rel.patch_map >= 0).all()
        assert len(rel.token_scores) == len(rel.tokens)
        assert (rel.token_scores >= 0).all() and rel.token_scores.max() == pytest.approx(1.0)
    assert a.tokens == ["a", "bright", "square"]
    assert b.tokens[-5:] == ["lip", "corner", "pu", "ller", "."]
    assert b.word_end[-3:] == [False, True, True]
    assert not np.allclose(a.patch_map, b.patch_map)
    # the target is exactly the model's cosine similarity
    x = ex.model_input(tiny, face)
    cos = float(tiny.encode_images(x) @ tiny.encode_texts([b.text]).T)
    assert b.similarity == pytest.approx(cos, abs=1e-5)
    with pytest.raises(ClefError, match="model takes 64x64"):
        ex.relevancy(tiny, torch.zeros(3, 96, 96), "a face")


def test_normal_forward_is_bit_identical_after_explain_and_nothing_is_left_behind(tiny):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    texts = ["a photo of a person with jaw drop.", "no square"]
    img0, txt0 = tiny.encode_images(x), tiny.encode_texts(texts)
    tiny.clip.train()
    try:
        ex.relevancy_many(tiny, x[0], texts)
        assert tiny.clip.training  # mode restored
    finally:
        tiny.clip.eval()
    assert torch.equal(img0, tiny.encode_images(x)) and torch.equal(txt0, tiny.encode_texts(texts))
    assert all(p.grad is None for p in tiny.clip.parameters())
    assert not any("forward" in m.__dict__ for m in tiny.clip.modules())


def test_batched_pairs_equal_single_pairs(tiny):
    torch.manual_seed(1)
    x = torch.randn(3, 3, 64, 64)
    texts = ["a bright square", "no square", "a photo of a person with brow lowerer."]
    batched = ex.relevancy_pairs(tiny, x, texts, batch_size=3)
    for i, rel in enumerate(batched):
        single = ex.relevancy(tiny, x[i], texts[i])
        np.testing.assert_allclose(rel.patch_map, single.patch_map, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(rel.token_scores, single.token_scores, rtol=1e-4, atol=1e-6)


def test_gae_rule_is_chefer_eq_for_self_attention():
    gen = torch.Generator().manual_seed(0)
    attns = [torch.rand(2, 3, 4, 4, generator=gen).softmax(-1) for _ in range(2)]
    grads = [torch.randn(2, 3, 4, 4, generator=gen) for _ in range(2)]
    got = ex.gae_relevance(attns, grads)
    for b in range(2):
        r = np.eye(4)
        for a, g in zip(attns, grads):
            cam = np.maximum((g[b] * a[b]).numpy(), 0).mean(0)
            r = r + cam @ r
        np.testing.assert_allclose(got[b].numpy(), r, rtol=1e-5)
    only_last = ex.gae_relevance(attns, grads, start_layer=1)
    cam = (grads[1] * attns[1]).clamp(min=0).mean(1)
    torch.testing.assert_close(only_last, torch.eye(4) + cam)


def test_open_clip_custom_attention_blocks_are_explained_too():
    import open_clip
    from open_clip.model import CLIP
    from open_clip.transformer import Attention

    torch.manual_seed(0)
    clip = CLIP(32, {"image_size": 32, "layers": 2, "width": 64, "head_width": 16, "patch_size": 8,
                     "qk_norm": True, "scale_attn_inner": True},
                {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2,
                 "scale_heads": True}).eval()
    assert isinstance(clip.visual.transformer.resblocks[0].attn, Attention)
    tok = open_clip.get_tokenizer("ViT-B-32", context_length=16)
    model = types.SimpleNamespace(clip=clip, tokenizer=tok, device=torch.device("cpu"), image_size=32)
    x = torch.randn(3, 32, 32)
    rel = ex.relevancy(model, x, "a bright square")
    with torch.no_grad():
        cos = F.cosine_similarity(clip.encode_image(x[None]), clip.encode_text(tok(["a bright square"])))
    assert rel.similarity == pytest.approx(float(cos), abs=1e-5)
    assert rel.patch_map.shape == (4, 4) and rel.tokens == ["a", "bright", "square"]


def _squares(n: int, gen: torch.Generator, p: float = 0.5):
    x = torch.rand(n, 3, 64, 64, generator=gen) * 0.5
    y = (torch.rand(n, generator=gen) < p).long()
    pos = torch.randint(0, 20, (n, 2), generator=gen)
    for i in range(n):
        if y[i]:
            r, c = pos[i].tolist()
            x[i, :, r:r + 12, c:c + 12] = 1.0
    return (x - CLIP_MEAN) / CLIP_STD, y, pos


def test_trained_tiny_model_points_at_a_planted_square():
    # 100 steps of a linear objective on the image tower (text features fixed): "a bright square"
    # for images with a bright 12 px square somewhere in the top-left quadrant, "no square" else.
    model = create("clef-tiny")
    clip = model.clip.train()
    opt = torch.optim.AdamW([p for n, p in clip.named_parameters() if n.startswith("visual.")], lr=1e-3,
                            weight_decay=0.0)
    with torch.no_grad():
        text = F.normalize(clip.encode_text(model.tokenizer(["no square", "a bright square"])), dim=-1)
    gen = torch.Generator().manual_seed(0)
    for _ in range(100):  # 60 steps left the negatives' maps biased to the top left too
        x, y, _ = _squares(16, gen)
        loss = F.cross_entropy(10 * F.normalize(clip.encode_image(x), dim=-1) @ text.T, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    clip.eval()
    assert loss.item() < 0.05
    x, y, pos = _squares(32, torch.Generator().manual_seed(1))
    pos_x, neg_x, squares = x[y == 1][:14], x[y == 0][:14], pos[y == 1][:14]
    rels = ex.relevancy_pairs(model, torch.cat([pos_x, neg_x]), ["a bright square"] * (len(pos_x) + len(neg_x)))
    rel_pos, rel_neg = rels[:len(pos_x)], rels[len(pos_x):]

    def top_left(rel):
        r, c = np.unravel_index(int(np.argmax(rel.image_map)), rel.image_map.shape)
        return r < 32 and c < 32

    k = 64 // model.clip.visual.grid_size[0]  # patch side in pixels

    def on_square(rel, p):
        r, c = rel.hottest_patch()
        return not (r * k + k <= p[0] or r * k >= p[0] + 12 or c * k + k <= p[1] or c * k >= p[1] + 12)

    pos_rate = np.mean([top_left(r) for r in rel_pos])
    neg_rate = np.mean([top_left(r) for r in rel_neg])
    assert pos_rate >= 0.8, pos_rate
    assert np.mean([on_square(r, p.tolist()) for r, p in zip(rel_pos, squares)]) >= 0.75
    assert pos_rate - neg_rate >= 0.3, (pos_rate, neg_rate)  # it follows the square, not a position bias


# ----------------------------------------------------------------------------------------------
# geometry and pointing
# ----------------------------------------------------------------------------------------------


def test_eval_geometry_matches_torchvision_resize_and_center_crop(tiny):
    from clefctl.data.transforms import eval_transform

    # a wide 128 x 64 image: resized to 128 x 64 -> 128 wide, crop 64 from x = 32
    sx, sy, left, top = ex.eval_geometry(128, 64, 64)
    assert (sx, sy, left, top) == (1.0, 1.0, 32, 0)
    arr = np.zeros((64, 128, 3), np.uint8)
    arr[10:20, 40:50] = 255  # a white block at x 40-50, y 10-20 -> input x 8-18
    img = Image.fromarray(arr)
    x = eval_transform(64, None, None)(img)
    bright = (x[0] > 0).nonzero()
    mask = ex.region_mask([[40, 10, 50, 20]], 128, 64, 64)
    assert mask.sum() == 100
    ys, xs = np.nonzero(mask)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (10, 19, 8, 17)
    assert bright[:, 0].min() == 10 and bright[:, 1].min() == 8
    # a 128 px square image on a 64 px model halves every box
    full = ex.region_mask([[0, 0, 64, 64]], 128, 128, 64)
    assert full[:32, :32].all() and full.sum() == 32 * 32


def test_pointing_counts_hits_where_the_hottest_patch_lies(tiny, synth, monkeypatch):
    from clefctl.data import synthetic

    meta = synthetic.read_sidecar(synth["au"])
    regions = synthetic.au_regions()
    gh, gw = tiny.clip.visual.grid_size
    k = 64 // gh  # patch side in pixels
    hot = (gh // 2, 0)  # left edge at mouth height: the mouth corner reaches into it on some faces

    def fake_pairs(model, pixels, texts, **kw):
        pm = np.zeros((gh, gw), np.float32)
        pm[hot] = 1.0
        return [ex.Relevance(np.ones((64, 64), np.float32), pm, ["x"], np.ones(1, np.float32), 0.0, t)
                for t in texts]

    monkeypatch.setattr(ex_pointing, "relevancy_pairs", fake_pairs)
    res = ex.pointing_accuracy(tiny, synth["au"], aus=("AU12", "AU26"), n_images=100)
    # the hot patch's pixel square (64 px images, 64 px model): [x0, x1) x [y0, y1)
    x0, y0 = hot[1] * k, hot[0] * k

    def overlaps(b):  # pixel (x, y) is in a box when b0 <= x + 0.5 < b2 (region_mask's convention)
        return any(b[0] <= x + 0.5 < b[2] and b[1] <= y + 0.5 < b[3] for x in range(x0, x0 + k)
                   for y in range(y0, y0 + k))

    some = []
    for au in ("AU12", "AU26"):
        active = [e for e in meta["images"] if e["au_intensity"][au] >= 0.5]
        expect = [any(overlaps(b) for part in regions[au] for b in e["regions"][part]) for e in active]
        assert res[au]["n"] == len(active) > 0
        assert res[au]["hits"] == sum(expect)
        some.append(0 < sum(expect) < len(active))
        assert 0 < res[au]["chance"] < res[au]["chance_patches"] < 1
        assert res[au]["mass"] == pytest.approx(res[au]["chance"])  # a flat image map: mass = area
    assert any(some)  # the hot patch hits the region on some faces, not all: the test can tell
    assert res["AU12"]["text"] == "a photo of a person with lip corner puller."


def test_pointing_runs_on_a_real_model_and_validates_input(tiny, synth, tmp_path):
    res = ex.pointing_accuracy(tiny, synth["au"], aus=("AU12", "AU4"), n_images=3, seed=1)
    assert set(res) == {"AU12", "AU4"}
    for r in res.values():
        assert 0 < r["n"] <= 3 and 0.0 <= r["hit_rate"] <= 1.0 and r["hits"] <= r["n"]
    summary = ex.pointing_summary(res)
    assert summary["n"] == sum(r["n"] for r in res.values())
    with pytest.raises(ClefError, match="AU99"):
        ex.pointing_accuracy(tiny, synth["au"], aus=("AU99",))
    with pytest.raises(ClefError, match="synthetic-au"):
        ex.pointing_accuracy(tiny, synth["fer"], aus=("AU12",))
    with pytest.raises(ClefError, match="synthetic.json"):
        ex.pointing_accuracy(tiny, tmp_path, aus=("AU12",))


# ----------------------------------------------------------------------------------------------
# the command
# ----------------------------------------------------------------------------------------------


def _run(args, ok=True):
    result = CliRunner().invoke(explain_cmd, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, (result.output, result.exception)
    return result


def _png_ok(path: Path, min_side: int = 200) -> None:
    with Image.open(path) as im:
        assert im.format == "PNG" and min(im.size) >= min_side


def test_cli_writes_png_for_a_synthetic_face_with_random_fallback(tmp_path):
    face = _face(tmp_path)
    out = tmp_path / "fig" / "face.png"
    res = _run([face, "--text", "a photo of a person with lip corner puller.", "--text", "no square",
                "--workspace", tmp_path / "empty_ws", "--out", out, "--json"])
    assert "no fine-tuned run" in res.stderr
    doc = json.loads(res.stdout)
    assert doc["png"] == str(out) and doc["model"] == "random clef-tiny" and not doc["cropped"]
    assert [p["text"] for p in doc["panels"]] == ["a photo of a person with lip corner puller.", "no square"]
    assert doc["panels"][0]["top_tokens"][0]["score"] == 1.0
    _png_ok(out)
    assert not list(out.parent.glob(".*.tmp"))  # written atomically, no temporary left


def test_cli_crops_the_astronaut_photo_and_renders_class_panels(tmp_path):
    from skimage import data

    photo = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(photo)
    out = tmp_path / "astronaut_explain.png"
    res = _run([photo, "--prompts", "synthetic-fer", "--classes", "--max-descriptions", "1",
                "--checkpoint", "random", "--out", out, "--json"])
    doc = json.loads(res.stdout)
    assert doc["cropped"] and doc["box"] is not None
    x, y, w, h = doc["box"]
    assert 120 < x + w / 2 < 320 and 40 < y + h / 2 < 220  # her face, in the upper middle
    titles = [p["title"] for p in doc["panels"]]
    assert len(titles) == 14 and titles[0] == "surprise" and titles[1] == "surprise description 1"
    _png_ok(out, 600)
    plain = _run([photo, "--no-crop", "--checkpoint", "random", "--text", "a smiling astronaut",
                  "--out", tmp_path / "whole.png"])
    assert "wrote" in plain.stdout and (tmp_path / "whole.png").is_file()


def test_cli_uses_the_latest_finetune_run_and_its_prompts(tmp_path):
    from clefctl.model import save_checkpoint
    from clefctl.prompts import load_prompts
    from clefctl.workspace import Workspace

    ws = Workspace(tmp_path / "ws")
    run = ws.new_run("finetune", "synthetic-au")
    prompts = load_prompts("synthetic-au").subset(["AU12", "AU4"])
    prompts.save(run.path / "prompts.yaml")
    save_checkpoint(run.model_path, create("clef-tiny", seed=5),
                    {"stage": "finetune", "dataset": "synthetic-au", "task": "au", "classes": ["AU12", "AU4"]})
    ws.set_latest(run)
    res = _run([_face(tmp_path), "--classes", "--max-descriptions", "1", "--workspace", ws.root,
                "--out", tmp_path / "ft.png", "--json"])
    doc = json.loads(res.stdout)
    assert doc["model"] == f"finetune run {run.name}" and doc["fingerprint"].startswith("clef-tiny@sha256:")
    assert [p["title"] for p in doc["panels"]] == ["AU12: lip corner puller", "AU12 description 1",
                                                  "AU4: brow lowerer", "AU4 description 1"]
    # with neither --text nor --classes: one panel per class name
    res = _run([_face(tmp_path), "--workspace", ws.root, "--out", tmp_path / "names.png", "--json"])
    assert [p["title"] for p in json.loads(res.stdout)["panels"]] == ["AU12: lip corner puller", "AU4: brow lowerer"]


def test_cli_pointing_table_and_json(synth, tmp_path):
    args = ["--pointing", "--dataset-root", synth["au"], "--n", "2", "--aus", "AU12,AU9",
            "--checkpoint", "random"]
    doc = json.loads(_run(args + ["--json"]).stdout)
    assert set(doc["aus"]) == {"AU12", "AU9"} and doc["subjects"] == "all subjects"
    assert all(0 < v["n"] <= 2 for v in doc["aus"].values())
    table = _run(args + ["--no-progress"]).stdout
    assert "pointing accuracy" in table and "AU12" in table and "chance" in table


def test_cli_user_errors(tmp_path):
    res = _run(["--checkpoint", "random"], ok=False)
    assert isinstance(res.exception, ClefError) and "IMAGE" in str(res.exception)
    res = _run([tmp_path / "missing.jpg", "--checkpoint", "random", "--text", "x"], ok=False)
    assert isinstance(res.exception, ClefError) and "not found" in str(res.exception)
    res = _run([_face(tmp_path), "--checkpoint", "random", "--classes"], ok=False)
    assert isinstance(res.exception, ClefError) and "prompt set" in str(res.exception)
    res = _run([_face(tmp_path), "--checkpoint", tmp_path / "nope.pt", "--text", "x"], ok=False)
    assert isinstance(res.exception, ClefError)


def test_cli_explains_a_stored_image_by_id(tiny, synth, tmp_path):
    from clefctl.data import load_dataset
    from clefctl.embed import embed_into_store

    bundle = load_dataset("rafdb", root=synth["fer"])
    samples = bundle.samples[:4]
    store = tmp_path / "fer.h5"
    embed_into_store(tiny, samples, store, progress=False, image_set="synthetic-fer", task="fer",
                     classes=bundle.classes, num_workers=0)
    res = _run([samples[2].id, "--store", store, "--checkpoint", "random", "--text", "a happy face",
                "--out", tmp_path / "stored.png", "--json"])
    doc = json.loads(res.stdout)
    assert Path(doc["image"]).resolve() == Path(samples[2].path).resolve()
    _png_ok(tmp_path / "stored.png")
    res = _run(["no-such-id", "--store", store, "--checkpoint", "random", "--text", "x"], ok=False)
    assert isinstance(res.exception, ClefError) and "no-such-id" in str(res.exception)


def test_render_wraps_a_long_title_instead_of_cutting_it(tmp_path):
    """A long image path in the title is wrapped to the figure's width: the PNG grows taller."""
    face = Image.new("RGB", (64, 64), (200, 150, 120))
    rel = ex.Relevance(np.ones((64, 64), np.float32), np.ones((4, 4), np.float32), ["jaw", "drop"],
                       np.ones(2, np.float32), 0.1, "jaw drop")
    heights = {}
    for key, title in (("short", "face.jpg - run r1"), ("long", "/data/" + "very_long_folder_name/" * 8 + "1.jpg - run r1")):
        out = ex.render(face, [("jaw drop", rel)], tmp_path / f"{key}.png", title=title)
        with Image.open(out) as im:
            heights[key] = im.height
    assert heights["long"] > heights["short"]


# ----------------------------------------------------------------------------------------------
# the library entry point (no CLI)
# ----------------------------------------------------------------------------------------------


def test_run_explain_writes_the_figure_and_returns_what_the_command_prints(tmp_path):
    warnings = []
    out = tmp_path / "lib.png"
    res = ex.run_explain(ex.ExplainOptions(_face(tmp_path), texts=["a photo of a person with jaw drop."],
                                           workspace=str(tmp_path / "empty_ws"), out=str(out),
                                           warn=warnings.append))
    assert res.png == out and not res.pointing and res.model == "random clef-tiny"
    assert len(warnings) == 1 and "no fine-tuned run" in warnings[0] and res.warnings == warnings
    assert res.face.face == "not searched" and not res.face.cropped
    [(title, rel)] = res.panels
    assert title == rel.text == "a photo of a person with jaw drop." and isinstance(rel, ex.Relevance)
    doc = res.to_dict()
    assert doc["png"] == str(out) and doc["fingerprint"] == res.fingerprint and doc["box"] is None
    assert doc["panels"][0]["title"] == title and json.dumps(doc)
    _png_ok(out)
    with pytest.raises(ClefError, match="--text is empty"):
        ex.run_explain(ex.ExplainOptions(_face(tmp_path), texts=[" "], checkpoint="random"))
    with pytest.raises(ClefError, match="IMAGE"):
        ex.run_explain(ex.ExplainOptions(checkpoint="random"))


def test_run_explain_pointing_matches_the_json_of_the_command(synth, tmp_path):
    opts = ex.ExplainOptions(pointing=True, dataset_root=str(synth["au"]), n_images=2, aus=("AU12", "AU9"),
                             checkpoint="random", progress=False)
    res = ex.run_explain(opts)
    assert res.pointing and res.png is None and res.data == Path(synth["au"]) and res.subjects == "all subjects"
    assert set(res.aus) == {"AU12", "AU9"} and res.summary["n"] == sum(r["n"] for r in res.aus.values())
    cli = json.loads(_run(["--pointing", "--dataset-root", synth["au"], "--n", "2", "--aus", "AU12,AU9",
                           "--checkpoint", "random", "--json"]).stdout)
    assert res.to_dict() == cli
