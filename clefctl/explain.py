"""Relevancy maps between a face and a text: which image regions and which words drive the similarity.

Owns the generic attention explainability of Chefer et al. (ICCV 2021, "GAE") on open_clip's
ViT image tower and text transformer, the figure of CLEF's Fig. 4 (:func:`render`) and the
pointing check on synthetic faces (:func:`pointing_accuracy`).

For a pair (image, text) the target is the cosine similarity ``s`` of the two unit features. In
every self-attention block of each tower the attention probabilities ``A`` (heads, L, L) and
their gradients ``dA = ds/dA`` are captured, and the relevance of token j for token i
accumulates from ``R = I`` as ``R <- R + mean_h((dA * A).clamp(min=0)) @ R``, block by block.
The image map is the class token's row over the patches (``R[0, 1:]`` on the patch grid,
bilinearly upsampled to the model's input size); the text map is the row of the token the text
tower pools (the end-of-text token for CLIP's argmax pooling) over the text's tokens.

The model is not modified: for the duration of one call the attention modules of both towers
(``nn.MultiheadAttention`` or open_clip's ``Attention``) get an instance-level ``forward`` that
computes the same attention explicitly and keeps its probabilities in the autograd graph
(``nn.MultiheadAttention(need_weights=True)`` returns a copy that is not, so its gradient would
be missing). Everything is put back afterwards: the normal forward is bit-identical, parameters
get no ``.grad`` (``torch.autograd.grad`` on the attention tensors only).

Example::

    >>> from clefctl.model import create
    >>> from clefctl.explain import relevancy, render
    >>> m = create("clef-tiny")
    >>> rel = relevancy(m, face, "a photo of a person with lip corner puller.")  # doctest: +SKIP
    >>> rel.image_map.shape, rel.tokens[:3]                                        # doctest: +SKIP
    ((64, 64), ['a', 'photo', 'of'])
    >>> render(face, [("AU12", rel)], "explain.png")                              # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clefctl.errors import ClefError

#: The AUs the pointing check uses by default (one per face region: mouth corners, brows,
#: nose, jaw, plus eyes and lips).
POINTING_AUS: tuple[str, ...] = ("AU12", "AU4", "AU9", "AU26", "AU6", "AU1", "AU15", "AU24")
NAME_TEMPLATE = "a photo of a person with {name}."
TITLE_CHARS = 34  # longer panel titles are shortened (the full text is printed under the map)


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------


@dataclass
class Relevance:
    """Relevance of one (image, text) pair.

    ``image_map``: (H, W) float32 in [0, 1] at the model's input size (min-max normalised).
    ``patch_map``: (g, g) float32, the raw non-negative relevance of each patch for the class token.
    ``tokens``: the text's tokens between start and end of text (BPE pieces, e.g. ``wrink``,
    ``ler``); ``word_end[i]`` says whether token i ends a word (a space follows it).
    ``token_scores``: float32 (len(tokens),) in [0, 1] (divided by their maximum).
    ``similarity``: the cosine similarity of the image and text features.
    """

    image_map: np.ndarray
    patch_map: np.ndarray
    tokens: list[str]
    token_scores: np.ndarray
    similarity: float
    text: str = ""
    word_end: list[bool] = field(default_factory=list)

    def top_tokens(self, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` most relevant tokens, best first."""
        order = np.argsort(-self.token_scores, kind="stable")[:k]
        return [(self.tokens[i], float(self.token_scores[i])) for i in order]

    def hottest_patch(self) -> tuple[int, int]:
        """(row, column) of the most relevant patch (the first one on ties)."""
        r, c = np.unravel_index(int(np.argmax(self.patch_map)), self.patch_map.shape)
        return int(r), int(c)

    def to_dict(self, top: int = 5) -> dict:
        return {"text": self.text, "similarity": round(float(self.similarity), 6),
                "top_tokens": [{"token": t, "score": round(s, 4)} for t, s in self.top_tokens(top)],
                "tokens": list(self.tokens),
                "token_scores": [round(float(s), 4) for s in self.token_scores],
                "hottest_patch": list(self.hottest_patch()), "grid": list(self.patch_map.shape)}


# ----------------------------------------------------------------------------------------------
# Capturing attention probabilities (temporary instance-level forwards)
# ----------------------------------------------------------------------------------------------


def _additive_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


def _need_grad(x: torch.Tensor) -> torch.Tensor:
    # Nothing upstream requires grad (frozen tower): start the graph here, downstream is all we need.
    return x if x.requires_grad else x.detach().requires_grad_(True)


