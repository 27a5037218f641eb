"""Downloads of named weights: resumable (HTTP Range), checked, and renamed into place only whole.

A download goes to ``<file>.part`` beside its target. An interrupted transfer (a dropped
connection, a killed process) leaves the part, and the next attempt asks the server for the rest
(``Range: bytes=N-``); a server that ignores the range sends the whole file again, which is
written from the start. Only a complete file whose size and sha256 match what is known (the
published values, else those recorded at the first download in ``checksums.json``) is renamed
over the target; a file that differs is refused, its part removed, and the file already in
place stays as it was.

Example::

    >>> from clefctl.weights import download, registry
    >>> download.get(registry.entry("farl-ep64"))          # doctest: +SKIP
"""

from __future__ import annotations

import http.client
import os
import socket
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from clefctl.errors import ClefError
from clefctl.paths import FileLock
from clefctl.weights import hub, registry
from clefctl.weights.archs import same_shapes
from clefctl.weights.digest import sha256_file
from clefctl.weights.fileformat import check_format, kind_of
from clefctl.weights.registry import WeightsEntry

CHUNK = 1 << 20
ATTEMPTS = 4          # connections per download: a dropped one is resumed from where it stopped
TIMEOUT_S = 30.0      # per socket operation
USER_AGENT = "clefctl-weights"


@dataclass
class GetResult:
    """What :func:`get` did: ``status`` is downloaded | present | recorded (a file already there
    whose checksum was recorded now)."""

    name: str
    path: Path
    size: int
    sha256: str
    status: str
    checksum: str          # published (matches it) | matches-record | recorded-now (first download) | open_clip
    url: str | None = None
    resumed_from: int = 0


class _Dropped(Exception):
    """The connection ended before the whole file came: resume from the part."""


def _offline_error(url: str, file: str, target: Path, why: str) -> ClefError:
    return ClefError(f"cannot download {file} from {url}: {why}",
                     hint=f"offline or blocked? download the file by hand and put it at {target}, or set "
                          f"{registry.MIRROR_ENV} to a base URL that serves {file}")


def _open(url: str, start: int, timeout: float = TIMEOUT_S):
    headers = {"User-Agent": USER_AGENT}
    if start:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _total_from(resp, start: int) -> int | None:
    """The whole file's size from a 200 (Content-Length) or 206 (Content-Range) answer."""
    if resp.status == 206:
        rng = resp.headers.get("Content-Range", "")
        tail = rng.rsplit("/", 1)[-1] if "/" in rng else ""
        return int(tail) if tail.isdigit() else None
    n = resp.headers.get("Content-Length")
    return int(n) if n and n.isdigit() else None


def _connect(url: str, part: Path, timeout: float = TIMEOUT_S):
    """Ask for the rest of the file after what ``part`` holds: (response, start), or (None, start)
    when the server says the part is already whole (HTTP 416)."""
    start = part.stat().st_size if part.is_file() else 0
    try:
        return _open(url, start, timeout), start
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # the part is already whole (or longer than the file)
            return None, start
        raise


def _receive(conn, part: Path, bar) -> tuple[int | None, int]:
    """One connection: append the rest of the file to ``part`` (or rewrite it when the server
    sends it whole). Returns (the file's total size when the server said it, the offset it wrote
    from); raises _Dropped when the connection ends early."""
    resp, start = conn
    if resp is None:
        return None, start
    with resp:
        total = _total_from(resp, start)
        if resp.status != 206:  # the whole file: start again
            start = 0
        bar.update(total=total, completed=start)
        got = start
        with open(part, "r+b" if start else "wb") as f:
            f.seek(start)
            f.truncate()
            while True:
                try:
                    block = resp.read(CHUNK)
                except (http.client.IncompleteRead, ConnectionError, socket.timeout, TimeoutError) as exc:
                    if getattr(exc, "partial", b""):
                        f.write(exc.partial)
                    raise _Dropped(str(exc) or type(exc).__name__) from None
                if not block:
                    break
                f.write(block)
                got += len(block)
                bar.advance(len(block))
            f.flush()
            os.fsync(f.fileno())
    if total is not None and got < total:
        raise _Dropped(f"connection closed after {got} of {total} bytes")
    return total, start


