"""The CLEF model factory: open_clip architectures, small CPU configs, and the weight formats people have.

``create(arch, weights, device)`` builds an open_clip CLIP model and loads weights detected by
content, not by file name:

* a FaRL release file (``{"state_dict": ...}`` with OpenAI-CLIP key names plus masked-image-modelling
  extras, which are dropped with a note); FaRL was trained with QuickGELU, which is switched on;
* an OpenAI CLIP state dict or TorchScript archive (QuickGELU as well);
* an open_clip checkpoint (``state_dict``, possibly ``module.``-prefixed) or a ``.safetensors`` file;
* a clefctl checkpoint (written by :func:`save_checkpoint`; carries its architecture);
* an open_clip pretrained tag such as ``laion2b_s34b_b88k`` (needs internet or a warm cache).

Every ``torch.load`` uses ``weights_only=True``; a file that needs arbitrary unpickling is refused
unless ``trust_checkpoint=True`` (``--trust-checkpoint`` on the command line).

Example::

    >>> from clefctl.model import create
    >>> m = create("clef-tiny")                       # random init, seed 0
    >>> m.encode_texts(["a photo of a person with lip corner puller."]).shape
    torch.Size([1, 128])
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F

from clefctl.errors import ClefError

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).with_name("model_configs")
CHECKPOINT_FORMAT = 1

# Keys in FaRL's release files that belong to its masked-image-modelling head, not to CLIP.
FARL_EXTRA_PREFIXES = ("visual.mask_token", "visual.lm_transformer.", "visual.ln_lm.", "visual.lm_head.")
# Keys that OpenAI's TorchScript archives carry besides the weights.
OPENAI_META_KEYS = ("input_resolution", "context_length", "vocab_size")
MIN_KEY_MATCH = 0.5

_registered = False

# clefctl's own from-scratch configs replace the ViT's patchify convolution (one k x k conv with
# stride k) by a convolutional stem: stride-2 3x3 convolutions with BatchNorm and ReLU, then a 1x1
# convolution to the transformer width (Xiao et al., "Early convolutions help transformers see
# better", NeurIPS 2021). The token grid, the transformer and everything after it are unchanged.
# Measured on fold 1 of a 41-subject synthetic-au (27 training subjects), 800 steps of 32 images,
# lr 1e-3: held-out mean AU F1 59 with the patchify conv, 89 with this stem (88 on the default
# 12-subject set); a small CNN reaches 86 on the same split, so the plain ViT, not the data, was
# what kept clef-tiny from learning. clef-small gets a stem too; its learning was not measured.
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


def register_configs() -> None:
    """Register clefctl's small architectures (``clef-tiny``, ``clef-small``) with open_clip."""
    global _registered
    if _registered:
        return
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)
    _registered = True


def list_architectures() -> list[str]:
    """Every architecture name ``create`` accepts: open_clip's plus clefctl's small configs."""
    register_configs()
    import open_clip

    return open_clip.list_models()


def clef_architectures() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


# ----------------------------------------------------------------------------------------------
# Weight files
# ----------------------------------------------------------------------------------------------


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


