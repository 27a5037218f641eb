"""Weight files by content: safetensors, PyTorch pickles (``weights_only``), TorchScript archives;
FaRL / OpenAI / open_clip / clefctl key layouts; architecture inference from a state dict."""

from __future__ import annotations

import hashlib
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from clefctl.errors import ClefError
from clefctl.model.configs import register_configs

log = logging.getLogger("clefctl.model")


# Keys in FaRL's release files that belong to its masked-image-modelling head, not to CLIP.
FARL_EXTRA_PREFIXES = ("visual.mask_token", "visual.lm_transformer.", "visual.ln_lm.", "visual.lm_head.")
# Keys that OpenAI's TorchScript archives carry besides the weights.
OPENAI_META_KEYS = ("input_resolution", "context_length", "vocab_size")
# Buffers some files carry that the model computes itself (OpenAI's text causal mask).
DERIVED_KEYS = ("attn_mask",)
MIN_KEY_MATCH = 0.5



@dataclass
class LoadReport:
    """What happened when weights were loaded: for the log, ``clefctl info`` and tests."""

    source: str = "random"              # random | farl | openai | openai-torchscript | open_clip |
    #                                       safetensors | clefctl | pretrained-tag
    path: str | None = None
    dropped: list[str] = field(default_factory=list)     # keys removed on purpose (FaRL MIM head)
    missing: list[str] = field(default_factory=list)     # model keys the file did not have
    unexpected: list[str] = field(default_factory=list)  # file keys the model does not have
    notes: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)             # clefctl checkpoint metadata
    extras: dict = field(default_factory=dict)           # clefctl checkpoint tensors besides weights


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


DIGEST_CACHE = "weights-digests.json"   # in cache_dir(): sha256 of weights files already hashed


