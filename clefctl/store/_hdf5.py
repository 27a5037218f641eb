"""HDF5 plumbing of the store: crash recovery, the writer lock, fencing a failed writer, durable
commits and opening files for reading (SWMR) or appending.

Recovery: a writer killed outright leaves the superblock's "open for writing" status flags set;
:func:`clear_status_flags` clears them (what ``h5clear -s`` does), verified by HDF5's own metadata
checksum (:func:`lookup3`). The one-writer rule is :class:`WriterLock` (``<store>.lock``, the
file lock of :mod:`clefctl.paths`). A writer whose write failed is fenced (:func:`fence`): its
file descriptor is pointed at the null device, so HDF5's retries of the failed writes can never
reach (or crash on) the file.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import functools
import os
import re
import struct
import time
from pathlib import Path

from clefctl.errors import ClefError
from clefctl.paths import FileLock

# ----------------------------------------------------------------------------------------------
# Crash recovery
# ----------------------------------------------------------------------------------------------

_M32 = 0xFFFFFFFF
_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M32


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 ``hashlittle``: the checksum HDF5 puts on its metadata."""
    length = len(data)
    a = b = c = (0xDEADBEEF + length + initval) & _M32
    i = 0
    while length > 12:
        x, y, z = struct.unpack_from("<III", data, i)
        a, b, c = (a + x) & _M32, (b + y) & _M32, (c + z) & _M32
        a = (a - c) & _M32; a ^= _rot(c, 4); c = (c + b) & _M32      # noqa: E702 - the mix() steps
        b = (b - a) & _M32; b ^= _rot(a, 6); a = (a + c) & _M32      # noqa: E702
        c = (c - b) & _M32; c ^= _rot(b, 8); b = (b + a) & _M32      # noqa: E702
        a = (a - c) & _M32; a ^= _rot(c, 16); c = (c + b) & _M32     # noqa: E702
        b = (b - a) & _M32; b ^= _rot(a, 19); a = (a + c) & _M32     # noqa: E702
        c = (c - b) & _M32; c ^= _rot(b, 4); b = (b + a) & _M32      # noqa: E702
        length -= 12
        i += 12
    if length == 0:
        return c
    x, y, z = struct.unpack("<III", data[i:] + b"\0" * (12 - length))
    a, b, c = (a + x) & _M32, (b + y) & _M32, (c + z) & _M32
    c ^= b; c = (c - _rot(b, 14)) & _M32                             # noqa: E702 - final()
    a ^= c; a = (a - _rot(c, 11)) & _M32                             # noqa: E702
    b ^= a; b = (b - _rot(a, 25)) & _M32                             # noqa: E702
    c ^= b; c = (c - _rot(b, 16)) & _M32                             # noqa: E702
    a ^= c; a = (a - _rot(c, 4)) & _M32                              # noqa: E702
    b ^= a; b = (b - _rot(a, 14)) & _M32                             # noqa: E702
    c ^= b; c = (c - _rot(b, 24)) & _M32                             # noqa: E702
    return c


def clear_status_flags(path: str | os.PathLike) -> bool:
    """Repair the superblock left by a writer that died (``h5clear -s --increment=0``).

    An HDF5 file written with the version-3 superblock records "open for (SWMR) writing" in
    its status flags; after a ``kill -9`` the flags stay set and HDF5 refuses to open the file
    for writing. This clears them and raises the stored end-of-file address to the real file
    size (space the dead writer allocated is then never handed out twice), recomputing the
    superblock checksum. Only call it when no process is writing the file (the store's writer
    lock guarantees that). Returns True when the file was changed.
    """
    with open(path, "r+b") as f:
        head = bytearray(f.read(48))
        if len(head) < 48 or bytes(head[:8]) != _SIGNATURE or head[8] not in (2, 3):
            raise ClefError("not an HDF5 file with a version 2/3 superblock; cannot clear its "
                            "writer flags", path=path)
        if head[9] != 8 or head[10] != 8:
            raise ClefError("unexpected HDF5 superblock layout (offset size != 8)", path=path)
        stored = struct.unpack_from("<I", head, 44)[0]
        if stored != lookup3(bytes(head[:44])):
            raise ClefError("the HDF5 superblock checksum does not match: the file is damaged",
                            path=path, hint="delete it and embed again")
        size = os.fstat(f.fileno()).st_size
        eof = struct.unpack_from("<Q", head, 28)[0]
        if head[11] == 0 and eof >= size:
            return False
        head[11] = 0
        struct.pack_into("<Q", head, 28, max(eof, size))
        struct.pack_into("<I", head, 44, lookup3(bytes(head[:44])))
        f.seek(0)
        f.write(head)
        f.flush()
        os.fsync(f.fileno())
    return True