def read_weights_file(path: str | Path, trust_checkpoint: bool = False) -> tuple[Any, str]:
    """Load a weights file by content. Returns (object, container) with container in
    ``safetensors | torchscript | pickle``.

    Safetensors and pickles of plain tensors and containers load as they are
    (``torch.load(weights_only=True)``). Anything that can carry code is refused unless
    ``trust_checkpoint`` is set by the caller's own command line: pickles holding Python objects
    and TorchScript archives (their ``code/`` is compiled and run by ``torch.jit.load``).
    Files that are none of these formats, or are cut short, get a :class:`ClefError` naming the file.
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
        return torch.load(str(path), map_location="cpu", weights_only=True), "pickle"
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
    for k in OPENAI_META_KEYS:
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
    if len(same) < MIN_KEY_MATCH * len(target) or wrong_shape:
        fits = infer_architectures(sd)
        hint = (f"the file looks like architecture {', '.join(fits[:4])}: pass --arch {fits[0]}" if fits
                else "check that the file is a CLIP checkpoint for this architecture")
        detail = (f"{len(wrong_shape)} tensors have other shapes (e.g. {wrong_shape[0]})" if wrong_shape
                  else f"only {len(same)} of {len(target)} model keys are in the file")
        raise ClefError(f"weights do not fit architecture {arch}: {detail}", path=path, hint=hint)
    result = clip.load_state_dict({k: sd[k] for k in same}, strict=False)
    report.missing = sorted(result.missing_keys)
    report.unexpected = sorted(k for k in sd if k not in target)
    if report.missing:
        report.notes.append(f"{len(report.missing)} model keys missing from the file kept their initial "
                            f"values (e.g. {report.missing[0]})")
    if report.unexpected:
        report.notes.append(f"{len(report.unexpected)} keys in the file are not used by {arch} "
                            f"(e.g. {report.unexpected[0]})")


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------


class ClefModel:
    """An open_clip CLIP model with CLEF's encode helpers.

    ``clip`` is the underlying open_clip model (train it directly); ``encode_images`` and
    ``encode_texts`` are for inference: batched, ``torch.no_grad``, L2-normalised float32 on CPU.
    """

    def __init__(self, clip: torch.nn.Module, arch: str, fingerprint: str, preprocess, tokenizer,
                 device: torch.device, report: LoadReport, quick_gelu: bool = False):
        self.clip = clip
        self.arch = arch
        self.fingerprint = fingerprint
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = device
        self.load_report = report
        self.quick_gelu = quick_gelu
        pp = getattr(clip.visual, "preprocess_cfg", {}) or {}
        size = pp.get("size", clip.visual.image_size)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.mean = tuple(pp.get("mean", (0.48145466, 0.4578275, 0.40821073)))
        self.std = tuple(pp.get("std", (0.26862954, 0.26130258, 0.27577711)))
        self.embed_dim = int(clip.text_projection.shape[1]) if hasattr(clip, "text_projection") and \
            clip.text_projection is not None else int(clip.visual.output_dim)

    @property
    def logit_scale(self) -> torch.Tensor:
        """The multiplier 1/tau of Eq. 3-5: exp of CLIP's learnable logit scale (keeps its gradient)."""
        return self.clip.logit_scale.exp()

    @property
    def meta(self) -> dict:
        """Metadata of the clefctl checkpoint this model came from ({} otherwise)."""
        return self.load_report.meta

    def _run(self, fn, items: Sequence, batch_size: int, prepare) -> torch.Tensor:
        was_training = self.clip.training
        self.clip.eval()
        outs = []
        try:
            with torch.no_grad():
                for start in range(0, len(items), batch_size):
                    batch = prepare(items[start:start + batch_size]).to(self.device)
                    outs.append(F.normalize(fn(batch).float(), dim=-1).cpu())
        finally:
            self.clip.train(was_training)
        if not outs:
            return torch.zeros(0, self.embed_dim)
        return torch.cat(outs)

    def encode_images(self, pixels, batch_size: int = 64) -> torch.Tensor:
        """(N, 3, H, W) preprocessed pixels, or a list of PIL images -> (N, D) unit float32."""
        if isinstance(pixels, torch.Tensor):
            if pixels.ndim == 3:
                pixels = pixels.unsqueeze(0)
            dtype = next(self.clip.parameters()).dtype
            return self._run(self.clip.encode_image, pixels, batch_size, lambda b: b.to(dtype))
        items = list(pixels)
        dtype = next(self.clip.parameters()).dtype
        return self._run(self.clip.encode_image, items, batch_size,
                         lambda b: torch.stack([self.preprocess(im) for im in b]).to(dtype))

    def encode_texts(self, texts: Iterable[str], batch_size: int = 256) -> torch.Tensor:
        """A list of strings -> (N, D) unit float32."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        self.warn_if_cut(texts)
        return self._run(self.clip.encode_text, texts, batch_size, lambda b: self.tokenizer(list(b)))

    def warn_if_cut(self, texts: Sequence[str]) -> list[str]:
        """Warn (once per call, naming the first) about texts longer than the text tower's context,
        which the tokenizer cuts; returns the texts that are cut."""
        import warnings

        ctx = int(getattr(self.tokenizer, "context_length", 0) or 0)
        encode = getattr(self.tokenizer, "encode", None)
        if ctx <= 0 or encode is None:
            return []
        cut = []
        for t in dict.fromkeys(texts):
            if len(t) < ctx:  # a BPE token spans at least one character: cannot be too long
                continue
            n = len(encode(t)) + 2  # + start and end of text
            if n > ctx:
                cut.append(t)
        if cut:
            first = cut[0]
            n = len(encode(first)) + 2
            more = f" (and {len(cut) - 1} more)" if len(cut) > 1 else ""
            warnings.warn(f"text of {n} tokens is longer than the model's {ctx}-token context and is cut: "
                          f"{first[:60]!r}...{more}; shorten it to keep its end", UserWarning, stacklevel=3)
        return cut

    def to(self, device) -> "ClefModel":
        self.device = torch.device(device)
        self.clip.to(self.device)
        return self


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ClefError(f"unknown device {device!r} ({exc})", hint="use cpu, cuda, cuda:1 or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ClefError(f"device {device} requested but CUDA is not available on this machine",
                        hint="use --device cpu")
    return dev


def _build(arch: str, quick_gelu: bool, device: torch.device, seed: int):
    import open_clip

    register_configs()
    if arch not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if arch.lower() in m.lower()][:6]
        raise ClefError(f"unknown architecture {arch!r}",
                        hint=f"did you mean {', '.join(close)}?" if close else "see `clefctl info` for the list")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # open_clip warns "no pretrained weights loaded" on purpose-random init
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            clip, _, preprocess = open_clip.create_model_and_transforms(
                arch, pretrained=None, device="cpu", force_quick_gelu=quick_gelu)
            _add_stem(clip, arch)
    finally:
        root.setLevel(level)
    tokenizer = open_clip.get_tokenizer(arch)
    return clip, preprocess, tokenizer


def _arch_uses_quick_gelu(arch: str) -> bool:
    import open_clip

    register_configs()
    return bool((open_clip.get_model_config(arch) or {}).get("quick_gelu", False))


def create(arch: str = "ViT-B-16", weights: str | None = None, device: str | None = None, *,
           seed: int = 0, trust_checkpoint: bool = False, cache_dir: str | None = None) -> ClefModel:
    """Build ``arch`` and load ``weights`` (a file detected by content, or an open_clip pretrained tag).

    With ``weights=None`` the model is randomly initialised from ``seed`` and its fingerprint is
    ``<arch>@random:<seed>``; with a file it is ``<arch>@sha256:<digest>`` (the file's content).
    A clefctl checkpoint carries its own architecture, which is used when ``arch`` is left at the
    default; FaRL and OpenAI weights switch QuickGELU on (they were trained with it).
    """
    dev = resolve_device(device)
    report = LoadReport()
    quick_gelu = False
    if weights is None or weights == "":
        clip, preprocess, tokenizer = _build(arch, False, dev, seed)
        fingerprint = f"{arch}@random:{seed}"
    elif Path(weights).expanduser().exists() or any(sep in str(weights) for sep in ("/", "\\")) or \
            str(weights).endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt")):
        path = Path(weights).expanduser()
        obj, container = read_weights_file(path, trust_checkpoint=trust_checkpoint)
        sd, meta, extras = _unwrap(obj)
        source = _detect_source(sd, container, meta)
        report.source, report.path, report.meta, report.extras = source, str(path), meta, extras
        if meta:
            ck_arch = meta.get("arch")
            if ck_arch and ck_arch != arch:
                if arch != "ViT-B-16":
                    raise ClefError(f"checkpoint was trained with architecture {ck_arch}, not {arch}",
                                    path=path, hint=f"pass --arch {ck_arch} or leave --arch out")
                arch = ck_arch
            quick_gelu = bool(meta.get("quick_gelu", False))
        elif source in ("farl", "openai", "openai-torchscript") and not _arch_uses_quick_gelu(arch):
            quick_gelu = True
            report.notes.append(f"{source} weights were trained with QuickGELU: building {arch} with QuickGELU")
        clip, preprocess, tokenizer = _build(arch, quick_gelu, dev, seed)
        _apply_state_dict(clip, sd, arch, path, report)
        fingerprint = f"{arch}{'+quickgelu' if quick_gelu and not _arch_uses_quick_gelu(arch) else ''}" \
                      f"@sha256:{sha256_file(path)}"
    else:
        clip, preprocess, tokenizer = _load_pretrained_tag(arch, str(weights), cache_dir)
        report.source, report.path = "pretrained-tag", str(weights)
        fingerprint = f"{arch}@{weights}"
    for note in report.notes:
        log.info("%s", note)
    clip.to(dev).eval()
    return ClefModel(clip, arch, fingerprint, preprocess, tokenizer, dev, report, quick_gelu)


def _load_pretrained_tag(arch: str, tag: str, cache_dir: str | None):
    import open_clip

    register_configs()
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if tag not in tags:
        raise ClefError(
            f"weights {tag!r} is neither an existing file nor an open_clip pretrained tag for {arch}",
            hint=f"tags for {arch}: {', '.join(tags)}" if tags else f"{arch} has no pretrained tags; give a weights file")
    try:
        clip, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=tag, cache_dir=cache_dir)
    except Exception as exc:  # network errors come in many types (requests, urllib, huggingface_hub)
        raise ClefError(
            f"could not fetch open_clip weights {arch}/{tag}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
            hint="this needs internet access or a warm cache (HF_HOME / --cache-dir); "
                 "download the file elsewhere and pass its path as --weights") from None
    return clip, preprocess, open_clip.get_tokenizer(arch)


# ----------------------------------------------------------------------------------------------
# clefctl checkpoints
# ----------------------------------------------------------------------------------------------


def _json_safe(meta: dict) -> dict:
    """Metadata goes through json so that weights_only loading never meets an odd type."""
    return json.loads(json.dumps(meta, default=str))


def save_checkpoint(path: str | Path, model: ClefModel | torch.nn.Module, meta: dict,
                    extras: dict[str, torch.Tensor] | None = None, arch: str | None = None) -> Path:
    """Write a clefctl checkpoint atomically: ``{"clefctl": meta, "state_dict": ..., **extras}``.

    ``meta`` must include or will receive ``arch`` and ``quick_gelu``; ``extras`` holds tensors such as
    the class-name text embeddings a fine-tuned model was trained with. Loads with weights_only=True.
    """
    from clefctl.paths import atomic_path

    clip = model.clip if isinstance(model, ClefModel) else model
    meta = dict(meta)
    if isinstance(model, ClefModel):
        meta.setdefault("arch", model.arch)
        meta.setdefault("quick_gelu", model.quick_gelu)
    elif arch:
        meta.setdefault("arch", arch)
    meta["format"] = CHECKPOINT_FORMAT
    payload = {"clefctl": _json_safe(meta),
               "state_dict": {k: v.detach().cpu() for k, v in clip.state_dict().items()}}
    for k, v in (extras or {}).items():
        payload[k] = v.detach().cpu() if isinstance(v, torch.Tensor) else v
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)
