"""Models in open_clip's Hugging Face Hub layout: ``hf-hub:ORG/NAME`` and exported folders.

A folder in this layout holds ``open_clip_config.json`` (``model_cfg`` and ``preprocess_cfg``) and
``open_clip_model.safetensors`` (or ``open_clip_pytorch_model.bin``); a clefctl model also holds
``clefctl.json`` (:mod:`clefctl.export`): its architecture name, the metadata of the
checkpoint it came from and the tensors stored beside the weights (the class-name embeddings),
so a folder loads as the checkpoint did. :func:`snapshot` fetches ``hf-hub:`` references through
``huggingface_hub``, which keeps its own cache (``HF_HOME`` / ``HF_HUB_CACHE``) and honours
``HF_HUB_OFFLINE``; :func:`read_folder` is what :func:`clefctl.model.create` loads a folder with.

Example::

    >>> from clefctl.model import create
    >>> m = create(weights="hf-hub:my-lab/clef-bp4d-au")      # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from clefctl.errors import ClefError
from clefctl.paths import cache_dir, write_json_atomic
from clefctl.weights.archs import clef_architectures, register_configs
from clefctl.weights.files import read_weights_file, unwrap
from clefctl.weights.reference import (CONFIG_NAME, HF_PREFIX, is_model_folder, parse_ref,  # noqa: F401
                                       parse_weights)

WEIGHTS_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
CLEF_NAME = "clefctl.json"
FOLDER_FILES = [CONFIG_NAME, *WEIGHTS_NAMES, CLEF_NAME, "*.yaml", "README.md"]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_cache() -> str | None:
    """The cache ``huggingface_hub`` uses, read now (its constants are read once at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def snapshot(ref: str) -> Path:
    """The local folder of ``hf-hub:ORG/NAME``: the cached snapshot, downloaded first when the
    network is allowed; a ClefError when it cannot be had or is not in open_clip's layout."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    repo, rev = parse_ref(ref)
    offline = _offline()
    try:
        folder = Path(snapshot_download(repo, revision=rev, cache_dir=hub_cache(), local_files_only=offline,
                                        allow_patterns=FOLDER_FILES))
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise ClefError(f"no Hugging Face Hub model {repo}{'@' + rev if rev else ''} ({type(exc).__name__})",
                        hint="check the name (ORG/NAME), and log in with `hf auth login` for a private model") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError, OSError) as exc:
        where = hub_cache() or "the default Hugging Face cache"
        why = "HF_HUB_OFFLINE is set and it is not in the cache" if offline else \
            f"it could not be downloaded ({type(exc).__name__})"
        raise ClefError(f"cannot load Hugging Face Hub model {repo}: {why}", path=where,
                        hint="download it where there is a network (`hf download " + repo + "`), "
                             "or pass its folder to --weights") from None
    if not is_model_folder(folder):
        raise ClefError(f"Hugging Face Hub model {repo} is not in open_clip's layout (no {CONFIG_NAME})",
                        path=folder, hint="clefctl loads open_clip models; export one with `clefctl export`")
    return folder


# ----------------------------------------------------------------------------------------------
# Reading a folder
# ----------------------------------------------------------------------------------------------


@dataclass
class FolderModel:
    """What :func:`read_folder` found: the architecture to build, its weights and clefctl metadata."""

    path: Path
    arch: str
    quick_gelu: bool
    weights_path: Path
    state_dict: dict
    preprocess_cfg: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)
    source: str = "open_clip-hub"      # or clefctl-export
    notes: list[str] = field(default_factory=list)


def _json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ClefError(f"not valid JSON ({exc})", path=path) from None
    if not isinstance(doc, dict):
        raise ClefError("does not hold a JSON object", path=path)
    return doc


def _without_gelu(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k != "quick_gelu"}


def _register(name: str, model_cfg: dict) -> None:
    """Make ``name`` an open_clip architecture with ``model_cfg`` (a file in the clefctl cache)."""
    import open_clip

    target = cache_dir() / "open_clip_configs" / f"{name}.json"
    if not target.is_file() or _json(target) != model_cfg:
        write_json_atomic(target, model_cfg)
    open_clip.add_model_config(target)


def _arch_for(model_cfg: dict, named: str | None, path: Path) -> str:
    """The architecture name to build ``model_cfg`` with: ``named`` (clefctl.json) when it is
    that config, else a known open_clip config with the same content, else a new one registered
    under a name derived from the content."""
    import open_clip

    register_configs()
    if named:
        known = open_clip.get_model_config(named)
        if known is None:
            _register(named, _without_gelu(model_cfg))
        elif _without_gelu(known) != _without_gelu(model_cfg):
            raise ClefError(f"{CLEF_NAME} names architecture {named}, but {CONFIG_NAME} describes another",
                            path=path, hint="the folder was edited by hand or mixes two models; export it again")
        return named
    small = set(clef_architectures())  # their conv stem is clefctl's: only clefctl.json may name them
    target = _without_gelu(model_cfg)
    same = [n for n in open_clip.list_models() if n not in small
            and _without_gelu(open_clip.get_model_config(n) or {}) == target]
    if same:
        gelu = bool(model_cfg.get("quick_gelu", False))
        same.sort(key=lambda n: bool((open_clip.get_model_config(n) or {}).get("quick_gelu", False)) != gelu)
        return same[0]
    digest = hashlib.sha256(json.dumps(target, sort_keys=True).encode()).hexdigest()[:12]
    name = f"hub-{digest}"
    _register(name, target)
    return name


def read_folder(path: str | Path) -> FolderModel:
    """Read an open_clip Hub-layout folder (see the module docstring): the architecture from
    ``clefctl.json`` or ``open_clip_config.json``, the weights, clefctl metadata and extras."""
    path = Path(path).expanduser()
    cfg = _json(path / CONFIG_NAME)
    model_cfg = cfg.get("model_cfg")
    if not isinstance(model_cfg, dict) or not all(k in model_cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise ClefError(f"{CONFIG_NAME} has no usable model_cfg (embed_dim, vision_cfg, text_cfg)",
                        path=path / CONFIG_NAME)
    weights = next((path / n for n in WEIGHTS_NAMES if (path / n).is_file()), None)
    if weights is None:
        raise ClefError(f"model folder has no weights ({' or '.join(WEIGHTS_NAMES)})", path=path,
                        hint="the download or copy is incomplete")
    clef = _json(path / CLEF_NAME) if (path / CLEF_NAME).is_file() else {}
    meta = _clef_meta(clef, path / CLEF_NAME)
    name = _arch_for(model_cfg, clef.get("arch"), path)
    obj, _ = read_weights_file(weights)
    sd, _, _ = unwrap(obj)
    quick = bool(model_cfg.get("quick_gelu", False)) or bool(clef.get("quick_gelu", False))
    return FolderModel(path, name, quick, weights, sd, dict(cfg.get("preprocess_cfg") or {}), meta,
                       decode_extras(clef.get("extras") or {}, path / CLEF_NAME),
                       "clefctl-export" if clef else "open_clip-hub")


def _clef_meta(clef: dict, path: Path) -> dict:
    """``checkpoint_meta`` of a clefctl.json, checked: a mapping, ``extras`` a mapping, and the task and
    classes the file states at its top level the same as the checkpoint's (one ClefError otherwise)."""
    fix = "the folder was edited by hand or damaged: export it again with `clefctl export`"
    meta, extras = clef.get("checkpoint_meta") or {}, clef.get("extras") or {}
    for key, value in (("checkpoint_meta", meta), ("extras", extras)):
        if not isinstance(value, dict):
            raise ClefError(f"{key} is a {type(value).__name__}, not an object", path=path, hint=fix)
    for key in ("task", "classes"):
        if clef.get(key) is not None and meta.get(key) is not None and clef[key] != meta[key]:
            raise ClefError(f"{key} says {str(clef[key])[:60]}, but checkpoint_meta.{key} says "
                            f"{str(meta[key])[:60]}", path=path, hint=fix)
    return dict(meta)


def model_folder(weights) -> Path | None:
    """The folder of ``weights`` when it is a model folder (exported or ``hf-hub:``, fetched or cached)."""
    ref = parse_weights(weights)
    if ref.kind == "hub":
        return snapshot(ref.text)
    return ref.path if ref.kind == "folder" else None


def declared_meta(weights, *, trust_checkpoint: bool = False) -> dict:
    """What a model says it is, without building it: the clefctl metadata (``stage``, ``task``,
    ``classes``, ...) of a model folder's clefctl.json or of a clefctl checkpoint file (memory-mapped);
    {} for anything else (a registry name, an open_clip tag, plain CLIP weights)."""
    if not weights or weights == "random":
        return {}
    folder = model_folder(weights)
    if folder is not None:
        return _clef_meta(_json(folder / CLEF_NAME), folder / CLEF_NAME) if (folder / CLEF_NAME).is_file() else {}
    path = Path(str(weights)).expanduser()
    if not path.is_file():
        return {}
    obj, _ = read_weights_file(path, trust_checkpoint=trust_checkpoint, mmap=True)
    return dict(unwrap(obj)[1]) if isinstance(obj, dict) else {}


def model_prompts_file(weights) -> Path | None:
    """The prompt set a model was trained with: a model folder's own (clefctl.json's ``prompts``), or
    the ``prompts.yaml`` of the run folder a weights file lies in; None when there is none."""
    if not weights or weights == "random":
        return None
    try:
        folder = model_folder(weights)
    except ClefError:
        return None
    if folder is not None:
        clef = _json(folder / CLEF_NAME) if (folder / CLEF_NAME).is_file() else {}
        name = clef.get("prompts") if isinstance(clef.get("prompts"), str) else "prompts.yaml"
        found = folder / Path(name).name
    else:
        found = Path(str(weights)).expanduser().parent / "prompts.yaml"
    return found if found.is_file() else None


def apply_preprocess(clip, preprocess, preprocess_cfg: dict):
    """The eval transform for a folder's ``preprocess_cfg`` (mean, std, interpolation, resize mode);
    ``preprocess`` itself when the folder asks for nothing different."""
    current = dict(getattr(clip.visual, "preprocess_cfg", {}) or {})
    wanted = {k: tuple(v) if isinstance(v, list) else v for k, v in preprocess_cfg.items()
              if k in ("mean", "std", "interpolation", "resize_mode")}
    if all(current.get(k) == v for k, v in wanted.items()):
        return preprocess
    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

    merged = merge_preprocess_dict(current, wanted)
    clip.visual.preprocess_cfg = merged
    clip.visual.image_mean, clip.visual.image_std = merged["mean"], merged["std"]
    return image_transform_v2(PreprocessCfg(**merged), is_train=False)


# ----------------------------------------------------------------------------------------------
# Tensors in clefctl.json (exact: float32 -> JSON number -> float32 round-trips bit for bit)
# ----------------------------------------------------------------------------------------------


def encode_extras(extras: dict) -> dict:
    """Checkpoint extras as JSON: tensors as ``{"dtype", "shape", "data"}``, other values as they are."""
    import torch  # here, not at the top: the model resolver imports this module on every path

    out = {}
    for k, v in extras.items():
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu()
            data = t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
            out[k] = {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape),
                      "data": data.reshape(-1).tolist()}
        else:
            out[k] = json.loads(json.dumps(v, default=str))
    return out


