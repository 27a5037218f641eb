"""Image transforms: the paper's training augmentations, the eval transform, two views.

All transforms take a PIL image (any mode; converted to RGB) and return a normalised
float32 tensor of shape (3, S, S). ``eval_transform`` reproduces open_clip's inference
preprocessing exactly (shorter side resized with bicubic interpolation, center crop,
normalise), so features match those of ``open_clip.create_model_and_transforms``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

# CLIP's pixel statistics (open_clip's OPENAI_DATASET_MEAN / _STD): used when mean/std is None.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ToRGB:
    """Convert a PIL image of any mode (L, LA, P, RGBA, I;16 ...) to RGB; RGB passes through."""

    def __call__(self, image: Image.Image) -> Image.Image:
        return image if image.mode == "RGB" else image.convert("RGB")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _square_size(image_size: int | Sequence[int]) -> int:
    if isinstance(image_size, Sequence):
        sizes = {int(s) for s in image_size}
        if len(sizes) != 1:
            raise ValueError(f"only square image sizes are supported, got {tuple(image_size)}")
        return sizes.pop()
    size = int(image_size)
    if size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    return size


def _stats(mean: Sequence[float] | None, std: Sequence[float] | None):
    mean = CLIP_MEAN if mean is None else tuple(float(m) for m in mean)
    std = CLIP_STD if std is None else tuple(float(s) for s in std)
    if len(mean) == 1:
        mean = mean * 3
    if len(std) == 1:
        std = std * 3
    return mean, std


def train_transform(image_size: int, mean: Sequence[float] | None, std: Sequence[float] | None,
                    scale: tuple[float, float] = (0.8, 1.0), rotation: float = 10,
                    hflip: float = 0.5) -> T.Compose:
    """Pre-training augmentations (CLEF section 4.2): random resized crop, flip, rotation.

    ``scale`` is the crop's area range, ``rotation`` the maximum angle in degrees (uniform in
    [-rotation, rotation]; 0 disables it), ``hflip`` the flip probability (AUs are scored
    bilaterally, so flipping keeps AU labels valid).
    """
    size = _square_size(image_size)
    mean, std = _stats(mean, std)
    steps: list[Callable] = [
        ToRGB(),
        T.RandomResizedCrop(size, scale=tuple(scale), interpolation=InterpolationMode.BICUBIC),
    ]
    if hflip > 0:
        steps.append(T.RandomHorizontalFlip(p=hflip))
    if rotation:
        steps.append(T.RandomRotation(rotation, interpolation=InterpolationMode.BILINEAR))
    steps += [T.ToTensor(), T.Normalize(mean=mean, std=std)]
    return T.Compose(steps)


def eval_transform(image_size: int, mean: Sequence[float] | None,
                   std: Sequence[float] | None) -> T.Compose:
    """Resize the shorter side to ``image_size`` (bicubic), center crop, normalise.

    Same steps in the same order as ``open_clip.image_transform(size, is_train=False, ...)``.
    """
    size = _square_size(image_size)
    mean, std = _stats(mean, std)
    return T.Compose([
        T.Resize(size, interpolation=InterpolationMode.BICUBIC),
        T.CenterCrop(size),
        ToRGB(),
        T.ToTensor(),
        T.Normalize(mean=mean, std=std),
    ])


class TwoViews:
    """Apply ``transform`` twice, independently: ``(view_a, view_b)`` for the L_II term of Eq. 1."""

    def __init__(self, transform: Callable):
        self.transform = transform

    def __call__(self, image):
        return self.transform(image), self.transform(image)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transform!r})"


def transforms_for(model_or_cfg: Any, train: bool, **augment) -> T.Compose:
    """The transform for a ``ClefModel``-like object (or a mapping) with image_size, mean, std.

    ``train=True`` gives :func:`train_transform` (``augment`` passes scale/rotation/hflip),
    ``train=False`` :func:`eval_transform`.
    """
    if isinstance(model_or_cfg, Mapping):
        get = model_or_cfg.get
    else:
        def get(key, default=None):
            return getattr(model_or_cfg, key, default)
    image_size = get("image_size")
    if image_size is None:
        raise ValueError(f"{type(model_or_cfg).__name__} has no image_size")
    mean, std = get("mean"), get("std")
    if train:
        return train_transform(image_size, mean, std, **augment)
    if augment:
        raise TypeError(f"augmentation options {sorted(augment)} only apply when train=True")
    return eval_transform(image_size, mean, std)
