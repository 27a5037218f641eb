"""Is a downloaded file what its name says? Checked before its checksum is recorded.

A mirror or proxy that answers 200 with an error page, or a transfer cut short, must not be recorded
as the release (trust on first use would then refuse the real file). :func:`check_format` reads only
the file's structure, never unpickles or runs it:

* ``torch`` (``.pt``, ``.pth``, ``.bin``, ``.ckpt``): a zip archive (``torch.save`` since 1.6) whose
  central directory is intact and that holds a ``data.pkl``, or the legacy format, a pickle that
  starts with torch's magic number;
* ``onnx``: a protobuf ``ModelProto`` whose top-level fields (usually ``ir_version`` first, byte
  0x08) are well formed, include ``ir_version`` and a graph, and end exactly at the end of the file;
* ``safetensors``: an 8-byte header length, a JSON header of tensors, and tensor data that ends
  exactly at the end of the file.

Each also has a plausible size (at least :data:`MIN_BYTES`). A file that fails gets one line saying
what it looks like instead (``an HTML page``, ``text``, ``61 bytes``).

Example::

    >>> from clefctl.weights.fileformat import check_format, kind_of
    >>> check_format("FaRL-Base-Patch16-LAIONFace20M-ep64.pth", kind_of("x.pth"))   # doctest: +SKIP
"""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from pathlib import Path

MIN_BYTES = 1024   # nothing smaller holds a model or a detector
KINDS = {".pt": "torch", ".pth": "torch", ".bin": "torch", ".ckpt": "torch", ".onnx": "onnx",
         ".safetensors": "safetensors"}
_TORCH_LEGACY = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)  # torch.serialization.MAGIC_NUMBER
_ONNX_GRAPH = 7


def kind_of(file_name: str) -> str | None:
    """The format a file name promises (``torch``, ``onnx``, ``safetensors``), None when unknown."""
    return KINDS.get(Path(file_name).suffix.lower())


def check_format(path: str | Path, kind: str | None) -> str | None:
    """What is wrong with ``path`` as a file of ``kind`` (see the module docstring), or None when it is
    one. ``kind`` None checks the size and that it is not text."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(512)
    looks = _looks_like(head, size)
    if size < MIN_BYTES:
        return f"it is {looks}, too small for a weights file"
    if kind is None:
        return f"it is {looks}, not a weights file" if looks != f"{size} bytes" else None
    check = {"torch": _torch, "onnx": _onnx, "safetensors": _safetensors}[kind]
    problem = check(path, head, size)
    if problem is None:
        return None
    return f"it is not {_NAMES[kind]} ({problem}; {looks})"


_NAMES = {"torch": "a PyTorch checkpoint", "onnx": "an ONNX model", "safetensors": "a safetensors file"}


def _looks_like(head: bytes, size: int) -> str:
    lower = head.lstrip()[:64].lower()
    if lower.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in head.lower():
        return f"an HTML page of {size} bytes"
    if lower.startswith((b"{", b"[")):
        return f"JSON or text of {size} bytes"
    try:
        head.decode("utf-8")
        if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
            return f"text of {size} bytes"
    except UnicodeDecodeError:
        pass
    return f"{size} bytes"


def _torch(path: Path, head: bytes, size: int) -> str | None:
    if head.startswith(_TORCH_LEGACY):
        return None
    if not head.startswith(b"PK\x03\x04"):
        return "neither a zip archive nor torch's legacy pickle"
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        return f"a damaged or cut zip archive: {exc}"
    if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return "a zip archive without data.pkl"
    return None


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("a cut varint")
        b = buf[i]
        out |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return out, i
        shift += 7


def _onnx(path: Path, head: bytes, size: int) -> str | None:
    """Walk the ModelProto's top-level fields without reading the (large) graph into memory."""
    seen: set[tuple[int, int]] = set()
    with open(path, "rb") as f:
        pos = 0
        while pos < size:
            f.seek(pos)
            buf = f.read(20)
            try:
                key, i = _varint(buf, 0)
                field, wire = key >> 3, key & 7
                if field == 0:
                    raise ValueError("field number 0")
                if wire == 0:
                    _, i = _varint(buf, i)
                elif wire == 1:
                    i += 8
                elif wire == 5:
                    i += 4
                elif wire == 2:
                    n, i = _varint(buf, i)
                    i += n
                else:
                    raise ValueError(f"wire type {wire}")
            except ValueError as exc:
                return f"not a protobuf at byte {pos} ({exc})"
            seen.add((field, wire))
            pos += i
    if pos != size:
        return f"its last field runs past the end of the file ({pos} > {size} bytes): cut short"
    if (1, 0) not in seen:
        return "no ir_version"
    if (_ONNX_GRAPH, 2) not in seen:
        return "no graph"
    return None


def _safetensors(path: Path, head: bytes, size: int) -> str | None:
    if size < 8:
        return "no header"
    (n,) = struct.unpack("<Q", head[:8])
    if n < 2 or 8 + n > size:
        return f"a header length of {n} bytes in a file of {size}"
    with open(path, "rb") as f:
        f.seek(8)
        raw = f.read(n)
    try:
        header = json.loads(raw)
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        return f"an unreadable header ({exc})"
    if 8 + n + max(ends, default=0) != size:
        return f"its tensors end at byte {8 + n + max(ends, default=0)}, the file at {size}: cut or padded"
    return None
