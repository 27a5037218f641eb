"""Synthetic sets on first use: :func:`ensure` / :func:`generate` make a set in the cache (or an
explicit folder) when it is missing or its parameters changed, and reuse it otherwise.

Generation of one root is serialised between processes (e.g. distributed ranks) by a
:class:`~clefctl.paths.FileLock` beside it, and goes to a temporary folder that replaces the
root only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from clefctl.data.synthetic.layouts import GENERATOR_VERSION, au_params, fer_params, write_au, \
    write_fer
from clefctl.data.synthetic.sidecar import SIDECAR, umask
from clefctl.errors import ClefError
from clefctl.paths import FileLock, cache_dir

KINDS = ("synthetic-au", "synthetic-fer")
AU_DEFAULTS: dict[str, Any] = {"subjects": 12, "tasks": 8, "frames_per_task": 24, "size": 128,
                               "seed": 0}
FER_DEFAULTS: dict[str, Any] = {"subjects": 40, "images_per_class": 200, "size": 100, "seed": 0,
                                "test_fraction": 0.2}


def _params_for(kind: str, size_options: dict) -> dict:
    defaults = AU_DEFAULTS if kind == "synthetic-au" else FER_DEFAULTS
    unknown = sorted(set(size_options) - set(defaults))
    if unknown:
        raise ClefError(f"unknown option(s) for {kind}: {', '.join(unknown)} "
                        f"(known: {', '.join(defaults)})")
    merged = {**defaults, **{k: v for k, v in size_options.items() if v is not None}}
    return au_params(**merged) if kind == "synthetic-au" else fer_params(**merged)


def _complete(root: Path, kind: str) -> bool:
    """True when ``root`` holds a finished set of this kind and generator version, any size."""
    try:
        old = json.loads((root / SIDECAR).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(old, dict) and old.get("kind") == kind and old.get("version") == GENERATOR_VERSION


def _status(root: Path, kind: str, params: dict) -> str | None:
    """None when ``root`` holds this set with these parameters, else why it must be (re)made."""
    sidecar = root / SIDECAR
    if sidecar.is_file():
        try:
            old = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = {}
        if (old.get("kind") == kind and old.get("version") == GENERATOR_VERSION
                and old.get("params") == params):
            return None
        return "parameters changed"
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ClefError(f"exists and is not a synthetic data set (no {SIDECAR}); "
                        "choose another output folder or remove it", path=root)
    return "first use"


def _write_into(root: Path, kind: str, params: dict, workers: int | None,
                progress: bool | None) -> None:
    """Write the set into a temporary folder beside ``root``, then swap it in."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        writer = write_au if kind == "synthetic-au" else write_fer
        writer(tmp, **params, workers=workers, progress=progress)
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes it 0700
        old_dir = None
        if root.exists():
            old_dir = root.parent / f".{root.name}.old-{os.getpid()}-{time.time_ns()}"
            os.replace(root, old_dir)
        os.replace(tmp, root)
        if old_dir is not None:
            shutil.rmtree(old_dir, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def generate(kind: str, root: str | os.PathLike | None = None, *, force: bool = False,
             progress: bool | None = None, workers: int | None = None,
             **size_options) -> tuple[Path, bool]:
    """Like :func:`ensure`; also says whether it (re)generated the set (True) or reused it."""
    if kind not in KINDS:
        raise ClefError(f"unknown synthetic data set {kind!r}: use one of {', '.join(KINDS)}")
    explicit = root is not None
    root = Path(root) if explicit else cache_dir() / kind
    if explicit and not size_options and not force and _complete(root, kind):
        return root, False  # a set the user made (e.g. `clefctl data synth --subjects 41`): use it as it is
    params = _params_for(kind, size_options)
    if not force and _status(root, kind, params) is None:
        return root, False
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(root.parent / f".{root.name}.lock"):
        reason = _status(root, kind, params)  # another process may have made it meanwhile
        if reason is None and not force:
            return root, False
        reason = "forced" if force else reason
        from rich.console import Console

        Console(stderr=True).print(f"generating {kind} into {root} ({reason})", soft_wrap=True,
                                   markup=False, highlight=False)
        _write_into(root, kind, params, workers, progress)
    return root, True


def ensure(kind: str, root: str | os.PathLike | None = None, *, force: bool = False,
           progress: bool | None = None, **size_options) -> Path:
    """Return the root of a synthetic set, generating it when missing or when its parameters differ.

    ``kind``: ``"synthetic-au"`` (options: subjects, tasks, frames_per_task, size, seed) or
    ``"synthetic-fer"`` (subjects, images_per_class, size, seed, test_fraction); defaults are
    AU_DEFAULTS / FER_DEFAULTS. ``root`` defaults to ``cache_dir() / kind``; an explicit ``root``
    that already holds a complete set of this kind is used as it is unless size options are
    given. Generation goes to a temporary folder beside ``root`` that replaces it only when complete.
    """
    return generate(kind, root, force=force, progress=progress, **size_options)[0]