def fetch(url: str, part: Path, *, label: str, progress: bool = True,
          timeout: float = TIMEOUT_S) -> tuple[int | None, int]:
    """Download ``url`` into ``part``, resuming what is there; returns (total size or None, the byte
    count it resumed from). Network failures other than a dropped connection are raised;
    ``timeout``: seconds per socket operation (connecting included)."""
    from clefctl.ui import progress_bar

    part.parent.mkdir(parents=True, exist_ok=True)
    first = _connect(url, part, timeout)  # a refused or unreachable URL fails before any bar is drawn
    resumed = first[1] if first[0] is None or first[0].status == 206 else 0
    # a transient bar leaves an empty line on a stderr that is not a terminal (logs, CI)
    with progress_bar(label, enabled=progress and sys.stderr.isatty(), transient=True) as bar:
        for attempt in range(ATTEMPTS):
            try:
                return _receive(first if attempt == 0 else _connect(url, part, timeout), part, bar)[0], resumed
            except _Dropped as exc:
                if attempt == ATTEMPTS - 1:
                    raise ClefError(f"download of {url} kept breaking off ({exc}); the part is kept at {part}",
                                    hint="run the same command again to resume it") from None
    raise AssertionError("unreachable")  # pragma: no cover


def _check(part: Path, total: int | None, size: int | None, sha: str | None) -> tuple[int, str, str | None]:
    """(size, sha256, what is wrong or None) of a finished part."""
    n = part.stat().st_size
    digest = sha256_file(part)
    if total is not None and n != total:
        return n, digest, f"the download is {n} bytes but the server announced {total}"
    if size is not None and n != size:
        return n, digest, f"it is {n} bytes, not the expected {size}"
    if sha is not None and digest != sha:
        return n, digest, f"its sha256 is {digest}, not the expected {sha}"
    return n, digest, None


def _refuse(e: WeightsEntry, target: Path, source: str | None, problem: str, url: str) -> ClefError:
    where = {"published": "the published checksum",
             "recorded": f"the checksum recorded at the first download ({registry.checksum_path()})"}.get(
        source, "what the server announced")
    kept = f"the file at {target} is unchanged" if target.is_file() else "nothing was written"
    return ClefError(f"refusing the download of {e.file} from {url}: {problem}, so it differs from {where}; "
                     f"the partial download was removed and {kept}",
                     hint="if the release really changed, delete its entry from the checksum file and get it "
                          "again; otherwise try another mirror")


def _refuse_format(e: WeightsEntry, target: Path, problem: str, url: str) -> ClefError:
    kept = f"the file at {target} is unchanged" if target.is_file() else "nothing was written"
    return ClefError(f"refusing the download of {e.file} from {url}: {problem}; nothing was recorded and {kept}",
                     hint=f"the server answered with something else (an error page?): check the URL or "
                          f"{registry.MIRROR_ENV}, or download the file by hand and put it at {target}")


def get(e: WeightsEntry, *, force: bool = False, progress: bool = True, timeout: float = TIMEOUT_S) -> GetResult:
    """Make the file of ``e`` present in :func:`registry.weights_dir`, checked; see the module docstring.

    ``force`` downloads again even when the file is there (the new copy must still match the
    record). A file already there is checked against the record too; one without a record has its
    size and sha256 recorded now.
    """
    if e.kind != "file":
        return get_open_clip(e, progress=progress)
    target = registry.weights_dir() / e.file
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.with_name(f".{e.file}.lock")):  # one download per file (several ranks, shells)
        size, sha, source = registry.expected(e)
        if target.is_file() and not force:
            return _present(e, target, size, sha, source)
        return _download(e, target, size, sha, source, progress, timeout)


