"""Where things live: data root, cache, workspace; atomic file writes."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

DATA_ROOT_ENV = "CLEF_DATA_ROOT"
CACHE_ENV = "CLEF_CACHE"
WORKSPACE_ENV = "CLEF_WORKSPACE"


def data_root(override: str | os.PathLike | None = None) -> Path:
    """``--data-root`` if given, else ``$CLEF_DATA_ROOT``, else ``./data``."""
    if override:
        return Path(override).expanduser()
    return Path(os.environ.get(DATA_ROOT_ENV, "data")).expanduser()


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """Generated data (synthetic sets) and downloaded weights: ``$CLEF_CACHE`` or ``~/.cache/clefctl``."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "clefctl"


def workspace_dir(override: str | os.PathLike | None = None) -> Path:
    """``--workspace`` if given, else ``$CLEF_WORKSPACE``, else ``./clef_runs``."""
    if override:
        return Path(override).expanduser()
    return Path(os.environ.get(WORKSPACE_ENV, "clef_runs")).expanduser()


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` only on success.

    Readers never see a half-written file: either the old file or the complete new one.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(target: str | os.PathLike, text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def write_json_atomic(target: str | os.PathLike, obj) -> Path:
    return write_text_atomic(target, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