def _mha_forward(mha: nn.MultiheadAttention, store: list) -> Callable:
    """A forward for ``mha`` (self-attention as open_clip calls it) that records the probabilities."""

    def forward(query, key=None, value=None, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        key = query if key is None else key
        value = query if value is None else value
        if not (key is query and value is query) or not mha._qkv_same_embed_dim or \
                mha.bias_k is not None or mha.add_zero_attn:
            raise ClefError("explain supports self-attention blocks only (this model has cross-attention "
                            "or separate key/value projections)")
        x = query if mha.batch_first else query.transpose(0, 1)
        if x.ndim == 2:
            x = x.unsqueeze(0)
        x = _need_grad(x)
        n, length, width = x.shape
        heads = mha.num_heads
        q, k, v = F.linear(x, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(n, length, heads, width // heads).transpose(1, 2) for t in (q, k, v))
        logits = (q * (width // heads) ** -0.5) @ k.transpose(-1, -2)
        mask = _additive_mask(attn_mask, logits.dtype)
        if mask is None and is_causal:
            mask = torch.full((length, length), float("-inf"), device=x.device, dtype=logits.dtype).triu(1)
        if mask is not None:
            logits = logits + (mask.reshape(n, heads, length, length) if mask.ndim == 3 else mask)
        if key_padding_mask is not None:
            pad = _additive_mask(key_padding_mask, logits.dtype)
            logits = logits + pad[:, None, None, :]
        attn = logits.softmax(dim=-1)
        store.append(attn)
        out = (attn @ v).transpose(1, 2).reshape(n, length, width)
        out = F.linear(out, mha.out_proj.weight, mha.out_proj.bias)
        if query.ndim == 2:
            out = out.squeeze(0)
        elif not mha.batch_first:
            out = out.transpose(0, 1)
        weights = (attn.mean(1) if average_attn_weights else attn) if need_weights else None
        return out, weights

    return forward


def _openclip_attention_forward(mod: nn.Module, store: list) -> Callable:
    """A forward for open_clip's ``Attention`` (custom blocks) that records the probabilities."""

    def forward(x, attn_mask=None):
        x = _need_grad(x)
        n, length, width = x.shape
        heads = mod.num_heads
        q, k, v = F.linear(x, mod.in_proj_weight, mod.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(n, length, heads, -1).transpose(1, 2) for t in (q, k, v))
        mask = _additive_mask(attn_mask, q.dtype)
        if mask is not None and mask.ndim == 3:
            mask = mask.reshape(n, heads, length, length)
        if mod.logit_scale is not None:
            logits = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-1, -2)
            logits = logits * torch.clamp(mod.logit_scale, max=mod.logit_scale_max).exp()
        else:
            q, k = mod.ln_q(q), mod.ln_k(k)
            logits = (q * mod.scale) @ k.transpose(-1, -2)
        if mask is not None:
            logits = logits + mask
        attn = logits.softmax(dim=-1)
        store.append(attn)
        out = attn @ v
        if mod.head_scale is not None:
            out = out * mod.head_scale
        out = out.transpose(1, 2).reshape(n, length, width)
        return mod.out_proj(mod.ln_inner(out))

    return forward


def _towers(clip: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(vision Transformer, text Transformer) of an open_clip CLIP or CustomTextCLIP."""
    from open_clip.transformer import Transformer, VisionTransformer

    visual = getattr(clip, "visual", None)
    if not isinstance(visual, VisionTransformer):
        raise ClefError(f"explain needs a ViT image tower; this model's is {type(visual).__name__}",
                        hint="use a ViT architecture such as clef-tiny, clef-small or ViT-B-16")
    text = getattr(clip, "transformer", None)
    if not isinstance(text, Transformer):
        text = getattr(getattr(clip, "text", None), "transformer", None)
    if not isinstance(text, Transformer):
        raise ClefError("explain needs open_clip's own text transformer (not a Hugging Face text tower)")
    return visual.transformer, text


@contextlib.contextmanager
def capture_attention(clip: nn.Module) -> Iterator[tuple[list, list]]:
    """Within the block, every attention of the two towers appends its probabilities
    (N, heads, L, L) to the yielded (image, text) lists; afterwards all is as before."""
    from open_clip.transformer import Attention

    vis_tf, txt_tf = _towers(clip)
    stores: tuple[list, list] = ([], [])
    patched: list[tuple[nn.Module, bool, object]] = []
    flags = [(tf, tf.grad_checkpointing) for tf in (vis_tf, txt_tf)]
    was_training = clip.training
    try:
        clip.eval()
        for tf, store in ((vis_tf, stores[0]), (txt_tf, stores[1])):
            tf.grad_checkpointing = False  # a checkpointed block would run (and record) twice
            for block in tf.resblocks:
                attn = block.attn
                if isinstance(attn, nn.MultiheadAttention):
                    fwd = _mha_forward(attn, store)
                elif isinstance(attn, Attention):
                    fwd = _openclip_attention_forward(attn, store)
                else:
                    raise ClefError(f"explain does not know the attention module {type(attn).__name__}")
                patched.append((attn, "forward" in attn.__dict__, attn.__dict__.get("forward")))
                attn.forward = fwd
        yield stores
    finally:
        for attn, had, old in reversed(patched):
            if had:
                attn.forward = old
            else:
                del attn.forward
        for tf, flag in flags:
            tf.grad_checkpointing = flag
        clip.train(was_training)


# ----------------------------------------------------------------------------------------------
# Relevance
# ----------------------------------------------------------------------------------------------


def gae_relevance(attns: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None],
                  start_layer: int = 0) -> torch.Tensor:
    """Chefer et al. 2021 self-attention rule: ``R = I + sum_l mean_h((grad*A)^+) @ R`` -> (N, L, L)."""
    n, _, length, _ = attns[0].shape
    rel = torch.eye(length, dtype=torch.float32, device=attns[0].device).expand(n, length, length).clone()
    for layer, (a, g) in enumerate(zip(attns, grads)):
        if layer < start_layer or g is None:
            continue
        cam = (g.float() * a.detach().float()).clamp(min=0).mean(dim=1)
        rel = rel + torch.bmm(cam, rel)
    return rel


def _pool_index(clip: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Per row of token ids, the position the text tower pools (EOT for CLIP's argmax)."""
    pool = getattr(clip, "text_pool_type", None) or getattr(getattr(clip, "text", None), "pool_type", "argmax")
    if pool == "first":
        return torch.zeros(ids.shape[0], dtype=torch.long)
    if pool == "last":
        return torch.full((ids.shape[0],), ids.shape[1] - 1, dtype=torch.long)
    if pool == "eos":
        eos = getattr(getattr(clip, "text", clip), "eos_id", None)
        if eos is not None:
            return (ids == eos).int().argmax(dim=-1)
    return ids.argmax(dim=-1)


def _token_pieces(tokenizer, ids: Sequence[int]) -> tuple[list[str], list[bool]]:
    """Readable BPE pieces and whether each ends a word."""
    pieces, ends = [], []
    for i in ids:
        i = int(i)
        try:
            raw = tokenizer.decode([i])
        except Exception:  # tokenizers without a decode of single ids
            raw = str(i) + " "
        pieces.append(raw.strip() or raw)
        ends.append(raw.endswith(" ") or raw.endswith("</w>"))
    return pieces, ends


def model_input(model, image) -> torch.Tensor:
    """A PIL image -> the model's eval transform (3, S, S); a (3, H, W) tensor passes as is."""
    if isinstance(image, torch.Tensor):
        x = image
        if x.ndim == 4 and x.shape[0] == 1:
            x = x[0]
        if x.ndim != 3 or x.shape[0] != 3:
            raise ClefError(f"image tensor must be (3, H, W) preprocessed pixels, got {tuple(image.shape)}")
        size = getattr(model, "image_size", None)
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            raise ClefError(f"image tensor is {x.shape[-1]}x{x.shape[-2]} but the model takes {size}x{size}",
                            hint="pass a PIL image (it is resized and cropped) or preprocess to the model's size")
        return x
    from PIL import Image

    from clefctl.data.transforms import transforms_for

    if isinstance(image, np.ndarray):
        from clefctl.data.faces import to_rgb_uint8

        image = Image.fromarray(to_rgb_uint8(image))
    if not isinstance(image, Image.Image):
        raise ClefError(f"explain takes a PIL image or a (3, H, W) tensor, not {type(image).__name__}")
    return transforms_for(model, train=False)(image.convert("RGB"))


def relevancy_pairs(model, pixels: torch.Tensor, texts: Sequence[str], start_layer: int = 0,
                    batch_size: int = 16) -> list[Relevance]:
    """Relevance of each pair (pixels[i], texts[i]); ``pixels`` (N, 3, S, S) preprocessed.

    Pairs run in batches of ``batch_size`` (one forward and one backward per batch; the pairs of
    a batch do not interact, so the result equals one pair at a time).
    """
    texts = list(texts)
    if pixels.ndim != 4 or pixels.shape[0] != len(texts):
        raise ValueError(f"need one image per text: pixels {tuple(pixels.shape)}, {len(texts)} texts")
    out: list[Relevance] = []
    for start in range(0, len(texts), batch_size):
        out.extend(_relevancy_batch(model, pixels[start:start + batch_size],
                                    texts[start:start + batch_size], start_layer))
    return out


def _relevancy_batch(model, pixels: torch.Tensor, texts: list[str], start_layer: int) -> list[Relevance]:
    clip = model.clip
    device = model.device
    dtype = next(clip.parameters()).dtype
    ids = model.tokenizer(texts)
    if not isinstance(ids, torch.Tensor):
        ids = torch.as_tensor(ids)
    ids = ids.long()
    pool_at = _pool_index(clip, ids)
    with capture_attention(clip) as (img_attn, txt_attn), torch.inference_mode(False), torch.enable_grad():
        x = pixels.to(device=device, dtype=dtype).clone()  # a normal tensor even if made in inference mode
        img = clip.encode_image(x)
        txt = clip.encode_text(ids.to(device).clone())
        sim = (F.normalize(img.float(), dim=-1) * F.normalize(txt.float(), dim=-1)).sum(-1)
        if not img_attn or not txt_attn:
            raise ClefError("no attention was recorded: the model's towers do not call their attention modules")
        grads = torch.autograd.grad(sim.sum(), img_attn + txt_attn, allow_unused=True)
    g_img, g_txt = grads[:len(img_attn)], grads[len(img_attn):]
    r_img = gae_relevance(img_attn, g_img, start_layer)
    r_txt = gae_relevance(txt_attn, g_txt, start_layer)
    gh, gw = clip.visual.grid_size
    size = tuple(int(s) for s in x.shape[-2:])
    results = []
    for b, text in enumerate(texts):
        patches = r_img[b, 0, 1:1 + gh * gw].reshape(gh, gw).clamp(min=0)
        up = F.interpolate(patches[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
        lo, hi = up.min(), up.max()
        image_map = ((up - lo) / (hi - lo)) if float(hi - lo) > 0 else torch.zeros_like(up)
        eot = int(pool_at[b])
        row = r_txt[b, eot]
        token_ids = ids[b, 1:eot].tolist() if eot > 1 else []
        scores = row[1:eot].clamp(min=0) if eot > 1 else row[:0]
        top = float(scores.max()) if scores.numel() else 0.0
        scores = scores / top if top > 0 else torch.zeros_like(scores)
        pieces, ends = _token_pieces(model.tokenizer, token_ids)
        results.append(Relevance(image_map=image_map.cpu().numpy().astype(np.float32),
                                 patch_map=patches.cpu().numpy().astype(np.float32),
                                 tokens=pieces, token_scores=scores.cpu().numpy().astype(np.float32),
                                 similarity=float(sim[b].detach()), text=text, word_end=ends))
    return results


def relevancy(model, image, text: str, start_layer: int = 0) -> Relevance:
    """Relevance of ``image`` (PIL image or preprocessed (3, H, W) tensor) for ``text``.

    ``start_layer``: blocks before it are left out of the sum (0 = all blocks, as in Chefer et al.).
    """
    return relevancy_many(model, image, [text], start_layer=start_layer)[0]


def relevancy_many(model, image, texts: Sequence[str], start_layer: int = 0,
                   batch_size: int = 16) -> list[Relevance]:
    """Relevance of one image for each of ``texts`` (batched)."""
    texts = list(texts)
    if not texts:
        return []
    x = model_input(model, image)
    return relevancy_pairs(model, x.unsqueeze(0).expand(len(texts), -1, -1, -1), texts,
                           start_layer=start_layer, batch_size=batch_size)


# ----------------------------------------------------------------------------------------------
# The figure
# ----------------------------------------------------------------------------------------------


def display_image(image, size: int, mean: Sequence[float] | None = None,
                  std: Sequence[float] | None = None) -> np.ndarray:
    """The face as the model saw it, (size, size, 3) uint8: a PIL image or array is resized
    (shorter side) and center-cropped like the eval transform; a normalised tensor is
    de-normalised (CLIP statistics unless ``mean``/``std`` are given)."""
    from PIL import Image

    if isinstance(image, torch.Tensor):
        from clefctl.data.transforms import CLIP_MEAN, CLIP_STD

        x = image.detach().float().cpu()
        if x.ndim == 4:
            x = x[0]
        m = torch.tensor(mean or CLIP_MEAN).view(3, 1, 1)
        s = torch.tensor(std or CLIP_STD).view(3, 1, 1)
        arr = ((x * s + m).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        if arr.shape[0] != size or arr.shape[1] != size:
            arr = np.asarray(Image.fromarray(arr).resize((size, size), Image.BICUBIC))
        return arr
    if isinstance(image, np.ndarray):
        from clefctl.data.faces import to_rgb_uint8

        image = Image.fromarray(to_rgb_uint8(image))
    from torchvision.transforms import CenterCrop, InterpolationMode, Resize

    img = image.convert("RGB")
    img = CenterCrop(size)(Resize(size, interpolation=InterpolationMode.BICUBIC)(img))
    return np.asarray(img)


def _draw_tokens(ax, renderer, rel: Relevance, fontsize: float) -> None:
    """The text with each token shaded green by its relevance, wrapped by words to the axes width."""
    ax.set_axis_off()
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    if not rel.tokens:
        return
    inv = ax.transAxes.inverted()

    def width(artist) -> tuple[float, float]:
        box = inv.transform(artist.get_window_extent(renderer=renderer))
        return box[1, 0] - box[0, 0], box[1, 1] - box[0, 1]

    probe = ax.text(0, 0, "a a", fontsize=fontsize)
    two = width(probe)[0]
    probe.set_text("aa")
    space = max(0.0, two - width(probe)[0])
    probe.remove()
    ends = rel.word_end or [True] * len(rel.tokens)
    artists = []
    for tok, score in zip(rel.tokens, rel.token_scores):
        face = (0.0, 0.62, 0.0, 0.85 * float(np.clip(score, 0.0, 1.0)))
        artists.append(ax.text(0, 0, tok, fontsize=fontsize, va="top", ha="left",
                               bbox=dict(boxstyle="square,pad=0.08", facecolor=face, edgecolor="none")))
    sizes = [width(a) for a in artists]
    line_h = max(h for _, h in sizes) * 1.35
    # words: runs of pieces up to one that ends a word; punctuation sticks to the word before it
    words, cur = [], []
    for i, tok in enumerate(rel.tokens):
        cur.append(i)
        nxt = rel.tokens[i + 1] if i + 1 < len(rel.tokens) else ""
        if ends[i] and not (nxt and not any(ch.isalnum() for ch in nxt)):
            words.append(cur)
            cur = []
    if cur:
        words.append(cur)
    x, y = 0.0, 0.95
    for word in words:
        w = sum(sizes[i][0] for i in word)
        if x > 0 and x + w > 1.0:
            x, y = 0.0, y - line_h
        for i in word:
            artists[i].set_position((x, y))
            x += sizes[i][0]
        x += space


def render(image, relevances: Sequence[tuple[str, Relevance]], out_png: str | os.PathLike, *,
           cols: int | None = None, title: str | None = None, mean=None, std=None) -> Path:
    """Write the Fig. 4-style figure: the face, then per text its heatmap (jet, blue = low, red =
    high) over the face, titled with the given title and the cosine, and the text below with each
    token shaded green by its relevance. Written atomically as PNG; returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from clefctl.paths import atomic_path

    if not relevances:
        raise ClefError("nothing to render: no texts were explained")
    size = relevances[0][1].image_map.shape[0]
    # PIL images are shown at >= 224 px (same crop as the model's view); the map is stretched over it.
    face = display_image(image, size if isinstance(image, torch.Tensor) else max(size, 224), mean, std)
    n = len(relevances) + 1
    cols = max(1, min(cols or 6, n))
    rows = math.ceil(n / cols)
    cell_w, img_h, txt_h = 2.1, 2.1, 0.8
    if title:  # wrapped to the figure's width (10 pt: about 11 characters per inch)
        import textwrap

        title = "\n".join(textwrap.wrap(title, width=max(20, int(cols * cell_w * 11)), break_long_words=True))
    title_h = 0.45 + 0.22 * title.count("\n") if title else 0.0
    fig = Figure(figsize=(cols * cell_w, rows * (img_h + txt_h) + title_h), dpi=100)
    canvas = FigureCanvasAgg(fig)
    grid = fig.add_gridspec(rows * 2, cols, height_ratios=[img_h, txt_h] * rows,
                            hspace=0.12, wspace=0.08, left=0.02, right=0.98, bottom=0.01,
                            top=1 - (title_h / (rows * (img_h + txt_h) + title_h) if title else 0.0) - 0.03)
    if title:
        fig.suptitle(title, fontsize=10)
    renderer = canvas.get_renderer()
    ax = fig.add_subplot(grid[0, 0])
    ax.imshow(face)
    ax.set_title("input\n", fontsize=7.5, linespacing=1.1)
    ax.set_axis_off()
    fig.add_subplot(grid[1, 0]).set_axis_off()
    for k, (name, rel) in enumerate(relevances, start=1):
        r, c = divmod(k, cols)
        ax = fig.add_subplot(grid[2 * r, c])
        ax.imshow(face)
        ax.imshow(rel.image_map, cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0,
                  extent=(-0.5, face.shape[1] - 0.5, face.shape[0] - 0.5, -0.5))
        short = name if len(name) <= TITLE_CHARS else name[:TITLE_CHARS - 3].rstrip() + "..."
        ax.set_title(f"{short}\ncos {rel.similarity:+.3f}", fontsize=7.5, linespacing=1.1)
        ax.set_axis_off()
        _draw_tokens(fig.add_subplot(grid[2 * r + 1, c]), renderer, rel, fontsize=7)
    out = Path(out_png)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    return out


# ----------------------------------------------------------------------------------------------
# Pointing accuracy on synthetic faces
# ----------------------------------------------------------------------------------------------


def eval_geometry(width: int, height: int, size: int) -> tuple[float, float, int, int]:
    """(sx, sy, left, top) of the eval transform: resize the shorter side to ``size`` as
    torchvision's Resize does, then center crop ``size``; x_in = x * sx - left."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    left = int(round((new_w - size) / 2.0))
    top = int(round((new_h - size) / 2.0))
    return new_w / width, new_h / height, left, top


def region_mask(boxes: Sequence[Sequence[float]], width: int, height: int, size: int) -> np.ndarray:
    """(size, size) bool: pixels of the model input whose centre lies in any box
    ``[x0, y0, x1, y1]`` (given in pixels of the width x height image)."""
    sx, sy, left, top = eval_geometry(width, height, size)
    mask = np.zeros((size, size), dtype=bool)
    centres = np.arange(size) + 0.5
    for x0, y0, x1, y1 in boxes:
        bx0, bx1 = x0 * sx - left, x1 * sx - left
        by0, by1 = y0 * sy - top, y1 * sy - top
        cols = (centres >= bx0) & (centres < bx1)
        rows = (centres >= by0) & (centres < by1)
        mask |= rows[:, None] & cols[None, :]
    return mask


def _au_key(au: str) -> str:
    s = str(au).strip().upper()
    return s if s.startswith("AU") else f"AU{s}"


def pointing_texts(aus: Sequence[str], prompts=None, au_names: dict | None = None) -> dict[str, str]:
    """The label-name text of each AU: the prompt set's name template and name when it has the
    AU, else the generator's AU name in "a photo of a person with {name}."."""
    out = {}
    by_id = {c.id: c.name for c in prompts.classes} if prompts is not None else {}
    template = prompts.templates["name"][0] if prompts is not None and "name" in prompts.templates else NAME_TEMPLATE
    for au in aus:
        if au in by_id:
            out[au] = template.format(name=by_id[au])
        elif au_names and au in au_names:
            out[au] = NAME_TEMPLATE.format(name=au_names[au])
        else:
            raise ClefError(f"no label name for {au}", hint="use AUs the synthetic generator draws")
    return out


def pointing_accuracy(model, root: str | os.PathLike, aus: Sequence[str] = POINTING_AUS,
                      n_images: int = 50, *, prompts=None, subjects: Sequence[str] | None = None,
                      seed: int = 0, start_layer: int = 0, batch_size: int = 16,
                      progress: bool = False) -> dict[str, dict]:
    """Does the hottest patch of the AU's label-name map fall on the AU's face region?

    ``root``: a synthetic-au set (its ``synthetic.json`` sidecar gives the AU intensities and the
    face-part boxes of every image; :func:`clefctl.data.synthetic.au_regions` maps AUs to parts).
    For each AU, up to ``n_images`` images where it is active (intensity >= the occurrence
    threshold; only ``subjects`` when given, e.g. a fold's test subjects) are drawn with ``seed``;
    the text is the AU's label name (``prompts``' name template, default "a photo of a person with
    {name}."). The region is the union of the AU's part boxes, mapped into the model's input
    (resize shorter side + center crop).

    A hit (the pointing game of Zhang et al., ECCV 2016, whose tolerance is here one patch): the
    hottest patch overlaps the region. The map has one value per patch, so this is the finest
    answer it can give; on a coarse grid (clef-tiny: 4x4 patches of 16 px) a small region such as
    the nose may contain no patch centre at all. ``chance_patches``: the mean fraction of patches
    that overlap the region (what a uniformly random patch would score); ``chance``: the mean
    fraction of the input the region covers. ``mass``: the mean share of the upsampled map's
    relevancy that lies inside the region, to compare with ``chance``.

    Returns ``{AU: {"hit_rate", "chance_patches", "chance", "mass", "hits", "n", "text"}}``;
    unreadable images are skipped and counted in ``"skipped"``.
    """
    from PIL import Image

    from clefctl.data.synthetic import au_regions, read_sidecar

    root = Path(root)
    meta = read_sidecar(root)
    if meta.get("kind") != "synthetic-au":
        raise ClefError(f"pointing needs a synthetic-au set, this is {meta.get('kind')!r}", path=root,
                        hint="generate one with `clefctl data synth` or pass --dataset-root")
    regions = au_regions()
    aus = [_au_key(a) for a in aus]
    unknown = [a for a in aus if a not in regions]
    if unknown:
        raise ClefError(f"the synthetic generator does not draw {', '.join(unknown)}",
                        hint=f"use some of {', '.join(regions)}")
    texts = pointing_texts(aus, prompts, meta.get("au_names"))
    threshold = float(meta.get("occurrence_threshold", 0.5))
    images = meta.get("images", [])
    if subjects is not None:
        keep = set(subjects)
        images = [e for e in images if e.get("subject") in keep]
    size = model.image_size
    gh, gw = model.clip.visual.grid_size
    rows = np.linspace(0, size, gh + 1).round().astype(int)
    cols = np.linspace(0, size, gw + 1).round().astype(int)

    def patch_overlap(mask: np.ndarray) -> np.ndarray:  # (gh, gw): does patch (r, c) touch the region
        return np.array([[mask[rows[r]:rows[r + 1], cols[c]:cols[c + 1]].any() for c in range(gw)]
                         for r in range(gh)])
    rng = np.random.default_rng(seed)
    plan = []
    for au in aus:
        cand = [e for e in images if float(e.get("au_intensity", {}).get(au, 0.0)) >= threshold]
        if len(cand) > n_images:
            cand = [cand[i] for i in sorted(rng.choice(len(cand), n_images, replace=False))]
        plan.append((au, cand))
    total = sum(len(c) for _, c in plan)
    results: dict[str, dict] = {}
    bar = _progress(progress, total)
    skipped = 0
    try:
        for au, cand in plan:
            hits, chance, chance_p, mass, n = 0, [], [], [], 0
            pending: list[tuple[torch.Tensor, np.ndarray]] = []

            def flush():
                nonlocal hits, n
                if not pending:
                    return
                rels = relevancy_pairs(model, torch.stack([p for p, _ in pending]), [texts[au]] * len(pending),
                                       start_layer=start_layer, batch_size=batch_size)
                for rel, (_, mask) in zip(rels, pending):
                    r, c = rel.hottest_patch()
                    hits += bool(patch_overlap(mask)[r, c])
                    total = float(rel.image_map.sum())
                    mass.append(float((rel.image_map * mask).sum()) / total if total > 0 else float(mask.mean()))
                    n += 1
                if bar is not None:
                    bar[0].advance(bar[1], len(pending))
                pending.clear()

            for e in cand:
                boxes = [b for part in regions[au] for b in e.get("regions", {}).get(part, [])]
                try:
                    with Image.open(root / e["path"]) as raw:
                        raw.load()
                        img = raw.convert("RGB")
                except (OSError, ValueError, KeyError):
                    skipped += 1
                    if bar is not None:
                        bar[0].advance(bar[1], 1)
                    continue
                mask = region_mask(boxes, img.width, img.height, size)
                chance.append(float(mask.mean()))
                chance_p.append(float(patch_overlap(mask).mean()))
                pending.append((model_input(model, img), mask))
                if len(pending) >= batch_size:
                    flush()
            flush()
            results[au] = {"hit_rate": hits / n if n else float("nan"),
                           "chance": float(np.mean(chance)) if chance else float("nan"),
                           "chance_patches": float(np.mean(chance_p)) if chance_p else float("nan"),
                           "mass": float(np.mean(mass)) if mass else float("nan"),
                           "hits": hits, "n": n, "text": texts[au]}
    finally:
        if bar is not None:
            bar[0].stop()
    if skipped:
        for r in results.values():
            r["skipped"] = skipped
    return results


def _progress(enabled: bool, total: int):
    if not enabled or total == 0:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("pointing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   transient=True)
    bar.start()
    return bar, bar.add_task("pointing", total=total)


def pointing_summary(results: dict[str, dict]) -> dict:
    """Means over the AUs with images of hit rate, its chance (patches), mass and its chance (area)."""
    rows = [r for r in results.values() if r["n"]]
    keys = {"mean_hit_rate": "hit_rate", "mean_chance_patches": "chance_patches", "mean_mass": "mass",
            "mean_chance": "chance"}
    if not rows:
        return {**{k: float("nan") for k in keys}, "n": 0}
    return {**{k: float(np.mean([r.get(v, float("nan")) for r in rows])) for k, v in keys.items()},
            "n": int(sum(r["n"] for r in rows))}


# ----------------------------------------------------------------------------------------------
# What the command needs: the model, its prompt set, the face
# ----------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """The model to explain and where it came from (``run``: its fine-tuning run folder, if any)."""

    model: object
    source: str
    run_dir: Path | None = None
    warning: str | None = None


def load_model(checkpoint: str | None = "latest", workspace: str | None = None, arch: str | None = None,
               device: str | None = None, trust_checkpoint: bool = False) -> LoadedModel:
    """The model to explain.

    ``latest``: the model.pt of the workspace's latest fine-tuning run, else a random ``arch``
    (default clef-tiny) model with a warning; ``random``: a random ``arch`` model; a run folder or
    a fine-tuning run name: its model.pt; a file: any weights format :func:`clefctl.model.create`
    reads (a clefctl checkpoint carries its architecture; other files use ``arch``, default
    ViT-B-16).
    """
    from clefctl.workspace import Workspace

    ws = Workspace(workspace)
    choice = ws.resolve_model(checkpoint or "latest", stages=("finetune",), arch=arch, random_fallback=True)
    model = choice.load(device, trust_checkpoint=trust_checkpoint)
    warning = None
    if choice.warning:
        warning = (f"no fine-tuned run in workspace {ws.root}: explaining a randomly initialised "
                   f"{choice.arch} (its maps show no learned facial regions); fine-tune first or "
                   "pass --checkpoint")
    run_dir = choice.run.path if choice.run is not None else None
    return LoadedModel(model, choice.description, run_dir, warning)


def prompt_set_for(model, run_dir: Path | None = None, prompts: str | None = None):
    """The prompt set of the model: ``prompts`` (a name or YAML) when given, else the run folder's
    prompts.yaml, else the shipped set of the checkpoint's data set; restricted to the checkpoint's
    classes. None when nothing says which one."""
    from clefctl.prompts import available_prompt_sets, load_prompts

    meta = getattr(model, "meta", {}) or {}
    if prompts:
        ps = load_prompts(prompts)
    elif run_dir is not None and (Path(run_dir) / "prompts.yaml").is_file():
        ps = load_prompts(Path(run_dir) / "prompts.yaml")
    elif meta.get("dataset") in available_prompt_sets():
        ps = load_prompts(meta["dataset"])
    else:
        return None
    classes = meta.get("classes")
    if classes and all(c in ps.class_ids for c in classes):
        ps = ps.subset(classes)
    return ps


def class_panels(prompts, max_descriptions: int | None = None) -> list[tuple[str, str]]:
    """(title, text) per class: its label name in the name template, then each description in
    the first description template (at most ``max_descriptions`` per class), as in Fig. 4."""
    if prompts is None or not prompts.classes:
        raise ClefError("--classes needs a prompt set: the model is not a fine-tuned clefctl checkpoint",
                        hint="pass --prompts NAME_OR_YAML or a fine-tuned --checkpoint")
    name_tpl = prompts.templates["name"][0]
    desc_tpl = prompts.templates["description"][0]
    panels = []
    for c in prompts.classes:
        panels.append((f"{c.id}: {c.name}" if c.name != c.id else c.id, name_tpl.format(name=c.name)))
        descs = c.descriptions if max_descriptions is None else c.descriptions[:max_descriptions]
        for j, d in enumerate(descs, start=1):
            panels.append((f"{c.id} description {j}", desc_tpl.format(description=d)))
    return panels


@dataclass
class Face:
    """The image to explain and how it was obtained.

    ``face`` says what the face search did: ``"found"`` (cropped to it), ``"none found"`` (the
    whole image is used; ``warning`` says so), ``"not searched"`` (--no-crop, or an image already
    about the model's input size) or ``"stored box"`` (cut to an embedding store's face box).
    """

    image: object              # PIL RGB image
    source: str
    cropped: bool = False
    box: tuple[int, int, int, int] | None = None
    face: str = "not searched"

    @property
    def warning(self) -> str | None:
        if self.face != "none found":
            return None
        return (f"no face found in {self.source}: explaining the whole image (--crop requires a face, "
                "--no-crop skips the search)")


def _open_rgb(path: Path):
    from PIL import Image

    try:
        with Image.open(path) as raw:
            raw.load()
            return raw.convert("RGB")
    except FileNotFoundError:
        raise ClefError("image not found", path=path) from None
    except (OSError, ValueError) as exc:
        raise ClefError(f"cannot read the image ({exc})", path=path) from None


def load_face(image: str, model_size: int, crop: bool | None = None, store: str | None = None) -> Face:
    """Open ``image`` (a file, or with ``store`` an image id of that embedding store) as RGB.

    ``crop=True``: crop the largest face with :class:`clefctl.data.faces.FaceCropper` (an error
    when none is found); ``False``: never; ``None`` (default): look for a face only when the image
    is larger than twice the model input, and use the whole image when none is found
    (``Face.face`` "none found", with a ``warning``). Stored images are cut to their stored face box.
    """
    path = Path(image).expanduser()
    box = None
    if not path.is_file() and store:
        from clefctl.store import EmbeddingStore

        with EmbeddingStore.open(store) as st:
            row = st.row_of(str(image))
            meta = st.metadata([row]).iloc[0]
        if not meta["path"]:
            raise ClefError(f"stored image {image!r} has no image file (it was embedded from memory)",
                            path=store)
        path = Path(meta["path"])
        if int(meta["box_w"]) > 0:
            box = (int(meta["box_x"]), int(meta["box_y"]), int(meta["box_w"]), int(meta["box_h"]))
    elif not path.exists():
        hint = "give an image file" + ("" if store else ", or an image id with --store FILE.h5")
        raise ClefError("image not found", path=path, hint=hint)
    img = _open_rgb(path)
    if box is not None:
        x, y, w, h = box
        img = img.crop((max(0, x), max(0, y), min(img.width, x + w), min(img.height, y + h)))
        return Face(img, str(path), True, box, "stored box")
    if crop is False or (crop is None and max(img.size) <= 2 * model_size):
        return Face(img, str(path))
    from clefctl.data.faces import FaceCropper

    result = FaceCropper(size=max(224, model_size)).crop(np.asarray(img))
    if not result.found:
        if crop:
            raise ClefError("no face found in the image", path=path, hint="pass --no-crop to use it whole")
        return Face(img, str(path), face="none found")
    return Face(result.image, str(path), True, result.box, "found")


def synthetic_au_root(dataset_root: str | None = None, run_dir: Path | None = None) -> Path:
    """The synthetic-au set to point on: ``dataset_root``, else the run's, else the cached default
    (generated when missing; an existing set is used as it is, whatever its size)."""
    from clefctl.data import synthetic
    from clefctl.paths import cache_dir

    if dataset_root is None and run_dir is not None and (Path(run_dir) / "config.yaml").is_file():
        import yaml

        cfg = yaml.safe_load((Path(run_dir) / "config.yaml").read_text(encoding="utf-8")) or {}
        if cfg.get("dataset") == "synthetic-au":
            dataset_root = (cfg.get("options") or {}).get("dataset_root")
    root = Path(dataset_root).expanduser() if dataset_root else cache_dir() / "synthetic-au"
    if (root / synthetic.SIDECAR).is_file():
        return root
    if dataset_root:
        raise ClefError("not a synthetic data set (no synthetic.json)", path=root,
                        hint="generate one with `clefctl data synth` or point --dataset-root at it")
    return synthetic.ensure("synthetic-au", root)


def held_out_subjects(run_dir: Path | None) -> tuple[list[str] | None, str]:
    """The test subjects of a synthetic-au run's fold (folds.json), or (None, "all subjects")."""
    if run_dir is None or not (Path(run_dir) / "folds.json").is_file():
        return None, "all subjects"
    from clefctl.data.folds import load_folds

    import yaml

    cfg_path = Path(run_dir) / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    if (cfg or {}).get("dataset") != "synthetic-au":
        return None, "all subjects"
    fold_no = int(((cfg or {}).get("options") or {}).get("fold") or 1)
    folds = load_folds(Path(run_dir) / "folds.json")
    fold = folds[fold_no - 1]
    return list(fold.test_subjects), f"held-out subjects of fold {fold_no} ({', '.join(fold.test_subjects)})"
