"""Text-tower helpers for training: the text features of a batch of prompts, computed cheaply.

Example::

    >>> from clefctl.model import create, encode_text_trimmed
    >>> m = create("clef-tiny")
    >>> encode_text_trimmed(m.clip, m.tokenizer(["a photo of a person with lip corner puller."])).shape
    torch.Size([1, 128])
"""

from __future__ import annotations

import torch


def encode_text_trimmed(clip: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``clip.encode_text(tokens)`` computed only over the columns up to the last non-padding token.

    Exact for open_clip's CLIP text tower (causal mask, features taken at the end-of-text token):
    no position before the end token attends to the padding after it. A label name fills only a
    small part of the context, so this is much cheaper than the full tower. Other text towers use
    encode_text.
    """
    mask = getattr(clip, "attn_mask", None)
    pool = getattr(clip, "text_pool_type", None)
    if (tokens.ndim != 2 or mask is None or pool != "argmax" or not hasattr(clip, "token_embedding")
            or not hasattr(clip, "positional_embedding") or getattr(clip, "text_no_grad", False)):
        return clip.encode_text(tokens)
    used = (tokens != 0).any(0).nonzero()
    n = int(used.max()) + 1 if used.numel() else 1
    if n >= tokens.shape[1]:
        return clip.encode_text(tokens)
    from open_clip.transformer import text_global_pool

    cast_dtype = clip.transformer.get_cast_dtype()
    t = tokens[:, :n]
    x = clip.token_embedding(t).to(cast_dtype) + clip.positional_embedding[:n].to(cast_dtype)
    x = clip.transformer(x, attn_mask=mask[:n, :n])
    x = clip.ln_final(x)
    x = text_global_pool(x, t, pool)
    proj = clip.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