def sha256_file_cached(path: str | Path) -> str:
    """:func:`sha256_file`, remembered in ``<cache_dir>/weights-digests.json`` by the file's real
    path, size, inode and modification time (ns): a rewritten file is hashed again. For model
    fingerprints on a hot path (a ViT-B-16 checkpoint takes about a second to hash); downloads
    are verified with :func:`sha256_file` itself."""
    import json
    import os

    from clefctl.paths import cache_dir, write_json_atomic

    real = os.path.realpath(path)
    st = os.stat(real)
    stamp = [st.st_size, st.st_ino, st.st_mtime_ns]
    cache_file = cache_dir() / DIGEST_CACHE
    try:
        known = json.loads(cache_file.read_text(encoding="utf-8"))
        if not isinstance(known, dict):
            known = {}
    except (OSError, ValueError):
        known = {}
    hit = known.get(real)
    if isinstance(hit, dict) and hit.get("stamp") == stamp and isinstance(hit.get("sha256"), str):
        return hit["sha256"]
    digest = sha256_file(real)
    known = {k: v for k, v in known.items() if k != real and os.path.exists(k)}
    known[real] = {"stamp": stamp, "sha256": digest}
    try:
        write_json_atomic(cache_file, dict(list(known.items())[-256:]))
    except OSError:  # a read-only cache folder: hash again next time
        pass
    return digest


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n < (1 << 30) and head[8:9] == b"{"


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _looks_like_torch_pickle(path: Path) -> bool:
    """A ``torch.save`` file: a zip archive (torch >= 1.6) or a legacy pickle (protocol 2+ opcode)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04":  # a zip cut short (no central directory): corrupt, not foreign
        return True
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


def _needs_code(exc: BaseException) -> str | None:
    """The class a weights_only load refused (``Unsupported global: GLOBAL x.Y``), or None when the
    failure is corruption rather than an object that needs arbitrary unpickling."""
    import re

    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    if m:
        return m.group(1)
    return "an unsupported object" if "weights_only" in str(exc) and "GLOBAL" in str(exc) else None


def _refuse_untrusted(path: Path, what: str, hint: str) -> ClefError:
    return ClefError(f"refusing to load: {what}", path=path,
                     hint=f"{hint}; only if you trust where this file came from, pass --trust-checkpoint")


def read_weights_file(path: str | Path, trust_checkpoint: bool = False, mmap: bool = False) -> tuple[Any, str]:
    """Load a weights file by content. Returns (object, container) with container in
    ``safetensors | torchscript | pickle``.

    Safetensors and pickles of plain tensors and containers load as they are
    (``torch.load(weights_only=True)``). Anything that can carry code is refused unless
    ``trust_checkpoint`` is set by the caller's own command line: pickles holding Python objects
    and TorchScript archives (their ``code/`` is compiled and run by ``torch.jit.load``).
    Files that are none of these formats, or are cut short, get a :class:`ClefError` naming the file.
    ``mmap`` maps a PyTorch zip checkpoint (tensors are read when touched); others are read.
    """
    path = Path(path)
    if not path.is_file():
        raise ClefError("weights file not found", path=path, hint="give a path to a .pt/.pth/.safetensors file or an open_clip pretrained tag")
    if path.stat().st_size == 0:
        raise ClefError("weights file is empty (0 bytes)", path=path, hint="the download or copy was probably interrupted")
    if _is_safetensors(path):
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu"), "safetensors"
        except Exception as exc:  # corrupt header or truncated file
            raise ClefError(f"cannot read safetensors file: {_first_line(exc)}", path=path) from None
    if _is_torchscript(path):
        if not trust_checkpoint:
            raise _refuse_untrusted(path, "this is a TorchScript archive, whose code runs when it is loaded",
                                    "OpenAI's CLIP archives also load as open_clip pretrained tags "
                                    "(e.g. --weights openai)")
        try:
            import warnings

            with warnings.catch_warnings():  # torch.jit is deprecated, but OpenAI ships archives in it
                warnings.simplefilter("ignore", FutureWarning)
                scripted = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise ClefError(f"cannot read TorchScript archive: {_first_line(exc)}", path=path) from None
        log.warning("loading TorchScript archive %s (--trust-checkpoint)", path)
        return scripted.state_dict(), "torchscript"
    if not _looks_like_torch_pickle(path):
        with open(path, "rb") as f:
            head = f.read(8)
        raise ClefError(f"not a weights file: neither a PyTorch checkpoint, a safetensors file nor a "
                        f"TorchScript archive (it starts with {head!r})", path=path,
                        hint="give a .pt/.pth/.safetensors file, an open_clip pretrained tag, or 'random'")
    try:
        mapped = mmap and zipfile.is_zipfile(path)  # torch maps only the zip format
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mapped), "pickle"
    except Exception as exc:  # noqa: BLE001 - pickle internals raise KeyError/IndexError on garbage
        refused = _needs_code(exc)
        if refused is None:
            raise ClefError(f"not a readable PyTorch weights file, corrupt or cut short ({_first_line(exc)})",
                            path=path, hint="download or copy it again") from None
        if not trust_checkpoint:
            raise _refuse_untrusted(path, f"the file contains Python objects ({refused}) that need "
                                          "arbitrary unpickling, which can run code",
                                    "re-save it as a plain state dict or safetensors") from None
    log.warning("loading %s with full unpickling (--trust-checkpoint)", path)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False), "pickle"
    except Exception as exc:  # noqa: BLE001 - a trusted file can still be broken or need missing code
        raise ClefError(f"cannot unpickle the weights file even with --trust-checkpoint: "
                        f"{type(exc).__name__}: {_first_line(exc)}", path=path,
                        hint="it may need a Python package that is not installed, or be corrupt") from None


def _unwrap(obj: Any) -> tuple[dict, dict, dict]:
    """Split a loaded object into (state_dict, clefctl metadata, extra tensors)."""
    meta: dict = {}
    extras: dict = {}
    if isinstance(obj, dict) and "clefctl" in obj and isinstance(obj.get("state_dict"), dict):
        meta = dict(obj["clefctl"])
        extras = {k: v for k, v in obj.items() if k not in ("clefctl", "state_dict")}
        return obj["state_dict"], meta, extras
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(k, str) for k in inner):
                return inner, meta, extras
        return obj, meta, extras
    raise ClefError(f"weights file holds a {type(obj).__name__}, not a state dict")


def _strip_prefix(sd: dict) -> dict:
    for prefix in ("module.", "_orig_mod."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def state_dict_signature(sd: dict) -> dict | None:
    """The architecture numbers a CLIP ViT state dict implies (None when it is not one)."""
    try:
        if "visual.conv1.weight" in sd:
            conv = sd["visual.conv1.weight"]
            width, _, patch, _ = conv.shape
        else:  # a convolutional stem (CONV_STEMS): one stride-2 3x3 conv per halving
            width = sd["visual.class_embedding"].shape[0]
            patch = 2 ** sum(1 for k, v in sd.items() if k.startswith("visual.conv1.") and k.endswith(".weight")
                             and v.ndim == 4 and v.shape[-1] == 3)
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        layers = len({k.split(".")[3] for k in sd if k.startswith("visual.transformer.resblocks.")})
        text_layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
        return {
            "embed_dim": int(sd["text_projection"].shape[1]),
            "image_size": int(patch * grid),
            "patch_size": int(patch),
            "width": int(width),
            "layers": int(layers),
            "text_width": int(sd["ln_final.weight"].shape[0]),
            "text_layers": int(text_layers),
            "context_length": int(sd["positional_embedding"].shape[0]),
        }
    except (KeyError, AttributeError, IndexError, ValueError):
        return None


def _config_signature(cfg: dict) -> dict | None:
    v, t = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    if not isinstance(v.get("layers"), int) or "patch_size" not in v or "hf_model_name" in t or "timm_model_name" in v:
        return None
    image_size = v.get("image_size", 224)
    if not isinstance(image_size, int):
        return None
    return {
        "embed_dim": cfg.get("embed_dim"),
        "image_size": image_size,
        "patch_size": v["patch_size"],
        "width": v.get("width"),
        "layers": v["layers"],
        "text_width": t.get("width"),
        "text_layers": t.get("layers"),
        "context_length": t.get("context_length", 77),
    }


def infer_architectures(sd: dict) -> list[str]:
    """open_clip/clefctl architecture names whose shapes fit a state dict (may be empty)."""
    sig = state_dict_signature(sd)
    if sig is None:
        return []
    register_configs()
    import open_clip

    found = []
    for name in open_clip.list_models():
        cs = _config_signature(open_clip.get_model_config(name) or {})
        if cs == sig:
            found.append(name)
    return found


def _detect_source(sd: dict, container: str, meta: dict) -> str:
    if meta:
        return "clefctl"
    if container == "torchscript":
        return "openai-torchscript"
    if any(k.startswith(FARL_EXTRA_PREFIXES) for k in sd):
        return "farl"
    if container == "safetensors":
        return "safetensors"
    if any(k in sd for k in OPENAI_META_KEYS):
        return "openai"
    first = next(iter(sd.values()), None)
    # OpenAI's released state dicts keep most weights in float16; open_clip checkpoints are fp32/bf16.
    if isinstance(first, torch.Tensor) and "visual.proj" in sd and sd["visual.proj"].dtype == torch.float16:
        return "openai"
    return "open_clip"


def _apply_state_dict(clip: torch.nn.Module, sd: dict, arch: str, path: Path, report: LoadReport) -> None:
    from open_clip.model import resize_pos_embed

    sd = _strip_prefix(dict(sd))
    dropped = [k for k in sd if k.startswith(FARL_EXTRA_PREFIXES)]
    for k in dropped:
        del sd[k]
    if dropped:
        report.dropped = sorted(dropped)
        report.notes.append(f"dropped {len(dropped)} FaRL masked-image-modelling keys (not part of CLIP)")
    for k in OPENAI_META_KEYS + DERIVED_KEYS:
        sd.pop(k, None)
    target = clip.state_dict()
    if "logit_scale" in sd and sd["logit_scale"].ndim != target["logit_scale"].ndim:
        sd["logit_scale"] = sd["logit_scale"].reshape(target["logit_scale"].shape)
    # A different input size is legitimate (the paper fine-tunes at 224, users may use others).
    if "visual.positional_embedding" in sd and sd["visual.positional_embedding"].shape != target[
            "visual.positional_embedding"].shape and sd["visual.positional_embedding"].shape[-1] == target[
            "visual.positional_embedding"].shape[-1]:
        resize_pos_embed(sd, clip)
        report.notes.append("resized the image position embedding to the model's input size")
    same = [k for k in target if k in sd and tuple(sd[k].shape) == tuple(target[k].shape)]
    wrong_shape = [k for k in target if k in sd and tuple(sd[k].shape) != tuple(target[k].shape)]
    missing = [k for k in target if k not in sd]
    if len(same) < MIN_KEY_MATCH * len(target) or wrong_shape:
        fits = infer_architectures(sd)
        hint = (f"the file looks like architecture {', '.join(fits[:4])}: pass --arch {fits[0]}" if fits
                else "check that the file is a CLIP checkpoint for this architecture")
        detail = (f"{len(wrong_shape)} tensors have other shapes (e.g. {wrong_shape[0]})" if wrong_shape
                  else f"only {len(same)} of {len(target)} model keys are in the file")
        raise ClefError(f"weights do not fit architecture {arch}: {detail}", path=path, hint=hint)
    if missing:  # all or nothing: a model with some tensors left at their initial values is not this model
        raise ClefError(f"incomplete weights for {arch}: {len(missing)} of the {len(target)} tensors the "
                        f"architecture needs are missing from the file (e.g. {', '.join(missing[:3])})",
                        path=path, hint="the file is cut or was saved from part of a model: copy or export it "
                                        "again from the complete checkpoint")
    clip.load_state_dict({k: sd[k] for k in same}, strict=True)
    report.missing = []
    report.unexpected = sorted(k for k in sd if k not in target)
    if report.unexpected:
        import warnings

        warnings.warn(f"{path}: {len(report.unexpected)} tensors in the file are not part of {arch} and were "
                      f"left out (e.g. {report.unexpected[0]})", UserWarning, stacklevel=3)


def check_head(meta: dict, extras: dict, embed_dim: int, path, *, scoring: bool = False) -> None:
    """A fine-tuned checkpoint's class list, task and scoring tensors agree, or one ClefError naming the
    disagreement: ``classes`` distinct non-empty strings, ``task`` au or fer, ``name_embeddings`` one row
    of ``embed_dim`` per class, a linear head (``head_weight``, ``head_bias``) of the same classes.
    ``scoring``: the model is about to score images, so the classes and a way to score them must be there."""
    fix = "the file was edited or damaged: export or save it again from the fine-tuning run"
    if not isinstance(meta, dict) or not isinstance(extras, dict):
        raise ClefError("the checkpoint's metadata or extras are not a mapping", path=path, hint=fix)
    heads = [k for k in ("name_embeddings", "head_weight", "head_bias") if k in extras]
    if "classes" not in meta and not heads and not scoring:
        return
    classes, task = meta.get("classes"), meta.get("task")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes) \
            or len(set(classes)) != len(classes):
        raise ClefError(f"the checkpoint's class list is not a list of distinct names: {str(classes)[:80]}",
                        path=path, hint=fix)
    if task not in ("au", "fer") and (scoring or task is not None):
        raise ClefError(f"the checkpoint's task is {task!r}, not au or fer", path=path, hint=fix)
    shapes = {"name_embeddings": (len(classes), embed_dim)}
    if meta.get("head") == "linear" or "head_weight" in extras or "head_bias" in extras:
        shapes.update(head_weight=(len(classes), embed_dim), head_bias=(len(classes),))
    for name, shape in shapes.items():
        t = extras.get(name)
        if t is None and not scoring and name not in heads:
            continue
        if not isinstance(t, torch.Tensor):
            raise ClefError(f"the checkpoint has no {name} tensor for its {len(classes)} classes", path=path, hint=fix)
        if tuple(t.shape) != shape:
            raise ClefError(f"the checkpoint's {name} has shape {tuple(t.shape)}, but its {len(classes)} classes "
                            f"and {embed_dim}-dimensional features need {shape}", path=path, hint=fix)
        if not torch.isfinite(t.float()).all():
            raise ClefError(f"the checkpoint's {name} holds NaN or infinite values", path=path, hint=fix)
