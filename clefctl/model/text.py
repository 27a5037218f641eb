"""Text-tower helpers: the text features of a batch of prompts computed cheaply for training
(:func:`encode_text_trimmed`), and a text-only model for queries (:func:`create_text`: the tokenizer
and the text tower of a weights file, without the image tower and without importing open_clip's
package, which pulls in torchvision and timm: a cold ``clefctl query`` pays for neither).

Example::

    >>> from clefctl.model import create, encode_text_trimmed
    >>> m = create("clef-tiny")
    >>> encode_text_trimmed(m.clip, m.tokenizer(["a photo of a person with lip corner puller."])).shape
    torch.Size([1, 128])
    >>> t = create_text("clef-tiny", "runs/finetune/.../model.pt")       # doctest: +SKIP
    >>> t.encode_texts(["lip corners pulled up"]).shape, t.fingerprint    # same as create(...)'s
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F

from clefctl.model.factory import ClefModel, create, read_file_weights, resolve_device
from clefctl.model.formats import LoadReport, check_head
from clefctl.weights.archs import CONFIG_DIR
from clefctl.weights.digest import sha256_file_cached
from clefctl.weights.files import strip_prefix
from clefctl.weights.reference import parse_weights

log = logging.getLogger("clefctl.model")


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


# ----------------------------------------------------------------------------------------------
# the text-only model (tokenizer + text tower) for queries
# ----------------------------------------------------------------------------------------------

# text_cfg fields the lean tower supports only at open_clip's defaults (CLIPTextCfg); any other
# value (an HF text model, LayerScale, custom blocks, ...) builds the full model instead.
_TEXT_DEFAULTS = {"hf_model_name": None, "hf_tokenizer_name": None, "tokenizer_mode": None, "ls_init_value": None,
                  "embed_cls": False, "no_causal_mask": False, "final_ln_after_pool": False, "pool_type": "argmax",
                  "proj_bias": False, "proj_type": "linear", "output_tokens": False, "act_kwargs": None,
                  "norm_kwargs": None, "block_type": None, "qk_norm": False, "scaled_cosine_attn": False,
                  "scale_heads": False, "scale_attn_inner": False, "scale_attn": False, "scale_fc": False}
SINGLE_THREAD_TEXTS = 8    # up to this many texts encode on one thread (more threads wait for each other)
_TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection", "logit_scale")


def _open_clip_dir() -> Path | None:
    spec = importlib.util.find_spec("open_clip")   # finds the package without importing it
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return Path(locations[0]) if locations else None


def arch_config(arch: str) -> dict | None:
    """The open_clip model config of ``arch`` (clefctl's small configs first), read from its JSON
    file without importing open_clip; None when there is no such file."""
    oc = _open_clip_dir()
    for folder in (CONFIG_DIR, oc / "model_configs" if oc else None):
        if folder is not None and (folder / f"{arch}.json").is_file():
            return json.loads((folder / f"{arch}.json").read_text(encoding="utf-8"))
    return None


def lean_text_config(arch: str) -> dict | None:
    """``arch``'s config when its text tower is open_clip's plain CLIP text transformer (what
    :class:`TextTower` builds), else None."""
    cfg = arch_config(arch)
    if not cfg or "siglip" in arch.lower() or cfg.get("custom_text"):
        return None
    text = cfg.get("text_cfg") or {}
    if any(text.get(k, v) != v for k, v in _TEXT_DEFAULTS.items()) or text.get("tokenizer_kwargs"):
        return None
    return cfg


def simple_tokenizer(context_length: int):
    """open_clip's ``SimpleTokenizer`` (what ``open_clip.get_tokenizer`` gives these configs), from
    open_clip's own ``tokenizer.py`` loaded on its own: the file imports no other part of open_clip."""
    import sys

    mod = sys.modules.get("open_clip.tokenizer") or sys.modules.get("clefctl._open_clip_tokenizer")
    if mod is None:
        oc = _open_clip_dir()
        try:
            spec = importlib.util.spec_from_file_location("clefctl._open_clip_tokenizer", oc / "tokenizer.py")
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            sys.modules["clefctl._open_clip_tokenizer"] = mod
        except (ImportError, OSError, TypeError, AttributeError):  # a future layout: the package's own
            import open_clip

            mod = open_clip.tokenizer
    default = getattr(mod, "_tokenizer", None)   # the module builds one at import: reuse its vocabulary
    if isinstance(default, mod.SimpleTokenizer) and getattr(default, "reduction_fn", None) is None:
        import copy

        tokenizer = copy.copy(default)
        tokenizer.context_length = int(context_length)
        return tokenizer
    return mod.SimpleTokenizer(context_length=context_length)


class QuickGELU(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def _empty(*shape: int) -> torch.nn.Parameter:
    """An uninitialised parameter: every one is replaced by the checkpoint's tensor (``assign``),
    so the tower is built without drawing random weights."""
    return torch.nn.Parameter(torch.empty(shape), requires_grad=False)


class _Linear(torch.nn.Module):
    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight, self.bias = _empty(n_out, n_in), _empty(n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class _Attention(torch.nn.Module):
    """``nn.MultiheadAttention``'s parameters (packed q/k/v projection, output projection),
    computed with ``scaled_dot_product_attention``."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight, self.in_proj_bias = _empty(3 * width, width), _empty(3 * width)
        self.out_proj = _Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        q, k, v = (t.reshape(b, n, self.heads, w // self.heads).transpose(1, 2)
                   for t in F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(y.transpose(1, 2).reshape(b, n, w))


class _Block(torch.nn.Module):
    """open_clip's ``ResidualAttentionBlock`` (pre-norm attention + MLP), with its parameter names."""

    def __init__(self, width: int, heads: int, mlp_width: int, quick_gelu: bool):
        super().__init__()
        self.ln_1 = torch.nn.LayerNorm(width)
        self.attn = _Attention(width, heads)
        self.ln_2 = torch.nn.LayerNorm(width)
        self.mlp = torch.nn.Sequential(OrderedDict([
            ("c_fc", _Linear(width, mlp_width)),
            ("gelu", QuickGELU() if quick_gelu else torch.nn.GELU()),
            ("c_proj", _Linear(mlp_width, width))]))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class _Blocks(torch.nn.Module):
    def __init__(self, blocks: list):
        super().__init__()
        self.resblocks = torch.nn.ModuleList(blocks)


class TextTower(torch.nn.Module):
    """The text half of open_clip's CLIP: token and position embeddings, causal transformer,
    final LayerNorm, the end-of-text token's features, projection. Parameter names are CLIP's, so
    a CLIP state dict's text keys load as they are; ``forward`` equals ``CLIP.encode_text``
    (computed only up to the last end-of-text token, as :func:`encode_text_trimmed` does)."""

    def __init__(self, cfg: dict, quick_gelu: bool):
        super().__init__()
        t = cfg["text_cfg"]
        width, ctx = int(t.get("width", 512)), int(t.get("context_length", 77))
        mlp = int(width * float(t.get("mlp_ratio", 4.0)))
        self.context_length = ctx
        vocab = int(t.get("vocab_size", 49408))
        self.token_embedding = torch.nn.Embedding(vocab, width, _weight=torch.empty(vocab, width))
        self.positional_embedding = _empty(ctx, width)
        self.transformer = _Blocks([_Block(width, int(t.get("heads", 8)), mlp, quick_gelu)
                                    for _ in range(int(t.get("layers", 12)))])
        self.ln_final = torch.nn.LayerNorm(width)
        self.text_projection = _empty(width, int(cfg["embed_dim"]))
        self.logit_scale = _empty()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        end = tokens.argmax(dim=-1)                      # the end-of-text token has the highest id
        n = int(end.max()) + 1
        x = self.token_embedding(tokens[:, :n]) + self.positional_embedding[:n]
        mask = torch.full((n, n), float("-inf"), device=x.device).triu_(1)
        for block in self.transformer.resblocks:
            x = block(x, mask)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0], device=x.device), end] @ self.text_projection


