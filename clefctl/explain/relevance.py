"""Relevancy between a face and a text: which image regions and which words drive the similarity.

The generic attention explainability of Chefer et al. (ICCV 2021, "GAE") on open_clip's ViT
image tower and text transformer, with the temporary attention wrappers it needs.

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
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clefctl.errors import ClefError

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
