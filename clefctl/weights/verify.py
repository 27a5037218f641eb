"""``clefctl weights verify``: what a weights file (or named weights, or a model folder) is.

Reports size, sha256, the container (safetensors, pickle, TorchScript), the layout detected by
content (FaRL, OpenAI, open_clip, clefctl, ...), the architectures whose shapes fit, and, for a
registry file, whether it matches the published or recorded checksum. Nothing is unpickled beyond
``torch.load(weights_only=True)``; a TorchScript archive is only named, never loaded.

Example::

    >>> from clefctl.weights.verify import verify
    >>> verify("farl-ep64")["matches"]                        # doctest: +SKIP
    True
"""

from __future__ import annotations

from pathlib import Path

from clefctl.errors import ClefError
from clefctl.weights import hub, registry
from clefctl.weights.archs import infer_architectures
from clefctl.weights.download import verify_file
from clefctl.weights.files import detect_source, is_safetensors, is_torchscript, read_weights_file, unwrap
from clefctl.weights.reference import parse_weights


def _describe_detector(path: Path) -> dict:
    """A face detector's ONNX file: opened by OpenCV's own YuNet runtime, as clefctl uses it."""
    import cv2

    try:
        cv2.FaceDetectorYN.create(str(path), "", (320, 320))
    except cv2.error as exc:
        return {"format": "unreadable", "source": None, "arch": [],
                "note": f"OpenCV cannot load it as a YuNet model ({str(exc).strip().splitlines()[-1]})"}
    return {"format": "onnx", "source": "yunet face detector", "arch": []}


def _describe_file(path: Path, e: registry.WeightsEntry | None = None) -> dict:
    """Container, detected layout and fitting architectures of a weights file."""
    if e is not None and e.purpose == "detector":
        return _describe_detector(path)
    if is_torchscript(path):
        return {"format": "torchscript", "source": "openai-torchscript", "arch": [],
                "note": "a TorchScript archive (code runs when it loads): not opened; load it with --trust-checkpoint"}
    try:
        obj, container = read_weights_file(path)
        sd, meta, _ = unwrap(obj)
    except ClefError as exc:  # size and sha256 are still worth reporting
        return {"format": "unreadable", "source": None, "arch": [], "note": exc.bare_message}
    source = detect_source(sd, container, meta)
    archs = [meta["arch"]] if meta.get("arch") else infer_architectures(sd)
    out = {"format": "safetensors" if is_safetensors(path) else container, "source": source, "arch": archs,
           "tensors": len(sd)}
    if meta:
        out["clefctl"] = {k: meta.get(k) for k in ("stage", "task", "dataset", "classes") if k in meta}
    return out


def verify(ref: str) -> dict:
    """Size, sha256, format and architecture of ``ref``: a registry name, a file, an exported
    folder or ``hf-hub:ORG/NAME``. ``matches`` is False when a registry file differs from its
    checksum (None when there is nothing to compare with)."""
    e = registry.REGISTRY.get(ref)
    if e is not None:
        path = registry.local_path(e)
        if path is None:
            raise ClefError(f"{ref} is not downloaded", hint=f"run `clefctl weights get {ref}`")
        out = {"name": ref, **verify_file(path, e), **_describe_file(path, e)}
        if e.kind == "open_clip":
            out["checksum"] = "open_clip"  # open_clip's Hub copy: checked by huggingface_hub on download
        return out
    parsed = parse_weights(ref)
    if parsed.kind == "hub":
        return _describe_folder(hub.snapshot(ref), ref)
    if parsed.kind == "folder":
        return _describe_folder(parsed.path, ref)
    path = Path(ref).expanduser()
    if parsed.kind == "dir":
        raise ClefError("folder is neither an exported model (no open_clip_config.json) nor a weights file",
                        path=path,
                        hint="give a weights file, a registry name (clefctl weights list) or an exported folder")
    if not path.is_file():
        raise ClefError(f"no weights file or named weights {ref!r}", path=path if path.parent != Path(".") else None,
                        hint=f"registry names: {', '.join(registry.names())}")
    e = next((x for x in registry.REGISTRY.values() if x.kind == "file" and x.file == path.name), None)
    return {"name": e.name if e else None, **verify_file(path, e), **_describe_file(path, e)}


def _describe_folder(path: Path, ref: str) -> dict:
    f = hub.read_folder(path)
    out = {"name": None, "ref": ref, **verify_file(f.weights_path), "format": "open_clip hub folder",
           "source": f.source, "arch": [f.arch], "tensors": len(f.state_dict), "folder": str(path)}
    if f.meta:
        out["clefctl"] = {k: f.meta.get(k) for k in ("stage", "task", "dataset", "classes") if k in f.meta}
    return out
