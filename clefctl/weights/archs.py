"""Architectures and the shapes that imply them: clefctl's small configs (``clef-tiny``,
``clef-small``, JSON files in ``clefctl/model_configs``) registered with open_clip, the architecture
numbers of a state dict (:func:`state_dict_signature`) and of an open_clip config
(:func:`config_signature`), and the architectures a state dict fits (:func:`infer_architectures`).
open_clip is imported only when a function needs its config table.

Example::

    >>> from clefctl.weights.archs import clef_architectures
    >>> clef_architectures()
    ['clef-small', 'clef-tiny']
"""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"

_registered = False


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


def arch_uses_quick_gelu(arch: str) -> bool:
    """Whether open_clip's config of ``arch`` asks for QuickGELU."""
    import open_clip

    register_configs()
    return bool((open_clip.get_model_config(arch) or {}).get("quick_gelu", False))


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


def config_signature(cfg: dict) -> dict | None:
    """The architecture numbers of an open_clip model config (as :func:`state_dict_signature`), None
    for a config that is not a plain CLIP ViT (timm or Hugging Face towers)."""
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
        cs = config_signature(open_clip.get_model_config(name) or {})
        if cs == sig:
            found.append(name)
    return found


def same_shapes(a: str, b: str) -> bool:
    """True when architectures ``a`` and ``b`` have the same tensor shapes (QuickGELU aside)."""
    if a == b:
        return True
    import open_clip

    register_configs()
    ca, cb = open_clip.get_model_config(a), open_clip.get_model_config(b)
    if not ca or not cb:
        return False
    sa, sb = config_signature(ca), config_signature(cb)
    small = set(clef_architectures())
    return sa is not None and sa == sb and a not in small and b not in small
