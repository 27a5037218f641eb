"""Model factory: every weight format round-trips to the same embeddings as its source model."""

from __future__ import annotations

import argparse

import open_clip
import pytest
import torch
from PIL import Image

from clefctl import model as M
from clefctl.errors import ClefError

TEXTS = ["a photo of a person with lip corner puller.", "a photo of a person with brow lowerer."]


def _source(quick_gelu: bool = False, seed: int = 1, arch: str = "clef-tiny"):
    M.register_configs()
    torch.manual_seed(seed)
    clip = open_clip.create_model(arch, force_quick_gelu=quick_gelu)
    M._add_stem(clip, arch)  # clefctl's small configs carry a conv stem (model.CONV_STEMS)
    clip.eval()
    with torch.no_grad():  # a non-trivial logit scale and projection, so a silent non-load would show
        clip.logit_scale.fill_(2.5)
    return clip


def _pixels(seed: int = 0, size: int = 64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, size, size, generator=g)


def _embed(clip, pixels):
    tok = open_clip.get_tokenizer("clef-tiny")
    with torch.no_grad():
        img = torch.nn.functional.normalize(clip.encode_image(pixels), dim=-1)
        txt = torch.nn.functional.normalize(clip.encode_text(tok(TEXTS)), dim=-1)
    return img, txt


def _assert_same(m: M.ClefModel, clip, atol=1e-5):
    px = _pixels()
    img, txt = _embed(clip, px)
    assert torch.allclose(m.encode_images(px), img, atol=atol)
    assert torch.allclose(m.encode_texts(TEXTS), txt, atol=atol)
    assert torch.allclose(m.logit_scale.detach(), clip.logit_scale.exp().detach())


def test_random_init_is_seeded_and_normalised():
    a = M.create("clef-tiny", seed=3)
    b = M.create("clef-tiny", seed=3)
    c = M.create("clef-tiny", seed=4)
    assert a.fingerprint == "clef-tiny@random:3"
    ea, eb, ec = (m.encode_texts(TEXTS) for m in (a, b, c))
    assert torch.equal(ea, eb) and not torch.allclose(ea, ec)
    assert ea.dtype == torch.float32 and ea.shape == (2, a.embed_dim)
    assert torch.allclose(ea.norm(dim=-1), torch.ones(2), atol=1e-5)
    img = a.encode_images(_pixels())
    assert img.shape == (4, a.embed_dim) and torch.allclose(img.norm(dim=-1), torch.ones(4), atol=1e-5)


def test_pil_images_go_through_preprocess():
    m = M.create("clef-tiny")
    ims = [Image.new("RGB", (90, 120), (i * 40, 100, 200 - i * 30)) for i in range(3)]
    direct = m.encode_images(torch.stack([m.preprocess(im) for im in ims]))
    assert torch.allclose(m.encode_images(ims, batch_size=2), direct, atol=1e-6)
    assert m.image_size == 64


def test_farl_release_file(tmp_path):
    clip = _source(quick_gelu=True)
    sd = dict(clip.state_dict())
    width = sd["visual.class_embedding"].shape[0]
    sd["visual.mask_token"] = torch.zeros(1, 1, width)
    sd["visual.lm_transformer.resblocks.0.attn.in_proj_weight"] = torch.zeros(3 * width, width)
    sd["visual.ln_lm.weight"] = torch.ones(width)
    sd["visual.lm_head.weight"] = torch.zeros(8192, width)
    path = tmp_path / "FaRL-Base-Patch16-LAIONFace20M-ep64.pth"
    torch.save({"state_dict": sd}, path)
    m = M.create("clef-tiny", weights=str(path))
    assert m.load_report.source == "farl"
    assert len(m.load_report.dropped) == 4 and m.quick_gelu
    assert not m.load_report.missing and not m.load_report.unexpected
    assert m.fingerprint.startswith("clef-tiny+quickgelu@sha256:")
    _assert_same(m, clip)


def test_openai_state_dict_fp16(tmp_path):
    clip = _source(quick_gelu=True)
    with torch.no_grad():  # OpenAI releases keep weights in fp16: compare against the rounded source
        for p in clip.parameters():
            p.copy_(p.half().float())
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in clip.state_dict().items()}
    sd.update(input_resolution=torch.tensor(64), context_length=torch.tensor(48), vocab_size=torch.tensor(49408))
    path = tmp_path / "weights.bin"
    torch.save(sd, path)
    m = M.create("clef-tiny", weights=str(path))
    assert m.load_report.source == "openai" and m.quick_gelu
    _assert_same(m, clip, atol=1e-4)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_openai_torchscript_archive(tmp_path):
    clip = _source(quick_gelu=True)
    traced = torch.jit.trace_module(clip, {"encode_image": _pixels()[:1]}, check_trace=False)
    path = tmp_path / "ViT-tiny.pt"
    torch.jit.save(traced, str(path))
    with pytest.raises(ClefError, match="TorchScript"):  # its code runs on load: like a pickle (issue 11)
        M.create("clef-tiny", weights=str(path))
    m = M.create("clef-tiny", weights=str(path), trust_checkpoint=True)
    assert m.load_report.source == "openai-torchscript"
    _assert_same(m, clip)


