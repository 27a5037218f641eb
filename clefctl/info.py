"""What this installation has: versions, devices, FAISS build, locations, data sets, model configs."""

from __future__ import annotations

import importlib
import os
import platform
import sys
from importlib import metadata

from clefctl import __version__, paths


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def faiss_build() -> dict:
    """Which FAISS is importable and whether it can use GPUs."""
    try:
        import faiss
    except ImportError as exc:
        return {"available": False, "error": str(exc)}
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    has_gpu_api = hasattr(faiss, "StandardGpuResources")
    return {
        "available": True,
        "version": getattr(faiss, "__version__", None),
        "build": "gpu" if has_gpu_api else "cpu",
        "gpus_visible": int(gpus),
        "compile_options": faiss.get_compile_options() if hasattr(faiss, "get_compile_options") else None,
    }


def device_info() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    info = {
        "cuda_available": cuda,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "torch_cuda_build": torch.version.cuda,
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "default_device": "cuda" if cuda else "cpu",
    }
    if cuda:
        info["bf16_supported"] = bool(torch.cuda.is_bf16_supported())
    return info


def face_detector() -> dict:
    """Which face detector ``--detector auto`` runs now, without downloading anything: YuNet when its
    file is in the weights folder, else the Haar cascades (and how to get YuNet)."""
    from clefctl.data.faces.choice import installed_yunet

    path, _ = installed_yunet()
    if path is not None:
        return {"auto": "yunet", "yunet": path}
    return {"auto": "yunet after its download (else haar)", "yunet": None,
            "hint": "clefctl weights get yunet"}


def _safe(fn, default):
    try:
        return fn()
    except Exception as exc:  # an optional part that fails must not hide the rest of the report
        return {"error": f"{type(exc).__name__}: {exc}"} if default is None else default


def collect() -> dict:
    """The full report as a JSON-safe dict."""
    from clefctl import model
    from clefctl.data.crops.layout import cache_base as crop_cache_base

    versions = {"clefctl": __version__, "python": platform.python_version()}
    for dist in ("torch", "torchvision", "open_clip_torch", "faiss-cpu", "faiss-gpu-cu12", "h5py", "numpy",
                 "opencv-python-headless", "pandas", "scikit-learn", "click", "rich", "pyyaml", "pillow"):
        v = _version(dist)
        if v is not None:
            versions[dist] = v

    def prompt_sets():
        prompts = importlib.import_module("clefctl.prompts")
        return {"location": str(prompts.prompts_location()), "sets": prompts.available_prompt_sets()}

    def datasets():
        data = importlib.import_module("clefctl.data")
        return data.available_datasets()

    archs = model.list_architectures()
    return {
        "versions": versions,
        "platform": f"{platform.system()} {platform.machine()}",
        "executable": sys.executable,
        "device": device_info(),
        "faiss": faiss_build(),
        "face_detector": _safe(face_detector, None),
        "locations": {
            "data_root": str(paths.data_root().resolve()),
            "cache": str(paths.cache_dir()),
            "crop_cache": str(crop_cache_base()),
            "workspace": str(paths.workspace_dir().resolve()),
        },
        "prompts": _safe(prompt_sets, None),
        "datasets": _safe(datasets, None),
        "models": {
            "clefctl_configs": model.clef_architectures(),
            "open_clip_architectures": len(archs),
            "paper_architecture": "ViT-B-16 (ViT-B-16-quickgelu for FaRL/OpenAI weights)",
        },
    }

