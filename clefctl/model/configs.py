"""The convolutional stem of clefctl's small configs (``clef-tiny``, ``clef-small``). Registering the
configs with open_clip and their shapes live in :mod:`clefctl.weights.archs`."""

from __future__ import annotations

from typing import Sequence

import torch

from clefctl.errors import ClefError

# clefctl's own from-scratch configs replace the ViT's patchify convolution (one k x k conv with
# stride k) by a convolutional stem: stride-2 3x3 convolutions with BatchNorm and ReLU, then a 1x1
# convolution to the transformer width (Xiao et al., "Early convolutions help transformers see
# better", NeurIPS 2021). The token grid, the transformer and everything after it are unchanged.
# Trained from random weights on a few thousand images, the plain patchify convolution learned
# far more slowly than this stem (docs/performance.md, "the convolutional stem"). clef-small gets
# a stem too; its learning was not measured.
# Channels of the stride-2 convolutions; their number is log2(patch_size).
CONV_STEMS: dict[str, tuple[int, ...]] = {"clef-tiny": (24, 48, 96, 128), "clef-small": (32, 64, 128)}


def conv_stem(channels: Sequence[int], width: int) -> torch.nn.Sequential:
    """The stem module for ``visual.conv1``: (B, 3, H, W) -> (B, width, H / 2**n, W / 2**n)."""
    layers: list[torch.nn.Module] = []
    c_in = 3
    for c in channels:
        layers += [torch.nn.Conv2d(c_in, c, 3, stride=2, padding=1, bias=False), torch.nn.BatchNorm2d(c),
                   torch.nn.ReLU(inplace=True)]
        c_in = c
    layers.append(torch.nn.Conv2d(c_in, width, 1))
    return torch.nn.Sequential(*layers)


def _add_stem(clip: torch.nn.Module, arch: str) -> None:
    """Swap in the arch's convolutional stem (see CONV_STEMS); other architectures are untouched."""
    channels = CONV_STEMS.get(arch)
    visual = getattr(clip, "visual", None)
    if channels is None or not isinstance(getattr(visual, "conv1", None), torch.nn.Conv2d):
        return
    patch = visual.conv1.kernel_size[0]
    if 2 ** len(channels) != patch:
        raise ClefError(f"internal: the {arch} stem has {len(channels)} stride-2 convolutions, "
                        f"but its patch size is {patch}")
    visual.conv1 = conv_stem(channels, visual.conv1.out_channels)
