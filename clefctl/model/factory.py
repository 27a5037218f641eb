"""``create(arch, weights, device) -> ClefModel`` and clefctl checkpoints."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from clefctl.errors import ClefError
from clefctl.model.configs import _add_stem
from clefctl.model.formats import LoadReport, apply_state_dict, check_head
from clefctl.paths import atomic_path
from clefctl.weights import hub
from clefctl.weights.archs import arch_uses_quick_gelu, register_configs
from clefctl.weights.digest import sha256_file
from clefctl.weights.files import detect_source, read_weights_file, unwrap
from clefctl.weights.reference import WeightsRef, parse_weights

log = logging.getLogger("clefctl.model")

CHECKPOINT_FORMAT = 1

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

    def encode_images(self, pixels, batch_size: int = 64, dtype="float32") -> torch.Tensor:
        """(N, 3, H, W) preprocessed pixels, or a list of PIL images -> (N, D) unit float32.

        The one image-encoding path. ``dtype`` "float32" runs the model itself; "auto",
        "bfloat16" or "float16" (or a torch dtype) run a cached copy of the image tower cast to
        it (:mod:`clefctl.model.inference`: auto = bf16 on CPUs with native bf16, fp16 on CUDA)."""
        from clefctl.model.inference import image_tower

        encode, cast = image_tower(self, dtype)
        if isinstance(pixels, torch.Tensor):
            if pixels.ndim == 3:
                pixels = pixels.unsqueeze(0)
            return self._run(encode, pixels, batch_size, lambda b: b.to(cast))
        items = list(pixels)
        return self._run(encode, items, batch_size,
                         lambda b: torch.stack([self.preprocess(im) for im in b]).to(cast))

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


def create(arch: str = "ViT-B-16", weights: str | WeightsRef | None = None, device: str | None = None, *,
           seed: int = 0, trust_checkpoint: bool = False, cache_dir: str | None = None) -> ClefModel:
    """Build ``arch`` and load ``weights``: a reference (:func:`clefctl.weights.reference.parse_weights`:
    a file detected by content, a folder in open_clip's Hub layout or ``hf-hub:ORG/NAME``
    (:mod:`clefctl.weights.hub`), a registry name, an open_clip pretrained tag) or its parsed value.

    With ``weights=None`` (or ``random``) the model is randomly initialised from ``seed`` and its
    fingerprint is ``<arch>@random:<seed>``; with a file it is ``<arch>@sha256:<digest>`` (the
    file's content). A clefctl checkpoint carries its own architecture, which is used when ``arch``
    is left at the default; FaRL and OpenAI weights switch QuickGELU on (they were trained with it).
    A registry name builds the registry's architecture unless ``arch`` has the same shapes.
    """
    dev = resolve_device(device)
    report = LoadReport()
    quick_gelu = False
    ref = weights if isinstance(weights, WeightsRef) else parse_weights(weights)
    if ref.kind == "name":  # a registry name: its file (downloaded when missing) or its open_clip tag
        from clefctl.weights import download  # here: the registry's table imports open_clip

        named = download.resolve_named(ref.text, None if arch == "ViT-B-16" else arch)
        if named is not None:
            arch, ref = named[1], parse_weights(named[0])
    if ref.kind == "random":
        clip, preprocess, tokenizer = _build(arch, False, dev, seed)
        fingerprint = f"{arch}@random:{seed}"
    elif ref.kind in ("hub", "folder"):  # an exported or Hub model: open_clip_config.json + safetensors
        folder = hub.read_folder(hub.snapshot(ref.text) if ref.kind == "hub" else ref.path)
        if arch not in (folder.arch, "ViT-B-16"):  # self-describing: its architecture wins over a default
            report.notes.append(f"the model folder holds architecture {folder.arch}: building that, not {arch}")
        arch, quick_gelu = folder.arch, folder.quick_gelu
        report.source, report.path, report.meta, report.extras = folder.source, str(folder.path), folder.meta, \
            folder.extras
        clip, preprocess, tokenizer = _build(arch, quick_gelu, dev, seed)
        apply_state_dict(clip, folder.state_dict, arch, folder.weights_path, report)
        preprocess = hub.apply_preprocess(clip, preprocess, folder.preprocess_cfg)
        fingerprint = _file_fingerprint(arch, quick_gelu, folder.weights_path)
    elif ref.kind in ("file", "dir"):  # a folder that is no model folder: "weights file not found"
        sd, arch, quick_gelu = read_file_weights(ref.path, arch, report, trust_checkpoint=trust_checkpoint)
        clip, preprocess, tokenizer = _build(arch, quick_gelu, dev, seed)
        apply_state_dict(clip, sd, arch, ref.path, report)
        fingerprint = _file_fingerprint(arch, quick_gelu, ref.path)
    else:
        clip, preprocess, tokenizer = _load_pretrained_tag(arch, ref.text, cache_dir)
        report.source, report.path = "pretrained-tag", ref.text
        fingerprint = f"{arch}@{ref.text}"
    for note in report.notes:
        log.info("%s", note)
    clip.to(dev).eval()
    model = ClefModel(clip, arch, fingerprint, preprocess, tokenizer, dev, report, quick_gelu)
    if report.meta or report.extras:  # a fine-tuned model: its classes, task and scoring tensors agree
        check_head(report.meta, report.extras, model.embed_dim, report.path)
    return model


def _file_fingerprint(arch: str, quick_gelu: bool, path: Path) -> str:
    """``<arch>[+quickgelu]@sha256:<digest of the weights file>``."""
    return f"{arch}{'+quickgelu' if quick_gelu and not arch_uses_quick_gelu(arch) else ''}@sha256:{sha256_file(path)}"


def read_file_weights(path: Path, arch: str, report: LoadReport, *, trust_checkpoint: bool = False,
                      mmap: bool = False, uses_quick_gelu=None) -> tuple[dict, str, bool]:
    """A weights file -> ``(state_dict, arch, quick_gelu)``, filling ``report`` (source, path,
    metadata, extras, notes): a clefctl checkpoint's own architecture wins over the default
    ``ViT-B-16`` (another explicit ``arch`` is an error), FaRL and OpenAI weights switch QuickGELU
    on. ``mmap`` maps a PyTorch zip checkpoint instead of reading it (the text-only model reads a
    tenth of it); ``uses_quick_gelu(arch)`` defaults to open_clip's config lookup."""
    uses_quick_gelu = uses_quick_gelu or arch_uses_quick_gelu
    obj, container = read_weights_file(path, trust_checkpoint=trust_checkpoint, mmap=mmap)
    sd, meta, extras = unwrap(obj)
    source = detect_source(sd, container, meta)
    report.source, report.path, report.meta, report.extras = source, str(path), meta, extras
    quick_gelu = False
    if meta:
        ck_arch = meta.get("arch")
        if ck_arch and ck_arch != arch:
            if arch != "ViT-B-16":
                raise ClefError(f"checkpoint was trained with architecture {ck_arch}, not {arch}",
                                path=path, hint=f"pass --arch {ck_arch} or leave --arch out")
            arch = ck_arch
        quick_gelu = bool(meta.get("quick_gelu", False))
    elif source in ("farl", "openai", "openai-torchscript") and not uses_quick_gelu(arch):
        quick_gelu = True
        report.notes.append(f"{source} weights were trained with QuickGELU: building {arch} with QuickGELU")
    return sd, arch, quick_gelu


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