def test_open_clip_checkpoint_module_prefixed(tmp_path):
    clip = _source()
    sd = {f"module.{k}": v for k, v in clip.state_dict().items()}
    opt = torch.optim.AdamW(clip.parameters())
    path = tmp_path / "epoch_32.pt"
    torch.save({"epoch": 32, "name": "run", "state_dict": sd, "optimizer": opt.state_dict()}, path)
    m = M.create("clef-tiny", weights=str(path))
    assert m.load_report.source == "open_clip" and not m.quick_gelu
    _assert_same(m, clip)


def test_safetensors(tmp_path):
    from safetensors.torch import save_file

    clip = _source()
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))
    m = M.create("clef-tiny", weights=str(path))
    assert m.load_report.source == "safetensors"
    _assert_same(m, clip)


def test_clefctl_checkpoint_carries_arch_and_extras(tmp_path):
    src = M.create("clef-tiny", seed=5)
    names = src.encode_texts(TEXTS[:2])  # one name embedding per class (a mismatch is refused: test_model_strict)
    path = M.save_checkpoint(tmp_path / "ck.pt", src, {"stage": "finetune", "task": "au", "classes": ["AU12", "AU4"]},
                             extras={"name_embeddings": names})
    m = M.create(weights=str(path))  # arch left at its default: the checkpoint's wins
    assert m.arch == "clef-tiny" and m.load_report.source == "clefctl"
    assert m.meta["stage"] == "finetune" and m.meta["classes"] == ["AU12", "AU4"]
    assert torch.equal(m.load_report.extras["name_embeddings"], names)
    _assert_same(m, src.clip)
    with pytest.raises(ClefError, match="trained with architecture clef-tiny"):
        M.create("clef-small", weights=str(path))


def test_non_tensor_pickle_refused_without_trust(tmp_path):
    clip = _source()
    path = tmp_path / "with_args.pt"
    torch.save({"state_dict": clip.state_dict(), "args": argparse.Namespace(lr=1e-4)}, path)
    with pytest.raises(ClefError, match="--trust-checkpoint"):
        M.create("clef-tiny", weights=str(path))
    m = M.create("clef-tiny", weights=str(path), trust_checkpoint=True)
    _assert_same(m, clip)


def test_wrong_architecture_names_the_fitting_one(tmp_path):
    clip = _source(arch="clef-small")
    path = tmp_path / "small.pt"
    torch.save(clip.state_dict(), path)
    with pytest.raises(ClefError) as err:
        M.create("clef-tiny", weights=str(path))
    assert "clef-small" in str(err.value) and "--arch" in str(err.value)


def test_unrelated_file_refused(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3), "fc.weight": torch.zeros(10, 8)}, path)
    with pytest.raises(ClefError, match="do not fit"):
        M.create("clef-tiny", weights=str(path))
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ClefError, match="empty"):
        M.create("clef-tiny", weights=str(empty))
    with pytest.raises(ClefError, match="not found"):
        M.create("clef-tiny", weights=str(tmp_path / "missing.pt"))


def test_pretrained_tag_offline_gives_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ClefError, match="internet"):
        M.create("RN50", weights="openai", cache_dir=str(tmp_path))
    with pytest.raises(ClefError, match="neither an existing file nor an open_clip pretrained tag"):
        M.create("clef-tiny", weights="laion9000")


def test_unknown_architecture():
    with pytest.raises(ClefError, match="unknown architecture"):
        M.create("ViT-Q-99")
    assert {"clef-tiny", "clef-small", "ViT-B-16", "ViT-B-16-quickgelu"} <= set(M.list_architectures())


def test_small_configs_have_a_conv_stem_and_the_same_token_grid():
    """clef-tiny/clef-small replace the patchify conv by a conv stem (model.CONV_STEMS); the token
    grid is the plain config's, and ViT-B-16 keeps open_clip's own patch embedding."""
    for arch in ("clef-tiny", "clef-small"):
        m = M.create(arch)
        stem = m.clip.visual.conv1
        assert isinstance(stem, torch.nn.Sequential)
        assert sum(isinstance(x, torch.nn.Conv2d) and x.stride == (2, 2) for x in stem) == len(M.CONV_STEMS[arch])
        plain = open_clip.create_model(arch).visual
        x = torch.randn(2, 3, m.image_size, m.image_size)
        assert stem(x).shape == plain.conv1(x).shape
        assert M.infer_architectures(m.clip.state_dict()) == [arch]
    big = open_clip.create_model("ViT-B-16")
    M._add_stem(big, "ViT-B-16")
    assert isinstance(big.visual.conv1, torch.nn.Conv2d)
