"""The inference copy of the image tower: :meth:`ClefModel.encode_images` with ``dtype`` other
than the model's own runs a copy of ``clip.visual`` cast to that dtype (bfloat16 on CPUs with
native bf16, float16 on CUDA), cached on the model; the model itself is left untouched.

Weights are cast, not autocast: bf16 autocast is slower than fp32 for CPU inference, a bf16
copy faster (figures in docs/performance.md). The cached copy is rebuilt when the model's image
tower changed since it was made (trained, loaded, moved).

Example::

    >>> from clefctl.model import create
    >>> m = create("clef-tiny")
    >>> emb = m.encode_images(pixels, dtype="auto")            # doctest: +SKIP
"""

from __future__ import annotations

import copy
import itertools
import os

import torch

from clefctl.cpu import cpu_has_native_bf16
from clefctl.errors import ClefError

DTYPE_NAMES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
               "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def inference_dtype(device, dtype: str = "auto") -> torch.dtype:
    """The torch dtype an image-encoding ``dtype`` name means on ``device``: ``auto`` -> bfloat16
    on CPUs with native bf16, float16 on CUDA, float32 elsewhere. ``$CLEF_INFERENCE_DTYPE``
    overrides auto."""
    if dtype == "auto":
        dtype = os.environ.get("CLEF_INFERENCE_DTYPE", "auto") or "auto"
    if dtype != "auto":
        if dtype not in DTYPE_NAMES:
            raise ClefError(f"unknown inference dtype {dtype!r}", hint="use auto, float32, bfloat16 or float16")
        return DTYPE_NAMES[dtype]
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.float16
    if dev.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def _tower_state(visual: torch.nn.Module) -> tuple:
    """What changes when the tower's weights change: each tensor's storage and version counter
    (in-place updates such as optimizer steps and ``load_state_dict`` bump the version)."""
    return tuple((t.data_ptr(), t._version) for t in itertools.chain(visual.parameters(), visual.buffers()))


def image_tower(model, dtype="float32"):
    """``(encode, input dtype)`` for :meth:`ClefModel.encode_images`: the model's own
    ``clip.encode_image`` when ``dtype`` (a name as :func:`inference_dtype` reads it, or a torch
    dtype) is its parameter dtype, else a cached copy of the image tower cast to ``dtype``."""
    own = next(model.clip.parameters()).dtype
    want = inference_dtype(model.device, dtype) if isinstance(dtype, str) else dtype
    if want == own:
        return model.clip.encode_image, own
    visual = model.clip.visual
    copies = model.__dict__.setdefault("_inference_copies", {})
    state = (str(model.device), _tower_state(visual))
    cached = copies.get(want)
    if cached is None or cached[0] != state:
        tower = copy.deepcopy(visual).to(want)
        tower.eval()
        cached = copies[want] = (state, tower)
    tower = cached[1]

    def encode(x):
        out = tower(x)
        return out[0] if isinstance(out, (tuple, list)) else out
    return encode, want


class ImageEncoder:
    """Callable ``(B, 3, H, W) float32 pixels -> (B, D) unit float32`` on CPU: the model's
    :meth:`~ClefModel.encode_images` with one ``dtype`` (resolved once; ``auto`` by default)
    over the whole batch."""

    def __init__(self, model, dtype="auto"):
        self.model = model
        self.device = torch.device(getattr(model, "device", "cpu"))
        self.dtype = inference_dtype(self.device, dtype) if isinstance(dtype, str) else dtype
        image_tower(model, self.dtype)  # make the copy now

    def __call__(self, pixels):
        return self.model.encode_images(pixels, batch_size=max(1, len(pixels)), dtype=self.dtype)

    def __repr__(self) -> str:
        return f"ImageEncoder(dtype={self.dtype}, device={self.device})"
