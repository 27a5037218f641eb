"""Weight files by content: safetensors, PyTorch pickles (``weights_only``), TorchScript archives
(:func:`read_weights_file`, with the trust rules), and the key layouts inside them: FaRL / OpenAI /
open_clip / clefctl (:func:`unwrap`, :func:`strip_prefix`, :func:`detect_source`).

torch is imported only by the functions that load tensors, so that the model resolver (which
imports :mod:`clefctl.weights.hub` on every path) stays cheap.

Example::

    >>> from clefctl.weights.files import read_weights_file, unwrap
    >>> sd, meta, extras = unwrap(read_weights_file("model.pt")[0])      # doctest: +SKIP
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Any

from clefctl.errors import ClefError

log = logging.getLogger("clefctl.model")


# Keys in FaRL's release files that belong to its masked-image-modelling head, not to CLIP.
FARL_EXTRA_PREFIXES = ("visual.mask_token", "visual.lm_transformer.", "visual.ln_lm.", "visual.lm_head.")
# Keys that OpenAI's TorchScript archives carry besides the weights.
OPENAI_META_KEYS = ("input_resolution", "context_length", "vocab_size")
# Buffers some files carry that the model computes itself (OpenAI's text causal mask).
DERIVED_KEYS = ("attn_mask",)


def is_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n < (1 << 30) and head[8:9] == b"{"


def is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def looks_like_torch_pickle(path: Path) -> bool:
    """A ``torch.save`` file: a zip archive (torch >= 1.6) or a legacy pickle (protocol 2+ opcode)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04":  # a zip cut short (no central directory): corrupt, not foreign
        return True
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def first_line(exc: BaseException, limit: int = 160) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


def needs_code(exc: BaseException) -> str | None:
    """The class a weights_only load refused (``Unsupported global: GLOBAL x.Y``), or None when the
    failure is corruption rather than an object that needs arbitrary unpickling."""
    import re

    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    if m:
        return m.group(1)
    return "an unsupported object" if "weights_only" in str(exc) and "GLOBAL" in str(exc) else None


def refuse_untrusted(path: Path, what: str, hint: str) -> ClefError:
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
    import torch

    path = Path(path)
    if not path.is_file():
        raise ClefError("weights file not found", path=path, hint="give a path to a .pt/.pth/.safetensors file or an open_clip pretrained tag")
    if path.stat().st_size == 0:
        raise ClefError("weights file is empty (0 bytes)", path=path, hint="the download or copy was probably interrupted")
    if is_safetensors(path):
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu"), "safetensors"
        except Exception as exc:  # corrupt header or truncated file
            raise ClefError(f"cannot read safetensors file: {first_line(exc)}", path=path) from None
    if is_torchscript(path):
        if not trust_checkpoint:
            raise refuse_untrusted(path, "this is a TorchScript archive, whose code runs when it is loaded",
                                    "OpenAI's CLIP archives also load as open_clip pretrained tags "
                                    "(e.g. --weights openai)")
        try:
            import warnings

            with warnings.catch_warnings():  # torch.jit is deprecated, but OpenAI ships archives in it
                warnings.simplefilter("ignore", FutureWarning)
                scripted = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise ClefError(f"cannot read TorchScript archive: {first_line(exc)}", path=path) from None
        log.warning("loading TorchScript archive %s (--trust-checkpoint)", path)
        return scripted.state_dict(), "torchscript"
    if not looks_like_torch_pickle(path):
        with open(path, "rb") as f:
            head = f.read(8)
        raise ClefError(f"not a weights file: neither a PyTorch checkpoint, a safetensors file nor a "
                        f"TorchScript archive (it starts with {head!r})", path=path,
                        hint="give a .pt/.pth/.safetensors file, an open_clip pretrained tag, or 'random'")
    try:
        mapped = mmap and zipfile.is_zipfile(path)  # torch maps only the zip format
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mapped), "pickle"
    except Exception as exc:  # noqa: BLE001 - pickle internals raise KeyError/IndexError on garbage
        refused = needs_code(exc)
        if refused is None:
            raise ClefError(f"not a readable PyTorch weights file, corrupt or cut short ({first_line(exc)})",
                            path=path, hint="download or copy it again") from None
        if not trust_checkpoint:
            raise refuse_untrusted(path, f"the file contains Python objects ({refused}) that need "
                                          "arbitrary unpickling, which can run code",
                                    "re-save it as a plain state dict or safetensors") from None
    log.warning("loading %s with full unpickling (--trust-checkpoint)", path)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False), "pickle"
    except Exception as exc:  # noqa: BLE001 - a trusted file can still be broken or need missing code
        raise ClefError(f"cannot unpickle the weights file even with --trust-checkpoint: "
                        f"{type(exc).__name__}: {first_line(exc)}", path=path,
                        hint="it may need a Python package that is not installed, or be corrupt") from None


def unwrap(obj: Any) -> tuple[dict, dict, dict]:
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


def strip_prefix(sd: dict) -> dict:
    """``sd`` without a ``module.`` (DDP) or ``_orig_mod.`` (torch.compile) prefix on every key."""
    for prefix in ("module.", "_orig_mod."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd



def detect_source(sd: dict, container: str, meta: dict) -> str:
    """Where a state dict comes from: clefctl | openai-torchscript | farl | safetensors | openai | open_clip."""
    import torch

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