def _download(e: WeightsEntry, target: Path, size: int | None, sha: str | None, source: str | None,
              progress: bool, timeout: float = TIMEOUT_S) -> GetResult:
    url = registry.download_url(e)
    part = target.with_name(target.name + ".part")
    for fresh in (False, True):
        try:
            total, resumed = fetch(url, part, label=f"download {e.file}", progress=progress, timeout=timeout)
        except urllib.error.HTTPError as exc:
            raise _offline_error(url, e.file, target, f"HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as exc:
            why = getattr(exc, "reason", None) or exc or type(exc).__name__
            raise _offline_error(url, e.file, target, str(why)) from None
        except ValueError as exc:  # urllib: "unknown url type"
            raise ClefError(f"cannot download {e.file}: {url!r} is not a URL ({exc})",
                            hint=f"{registry.MIRROR_ENV} must be a base URL such as https://host/weights") from None
        n, digest, problem = _check(part, total, size, sha)
        bad = check_format(part, kind_of(e.file)) if problem is None else None  # before any record
        if problem is None and bad is None:
            break
        part.unlink(missing_ok=True)
        if resumed and not fresh:  # the old part may have been of another file: one fresh try
            continue
        raise _refuse(e, target, source, problem, url) if bad is None else _refuse_format(e, target, bad, url)
    os.replace(part, target)
    if source is None:
        registry.record(e.file, n, digest, url)
    return GetResult(e.name, target, n, digest, "downloaded", _checked(source), url, resumed)


def _checked(source: str | None) -> str:
    return {"published": "published", "recorded": "matches-record"}.get(source, "recorded-now")


def _present(e: WeightsEntry, target: Path, size: int | None, sha: str | None, source: str | None) -> GetResult:
    n, digest = target.stat().st_size, sha256_file(target)
    if sha is None:
        bad = check_format(target, kind_of(e.file))  # never record an error page as the release
        if bad is not None:
            raise ClefError(bad, path=target,
                            hint=f"delete it and run `clefctl weights get {e.name}`, or put the real file there")
        registry.record(e.file, n, digest, None)
        return GetResult(e.name, target, n, digest, "recorded", "recorded-now")
    if (size is not None and n != size) or digest != sha:
        raise ClefError(f"{e.file} differs from its {source} checksum (size {n}, sha256 {digest}; expected "
                        f"size {size}, sha256 {sha})", path=target,
                        hint=f"it is corrupt or another file: delete it and run `clefctl weights get {e.name}`")
    return GetResult(e.name, target, n, digest, "present", _checked(source))


def verify_file(path: Path, e: WeightsEntry | None = None) -> dict:
    """Size and sha256 of ``path``, and for a registry file whether they match what is known."""
    n, digest = path.stat().st_size, sha256_file(path)
    out = {"path": str(path), "size": n, "sha256": digest, "checksum": None, "matches": None}
    if e is not None and e.kind == "file" and path.name == e.file:
        size, sha, source = registry.expected(e)
        out["checksum"] = source
        if sha is not None:
            out["matches"] = digest == sha and (size is None or size == n)
            out["expected"] = {"size": size, "sha256": sha}
    return out


def get_open_clip(e, *, progress: bool = True):
    """Fetch an open_clip tag into open_clip's cache (open_clip downloads and checks it)."""
    cached = hub.open_clip_cached(e)
    status = "present"
    if cached is None:
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
        from open_clip.pretrained import download_pretrained

        (enable_progress_bars if progress else disable_progress_bars)()  # huggingface_hub draws its own

        try:
            cached = Path(download_pretrained(hub.pretrained_cfg(e), cache_dir=hub.hub_cache()))
        except Exception as exc:  # network errors come as requests, urllib and huggingface_hub types
            raise ClefError(f"cannot download {e.name} (open_clip {e.arch}/{e.tag}, {e.url}): "
                            f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}",
                            hint="this needs the network or a warm Hugging Face cache (HF_HOME); elsewhere, "
                                 f"`hf download {(hub.pretrained_cfg(e).get('hf_hub') or '').strip('/')}` "
                                 "and copy the cache") from None
        status = "downloaded"
    return GetResult(e.name, cached, cached.stat().st_size, sha256_file(cached), status, "open_clip", e.url)


def resolve_named(name: str, arch: str | None = None, *, progress: bool = True) -> tuple[str, str, str] | None:
    """``(weights, arch, description)`` for :class:`~clefctl.workspace.ModelChoice` when ``name``
    is a registry name (the file, downloaded now when missing), else None. The registry's
    architecture is used unless ``arch`` has the same shapes (e.g. ViT-B-16 for FaRL)."""
    e = registry.REGISTRY.get(name)
    if e is None:
        return None
    if e.purpose != "model":
        raise ClefError(f"{name} is a face detector's file, not model weights",
                        hint=f"give it as --detector {name}; --weights takes CLIP weights such as farl-ep64")
    use = arch if arch and same_shapes(arch, e.arch) else e.arch
    if e.kind == "open_clip":
        return e.tag, use, f"open_clip {e.arch}/{e.tag} ({name})"
    path = registry.local_path(e)
    if path is None:
        path = get(e, progress=progress).path
    else:  # a cheap check on every use; `clefctl weights verify` hashes the whole file
        size, _, source = registry.expected(e)
        if size is not None and path.stat().st_size != size:
            raise ClefError(f"{e.file} is {path.stat().st_size} bytes, not the {size} of its {source} checksum",
                            path=path,
                            hint=f"it is cut short or another file: run `clefctl weights get {name} --force`")
    return str(path), use, f"weights {name} ({path})"
