"""Where things live: data root, cache, workspace; atomic file writes."""

from __future__ import annotations

import contextlib
import errno
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


class FileLock:
    """An exclusive advisory lock (``flock``) on ``path``; the one file lock of clefctl.

    Released by the kernel when the process dies, so a crashed holder never blocks a rerun.
    ``acquire(blocking=True)`` waits; ``try_acquire()`` returns False when another process holds it.
    The holder's pid is written into the file for messages (:meth:`holder`). On systems without
    ``fcntl`` the lock is a no-op (a single writer is assumed).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self, blocking: bool = False) -> bool:
        if self._fd is not None:
            return True
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX
            self._fd = -1
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def acquire(self, blocking: bool = True) -> "FileLock":
        """Take the lock (waiting when ``blocking``); a ClefError naming the holder when busy."""
        if not self.try_acquire(blocking):
            from clefctl.errors import ClefError

            raise ClefError(f"another process (pid {self.holder()}) holds this lock", path=self.path,
                            hint="wait for it to finish, or stop it; a crashed process frees the lock")
        return self

    def holder(self) -> str:
        try:
            return self.path.read_text().split()[0]
        except (OSError, IndexError):
            return "?"

    def release(self) -> None:
        if self._fd is None:
            return
        if self._fd >= 0:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