def check_hdf5_file(path: str | os.PathLike, wait_s: float = 1.0) -> None:
    """Refuse, before HDF5 sees it, a file HDF5 would fail on slowly or badly: no HDF5 signature, a
    version 2/3 superblock whose checksum (:func:`lookup3`) does not match, or a file shorter than the
    end-of-file address its superblock records (a cut copy or download: HDF5's readers otherwise wait
    on the missing bytes for many minutes). A live writer's file can be shorter for an instant (HDF5
    writes the superblock before it extends the file), so a short file is read again for ``wait_s``
    before it is refused. Older superblocks (versions 0/1) are left to HDF5, which checks their size."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with open(path, "rb") as f:
                head = f.read(48)
                size = os.fstat(f.fileno()).st_size
        except IsADirectoryError:
            raise ClefError("is a folder, not an embedding store (an HDF5 file)", path=path,
                            hint="give the store's .h5 file") from None
        if len(head) < 8 or head[:8] != _SIGNATURE:
            raise ClefError("not an HDF5 file (no HDF5 signature at its start), so not an embedding store",
                            path=path, hint="give a store written by `clefctl embed`, or embed again")
        if head[8] not in (2, 3):
            return
        if len(head) < 48 or head[9] != 8 or head[10] != 8 or \
                struct.unpack_from("<I", head, 44)[0] != lookup3(bytes(head[:44])):
            raise ClefError("the HDF5 header of this store is damaged (its checksum does not match)", path=path,
                            hint="copy the store again from where it came from, or embed again")
        eof = struct.unpack_from("<Q", head, 28)[0]
        if eof <= size:
            return
        if time.monotonic() >= deadline:
            raise ClefError(f"the store is cut short: its HDF5 header says {eof:,} bytes, the file has {size:,} "
                            "(an incomplete copy or download?)", path=path,
                            hint="copy it again whole, or embed again")
        time.sleep(0.05)


class WriterLock(FileLock):
    """The lock ``<store>.lock`` held by the one process writing a store (a :class:`FileLock`).

    Released by the kernel when the process dies, so a crashed writer never blocks a rerun.
    :meth:`acquire` never waits: it raises :class:`ClefError` naming the holder when busy.
    """

    def __init__(self, store_path: str | os.PathLike):
        super().__init__(str(store_path) + ".lock")
        self.store_path = str(store_path)

    def acquire(self, blocking: bool = False) -> "WriterLock":
        if not self.try_acquire(blocking):
            raise ClefError(f"another process (pid {self.holder()}) is writing this store",
                            path=self.store_path,
                            hint="wait for it to finish, or stop it; a crashed writer frees the lock")
        return self


def _is_flag_error(exc: Exception) -> bool:
    """HDF5 refused the file because its superblock says a writer has it open (a live writer
    that has not switched to SWMR yet, or a dead one)."""
    text = str(exc)
    return ("already open for write" in text or "consistency flags" in text
            or "not already open for SWMR writing" in text)


def _is_lock_error(exc: Exception) -> bool:
    return "unable to lock file" in str(exc)


# ----------------------------------------------------------------------------------------------
# Failed writes (a full disk, I/O errors) and durable commits
# ----------------------------------------------------------------------------------------------

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def fence(h5) -> None:
    """Stop every further write of a failed HDF5 writer from reaching its file, then close it.

    After a failed write HDF5 keeps the unwritten chunks and metadata dirty and retries them
    when the objects or the file are closed; those retries fail again inside h5py's
    ``__dealloc__`` (where the error is swallowed) and the library then crashes (a segfault
    at exit). Pointing the file's descriptor at the null device first makes the retries
    succeed without touching the file, which therefore stays exactly as a process killed at
    the failure would have left it: a consistent SWMR file whose ``/state`` names the last
    commit, recovered by the next open like after a ``kill -9``."""
    try:
        fd = h5.id.get_vfd_handle()
    except Exception:  # noqa: BLE001 - a closed or non-POSIX file: nothing to fence
        fd = None
    if isinstance(fd, int) and fd > 2:
        null = os.open(os.devnull, os.O_RDWR)
        try:
            os.dup2(null, fd)
        finally:
            os.close(null)
    with contextlib.suppress(Exception):
        h5.close()


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _error_number(exc: BaseException) -> int | None:
    """The errno of an OSError, or the one HDF5 writes into its message ("errno = 28")."""
    if isinstance(getattr(exc, "errno", None), int):
        return exc.errno
    m = re.search(r"errno = (\d+)", str(exc))
    return int(m.group(1)) if m else None


def write_error(exc: BaseException, path, committed: int) -> ClefError:
    """The :class:`ClefError` for a failed store write (the disk is full, or another error)."""
    code = _error_number(exc)
    again = "run the same command again: it resumes after the last committed chunk"
    kept = (f"the {committed} rows committed before are kept" if committed
            else "no rows were committed yet")
    if code in _DISK_FULL or "No space left on device" in str(exc):
        return ClefError(f"the disk is full: writing the embedding store failed; {kept}",
                         path=path, hint=f"free some space, then {again}")
    reason = os.strerror(code) if code else first_line(exc)
    return ClefError(f"writing the embedding store failed ({reason}); {kept}", path=path,
                     hint=f"fix the cause, then {again}")


def fsync_h5(h5) -> None:
    """Push the flushed bytes of ``h5`` to the disk (commit durability; HDF5's flush stops at
    the OS). A failing fsync (EIO, ENOSPC on delayed allocation) raises; only a file system
    that cannot sync this descriptor at all is tolerated. ``$CLEF_STORE_NO_FSYNC`` skips it."""
    if os.environ.get("CLEF_STORE_NO_FSYNC"):
        return
    try:
        fd = h5.id.get_vfd_handle()
    except (TypeError, ValueError, AttributeError):  # pragma: no cover - VFDs without an fd
        return
    if not isinstance(fd, int):  # pragma: no cover
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise


# ----------------------------------------------------------------------------------------------
# Opening files
# ----------------------------------------------------------------------------------------------


def h5py_module():
    import h5py

    return h5py


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def open_h5_append(path: Path):
    # HDF5's own file lock is off for the writer: readers that opened first hold a shared
    # lock, and the one-writer rule is kept by WriterLock instead.
    return h5py_module().File(path, "a", libver="latest", locking=False)


SWMR_READ_ATTEMPTS = 24        # HDF5's SWMR default, 100, sleeps 1 ns, 2 ns, 4 ns, ... : hours on a damaged file


@functools.lru_cache(maxsize=None)
def _read_attempts_setter():
    """``H5Pset_metadata_read_attempts`` of the HDF5 library h5py runs on (h5py does not wrap it), found
    among the libraries this process has loaded; None where it cannot be found."""
    import ctypes

    h5py_module()
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            libs = {line.split()[-1] for line in f if "libhdf5" in line and ".so" in line}
    except OSError:
        return None
    for lib in sorted(libs):
        if os.path.basename(lib).startswith("libhdf5_hl") or not os.path.isfile(lib):
            continue
        try:
            fn = ctypes.CDLL(lib).H5Pset_metadata_read_attempts
        except (OSError, AttributeError):
            continue
        fn.argtypes, fn.restype = [ctypes.c_int64, ctypes.c_uint], ctypes.c_int
        return fn
    return None


def _open_swmr_reader(h5py, path: Path):
    """``h5py.File(path, "r", libver="latest", swmr=True)`` with at most :data:`SWMR_READ_ATTEMPTS`
    reads of a metadata block whose checksum fails (a block a writer is rewriting that instant reads
    whole within a few tries; HDF5's default retries a damaged block for hours, doubling its sleep)."""
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
    setter = _read_attempts_setter()
    if setter is not None:
        setter(fapl.id, SWMR_READ_ATTEMPTS)
    fid = h5py.h5f.open(os.fsencode(str(path)), h5py.h5f.ACC_RDONLY | h5py.h5f.ACC_SWMR_READ, fapl=fapl)
    return h5py.File(fid)


def open_writer_h5(path: Path, check=None, log=None):
    """The file of a store opened for appending in SWMR mode, by the holder of its writer lock:
    a dead writer's status flags are cleared first. ``check(h5, path)`` runs before the switch
    to SWMR (it closes the file when it raises)."""
    check_hdf5_file(path)
    try:
        h5 = open_h5_append(path)
    except OSError as exc:
        if not _is_flag_error(exc):
            raise ClefError(f"cannot open the store for writing: {exc}", path=path) from None
        # We hold the writer lock, so the process that set the flags is gone: a crash.
        if log is not None:
            log.warning("store %s was left open by a writer that stopped (killed, or after a "
                        "failed write); continuing after the last committed chunk", path)
        clear_status_flags(path)
        h5 = open_h5_append(path)
    if check is not None:
        check(h5, path)
    try:
        h5.swmr_mode = True
    except (ValueError, OSError) as exc:  # pragma: no cover - files not made by create()
        h5.close()
        raise ClefError(f"store cannot be written in SWMR mode ({exc})", path=path,
                        hint="it was not written by clefctl; embed again into a new file")
    return h5


def open_reader(path: Path, wait_s: float = 10.0):
    """An SWMR reader (consistent while a writer appends); recovers a dead writer's flags."""
    h5py = h5py_module()
    check_hdf5_file(path)
    deadline = time.monotonic() + wait_s
    recovered = False
    while True:
        try:
            return _open_swmr_reader(h5py, path)
        except OSError as exc:
            if _is_lock_error(exc) and time.monotonic() < deadline:
                time.sleep(0.05)  # a text-cache write holds the file for a moment
                continue
            if _is_flag_error(exc) and not recovered:
                lock = WriterLock(path)
                if lock.try_acquire():  # nobody writes: the flags are a dead writer's
                    try:
                        clear_status_flags(path)
                    finally:
                        lock.release()
                    recovered = True
                    continue
                if time.monotonic() < deadline:
                    time.sleep(0.02)  # a live writer between opening and switching to SWMR
                    continue
            if not _is_flag_error(exc):
                try:  # an HDF5 file without SWMR support (older superblock): plain read
                    return h5py.File(path, "r")
                except OSError:
                    pass
            else:
                raise ClefError("store is being written by another process that is not in SWMR "
                                "mode", path=path, hint="wait for it to finish") from None
            raise ClefError(f"cannot read the embedding store: {exc}", path=path,
                            hint="is it an HDF5 file written by clefctl?") from None