def decode_extras(doc: dict, path: Path) -> dict:
    import torch

    out = {}
    for k, v in doc.items():
        if isinstance(v, dict) and {"dtype", "shape", "data"} <= set(v):
            dtype = getattr(torch, str(v["dtype"]), None)
            if not isinstance(dtype, torch.dtype):
                raise ClefError(f"extra {k!r} has an unknown dtype {v['dtype']!r}", path=path)
            try:
                out[k] = torch.tensor(v["data"], dtype=torch.float32 if dtype.is_floating_point else dtype) \
                    .to(dtype).reshape(v["shape"])
            except (RuntimeError, TypeError, ValueError) as exc:
                raise ClefError(f"extra {k!r} is malformed ({exc})", path=path) from None
        else:
            out[k] = v
    return out


# ----------------------------------------------------------------------------------------------
# open_clip's own pretrained tags (registry entries of kind open_clip)
# ----------------------------------------------------------------------------------------------


def pretrained_cfg(e) -> dict:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(e.arch, e.tag) or {}
    if not cfg:
        raise ClefError(f"open_clip has no pretrained tag {e.arch}/{e.tag}", hint="update open_clip_torch")
    return cfg


def open_clip_cached(e) -> Path | None:
    """Where open_clip's copy of a tag lies in the Hugging Face cache (None: not cached)."""
    from huggingface_hub import try_to_load_from_cache

    hub = (pretrained_cfg(e).get("hf_hub") or "").strip("/")
    if not hub:
        return None
    repo, _, fname = hub.rpartition("/") if hub.count("/") >= 2 else (hub, "", "")
    names = [fname] if fname else list(WEIGHTS_NAMES)
    for n in names:
        hit = try_to_load_from_cache(repo, n, cache_dir=hub_cache())
        if isinstance(hit, str) and os.path.isfile(hit):
            return Path(hit)
    return None
