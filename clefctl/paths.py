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


def umask() -> int:
    """The process's file-creation mask (read without changing it where /proc allows)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded", "errno = 28", "os error 28")
FULL_BELOW_BYTES = 1 << 20     # a write that failed with less free space than this failed for lack of it


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Space a new write to ``folder`` may use (root may use the reserved blocks too); None if unknown."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    blocks = st.f_bfree if hasattr(os, "geteuid") and os.geteuid() == 0 else st.f_bavail
    return int(blocks) * int(st.f_frsize)


def is_disk_full(exc: BaseException, folder: str | os.PathLike | None = None) -> bool:
    """Whether the failed write ``exc`` ran out of space: its errno or message says so (native libraries
    raise their own types: FAISS and torch a RuntimeError, safetensors a SafetensorError, some without
    the errno), or ``folder``'s file system has (almost) no free space left."""
    if getattr(exc, "errno", None) in DISK_FULL_ERRNOS or any(t in str(exc) for t in _DISK_FULL_TEXTS):
        return True
    free = free_bytes(folder) if folder is not None else None
    return free is not None and free < FULL_BELOW_BYTES


def disk_full_error(exc: BaseException, target: str | os.PathLike, again: str | None = None):
    """The :class:`~clefctl.errors.ClefError` for a write of ``target`` that ran out of space (what to
    do: ``again``, default "run the same command again"); ``exc`` stays its cause (``--debug``)."""
    from clefctl.errors import DiskFull

    return DiskFull("the disk is full (no space left on the device): writing it failed", path=target,
                    hint=f"free some space, then {again or 'run the same command again'}")


@contextlib.contextmanager
def writing(target: str | os.PathLike, again: str | None = None) -> Iterator[None]:
    """Run the writes of ``target``: any error of a full disk (an ``OSError``, or a native library's
    own error) becomes one :class:`~clefctl.errors.ClefError` naming ``target`` (see
    :func:`disk_full_error`); other errors pass unchanged. Free space is judged when the write fails,
    before anything is cleaned up."""
    from clefctl.errors import ClefError

    try:
        yield
    except ClefError:
        raise
    except Exception as exc:
        if is_disk_full(exc, Path(target).parent):
            raise disk_full_error(exc, target, again) from exc
        raise


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, again: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` only on success.

    Readers never see a half-written file: either the old file or the complete new one. The file
    gets the mode any new file gets (0666 less the umask), not the temporary file's 0600. A write
    that runs out of space is one :class:`~clefctl.errors.ClefError` naming ``target``
    (:func:`writing`; ``again``: what to do after freeing space).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = None
    try:
        with writing(target, again):
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            os.close(fd)
            tmp_path = Path(tmp)
            os.chmod(tmp_path, 0o666 & ~umask())
            yield tmp_path
            os.replace(tmp_path, target)
    finally:
        if tmp_path is not None and tmp_path.exists():
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
