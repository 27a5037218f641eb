"""clefctl.data.transforms: eval transform == open_clip's, training augmentations, two views."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from clefctl.data.transforms import (CLIP_MEAN, CLIP_STD, TwoViews, eval_transform,
                                     train_transform, transforms_for)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    # non-square, so the shorter-side resize and the center crop both matter
    return Image.fromarray(skdata.astronaut()[40:340, 60:500])


@pytest.mark.parametrize("size,mean,std", [
    (224, CLIP_MEAN, CLIP_STD),
    (96, IMAGENET_MEAN, IMAGENET_STD),
    (64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
])
def test_eval_transform_equals_open_clip(photo, size, mean, std):
    ours = eval_transform(size, mean, std)(photo)
    theirs = open_clip.image_transform(size, is_train=False, mean=mean, std=std)(photo)
    assert ours.shape == (3, size, size)
    assert ours.dtype == torch.float32
    assert torch.equal(ours, theirs)


def test_eval_transform_grey_image_equals_open_clip(photo):
    grey = photo.convert("L")
    ours = eval_transform(80, CLIP_MEAN, CLIP_STD)(grey)
    theirs = open_clip.image_transform(80, is_train=False, mean=CLIP_MEAN, std=CLIP_STD)(grey)
    assert ours.shape == (3, 80, 80)
    assert torch.equal(ours, theirs)


def test_eval_transform_is_deterministic_and_normalised(photo):
    tf = eval_transform(64, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    a, b = tf(photo), tf(photo)
    assert torch.equal(a, b)
    # mean 0 / std 1 leaves ToTensor's [0, 1] range
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    white = Image.new("RGB", (50, 70), (255, 255, 255))
    out = eval_transform(32, CLIP_MEAN, CLIP_STD)(white)
    expected = torch.tensor([(1.0 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD)])
    assert torch.allclose(out.mean(dim=(1, 2)), expected, atol=1e-5)


def test_train_transform_shape_and_randomness(photo):
    torch.manual_seed(0)
    tf = train_transform(64, CLIP_MEAN, CLIP_STD)
    outs = [tf(photo) for _ in range(3)]
    for out in outs:
        assert out.shape == (3, 64, 64)
        assert out.dtype == torch.float32
    assert not torch.equal(outs[0], outs[1])
    # grey input comes out as three channels too
    assert tf(photo.convert("L")).shape == (3, 64, 64)


def test_train_transform_options_change_the_pipeline(photo):
    names = [type(t).__name__ for t in train_transform(32, None, None).transforms]
    assert names == ["ToRGB", "RandomResizedCrop", "RandomHorizontalFlip", "RandomRotation",
                     "ToTensor", "Normalize"]
    plain = train_transform(32, None, None, scale=(1.0, 1.0), rotation=0, hflip=0.0)
    names = [type(t).__name__ for t in plain.transforms]
    assert names == ["ToRGB", "RandomResizedCrop", "ToTensor", "Normalize"]
    crop = plain.transforms[1]
    assert crop.scale == (1.0, 1.0)
    # always-flip on a square image with full-area crops of aspect 1 is an exact mirror
    square = photo.crop((0, 0, 300, 300))
    flip = train_transform(32, None, None, scale=(1.0, 1.0), rotation=0, hflip=1.0)
    flip.transforms[1].ratio = (1.0, 1.0)
    ref = eval_transform(32, None, None)(square)
    assert torch.allclose(flip(square), torch.flip(ref, dims=[2]), atol=1e-5)


def test_two_views_returns_two_different_views(photo):
    torch.manual_seed(1)
    views = TwoViews(train_transform(48, CLIP_MEAN, CLIP_STD))(photo)
    assert isinstance(views, tuple) and len(views) == 2
    a, b = views
    assert a.shape == b.shape == (3, 48, 48)
    assert not torch.equal(a, b)
    same = TwoViews(eval_transform(48, CLIP_MEAN, CLIP_STD))(photo)
    assert torch.equal(same[0], same[1])


def test_transforms_for_duck_typed_model(photo):
    model = SimpleNamespace(image_size=40, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    ev = transforms_for(model, train=False)
    assert torch.equal(ev(photo), eval_transform(40, IMAGENET_MEAN, IMAGENET_STD)(photo))
    tr = transforms_for(model, train=True, rotation=5)
    assert tr(photo).shape == (3, 40, 40)
    assert tr.transforms[3].degrees == [-5.0, 5.0]
    cfg = {"image_size": 24, "mean": CLIP_MEAN, "std": CLIP_STD}
    assert transforms_for(cfg, train=False)(photo).shape == (3, 24, 24)
    with pytest.raises(ValueError):
        transforms_for(SimpleNamespace(mean=CLIP_MEAN, std=CLIP_STD), train=False)
    with pytest.raises(TypeError):
        transforms_for(model, train=False, rotation=5)


def test_square_sizes_only():
    assert eval_transform((32, 32), None, None)(Image.new("RGB", (40, 60))).shape == (3, 32, 32)
    with pytest.raises(ValueError):
        eval_transform((32, 48), None, None)
    img = Image.fromarray(np.zeros((10, 10, 4), np.uint8), mode="RGBA")
    assert train_transform(16, None, None)(img).shape == (3, 16, 16)