class TextModel:
    """The text-only part of a :class:`~clefctl.model.ClefModel` (what a text query needs):
    ``encode_texts``, ``tokenizer``, ``fingerprint`` (the full model's), ``meta``, ``logit_scale``,
    ``embed_dim``, ``arch``; ``towers`` is ``"text"``."""

    towers = "text"

    def __init__(self, tower: TextTower, arch: str, fingerprint: str, tokenizer, report, quick_gelu: bool,
                 device: torch.device):
        self.tower, self.arch, self.fingerprint, self.tokenizer = tower, arch, fingerprint, tokenizer
        self.load_report, self.quick_gelu, self.device = report, quick_gelu, device
        self.embed_dim = int(tower.text_projection.shape[1])

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.tower.logit_scale.exp()

    @property
    def meta(self) -> dict:
        return self.load_report.meta

    def encode_texts(self, texts: Iterable[str], batch_size: int = 256) -> torch.Tensor:
        """A list of strings -> (N, D) unit float32 (as ``ClefModel.encode_texts``)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        ClefModel.warn_if_cut(self, texts)
        outs = []
        threads = torch.get_num_threads()
        if len(texts) <= SINGLE_THREAD_TEXTS and self.device.type == "cpu":
            torch.set_num_threads(1)   # a query's few tokens: threads only wait for each other
        try:
            with torch.inference_mode():
                for s in range(0, len(texts), batch_size):
                    tokens = self.tokenizer(texts[s:s + batch_size]).to(self.device)
                    outs.append(F.normalize(self.tower(tokens).float(), dim=-1).cpu())
        finally:
            torch.set_num_threads(threads)
        return torch.cat(outs) if outs else torch.zeros(0, self.embed_dim)

    def warn_if_cut(self, texts) -> list[str]:
        return ClefModel.warn_if_cut(self, list(texts))


def _text_state_dict(sd: dict) -> dict:
    out = {k: v for k, v in strip_prefix(sd).items() if k.startswith(_TEXT_KEYS) and isinstance(v, torch.Tensor)}
    out = {k: (v.float() if v.is_floating_point() and v.dtype != torch.float32 else v) for k, v in out.items()}
    if "logit_scale" in out:
        out["logit_scale"] = out["logit_scale"].reshape([])
    return out


def create_text(arch: str = "ViT-B-16", weights: str | None = None, device: str | None = None, *, seed: int = 0,
                trust_checkpoint: bool = False):
    """A model that encodes texts only, with the fingerprint :func:`~clefctl.model.create` gives.

    For a weights file of an architecture whose text tower is open_clip's plain CLIP text
    transformer (:func:`lean_text_config`), only the tokenizer and the text tower are built and
    only the text weights are read (the checkpoint is memory-mapped): a :class:`TextModel`. Anything
    else (random weights, whose text tower depends on the image tower's draws from the seed; Hub
    folders, pretrained tags, other text towers, a file whose text keys do not fit) returns the
    full :class:`~clefctl.model.ClefModel` of :func:`~clefctl.model.create`."""
    def full():
        return create(arch, weights, device, seed=seed, trust_checkpoint=trust_checkpoint)

    ref = parse_weights(weights)
    path = ref.path
    if ref.kind != "file" or not path.is_file() or lean_text_config(arch) is None:
        return full()
    report = LoadReport()
    sd, arch_used, quick_gelu = read_file_weights(
        path, arch, report, trust_checkpoint=trust_checkpoint, mmap=True,
        uses_quick_gelu=lambda a: bool((arch_config(a) or {}).get("quick_gelu", False)))
    cfg = lean_text_config(arch_used)
    if cfg is None:
        return full()
    quick_gelu = quick_gelu or bool(cfg.get("quick_gelu", False))
    tower = TextTower(cfg, quick_gelu)
    text_sd = _text_state_dict(sd)
    want = {k: tuple(v.shape) for k, v in tower.state_dict().items()}
    if {k: tuple(v.shape) for k, v in text_sd.items() if k in want} != want:
        log.info("text weights of %s do not fit the lean text tower: building the whole model", path)
        return full()
    tower.load_state_dict({k: text_sd[k] for k in want}, assign=True)
    dev = resolve_device(device)
    tower.to(dev).eval()
    suffix = "+quickgelu" if quick_gelu and not cfg.get("quick_gelu", False) else ""
    fingerprint = f"{arch_used}{suffix}@sha256:{sha256_file_cached(path)}"
    tokenizer = simple_tokenizer(int(cfg["text_cfg"].get("context_length", 77)))
    for note in report.notes:
        log.info("%s", note)
    model = TextModel(tower, arch_used, fingerprint, tokenizer, report, quick_gelu, dev)
    if report.meta or report.extras:
        check_head(report.meta, report.extras, model.embed_dim, path)
    return model
