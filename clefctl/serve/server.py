"""``clefctl serve`` as a library call: :func:`run_serve` opens the store, warms the model and the
index (:class:`~clefctl.serve.explorer.Explorer`), binds the socket and runs the app with uvicorn
until Ctrl-C / SIGTERM.

It binds 127.0.0.1 unless told otherwise. Any other address (a LAN address, ``0.0.0.0``) requires a
token: the one given, or a random one, printed in the URL at start; requests without it get 401.

Example::

    >>> from clefctl.serve import ServeOptions, run_serve
    >>> run_serve(ServeOptions(store="clef_runs/embed/x/store.h5", weights="model.pt"))   # doctest: +SKIP
"""

from __future__ import annotations

import ipaddress
import math
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from clefctl.errors import ClefError


@dataclass
class ServeOptions:
    """What ``clefctl serve`` takes. ``model``: an already loaded model (else the store's model,
    :meth:`Workspace.store_model <clefctl.workspace.Workspace.store_model>`: ``weights``/``arch`` when
    given, else the model recorded in the store or its embed run's). ``config``: the embed
    run's config.yaml (its ``weights`` and data set pick the model and the prompt set).
    ``on_ready`` is called with the start record (url, host, port, token, store, rows) once the
    socket listens, before requests are served."""

    store: str | Path = field(metadata={"shared": "store"})   # the command resolves --store / --run
    model: object | None = None
    config: dict = field(default_factory=dict)
    weights: str | None = field(default=None, metadata={"shared": "store_weights"})
    arch: str | None = field(default=None, metadata={"shared": "store_arch"})
    trust_checkpoint: bool = False
    prompts: str | None = field(default=None, metadata={
        "help": "Prompt set shown as classes (default: the model's run's, else the store's data set's)."})
    mode: str = field(default="names", metadata={
        "help": "Class vectors for the prompt classes: label names, descriptions or the template ensemble.",
        "choices": ("names", "descriptions", "ensemble")})
    host: str = field(default="127.0.0.1", metadata={
        "help": "Address to listen on. Anything but a loopback address requires the token printed at start."})
    port: int = field(default=8765, metadata={"help": "0 picks a free port.", "min": 0, "max": 65535})
    token: str | None = field(default=None, metadata={
        "help": "Access token (default: none on 127.0.0.1, a random one on any other address).",
        "envvar": "CLEF_SERVE_TOKEN"})
    max_upload_mb: float = field(default=16.0, metadata={
        "help": "Largest image upload taken by image search.", "min": 0, "max": 65536, "min_open": True})
    index: str = field(default="auto", metadata={
        "help": "Index to search (auto: the store's saved one, see `clefctl index build`).",
        "choices": ("auto", "flat", "hnsw", "ivf")})
    workspace: str | None = None
    progress: bool = True
    on_ready: Callable[[dict], None] | None = None


def require_server_packages() -> None:
    """A one-line ClefError when the ``serve`` extra (Starlette, uvicorn) is not installed."""
    import importlib.util

    missing = [m for m in ("starlette", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise ClefError(f"clefctl serve needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                        "not installed", hint="pip install 'clefctl[serve]'")


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback address (127.0.0.0/8, ::1)."""
    if host in ("localhost", "127.0.0.1", "::1"):
        return True
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    addrs = {info[4][0] for info in infos}
    return bool(addrs) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (port 0: a free one), or a one-line ClefError."""
    if not 0 <= int(port) <= 65535:
        raise ClefError(f"port must be between 0 and 65535, not {port}")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ClefError(f"cannot resolve the host {host!r} ({exc.strerror})",
                        hint="use an address such as 127.0.0.1 or 0.0.0.0") from None
    family, kind, proto, _, addr = infos[0]
    # proto IPPROTO_TCP matters: asyncio turns Nagle's algorithm off only on sockets that say TCP,
    # and with it on, every keep-alive response after the first waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(addr)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ClefError(f"cannot listen on {host}:{port} ({exc.strerror or exc})",
                        hint="choose another --port (--port 0 picks a free one)") from None
    sock.set_inheritable(True)
    return sock


def _model(opts: ServeOptions):
    if opts.model is not None:
        return opts.model
    from clefctl.workspace import Workspace

    return Workspace(opts.workspace).store_model(opts.store, opts.config, weights=opts.weights, arch=opts.arch,
                                                 trust_checkpoint=opts.trust_checkpoint)


def start_record(explorer, sock: socket.socket, host: str, token: str | None) -> dict:
    """What the command prints at start: where to open the page (with the token) and what is served."""
    port = sock.getsockname()[1]
    shown = socket.gethostname() if host in ("0.0.0.0", "::") else host
    shown = f"[{shown}]" if ":" in shown else shown
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    return {"url": url, "host": host, "port": port, "token": token, "store": str(explorer.store.path),
            "rows": explorer.store.count, "model": explorer.store.fingerprint, "index": explorer.index.kind,
            "prompt_set": explorer.scores.prompts.dataset if explorer.scores is not None else None}


def run_serve(opts: ServeOptions) -> dict:
    """Serve the explorer until interrupted; returns the start record."""
    require_server_packages()
    import uvicorn

    from clefctl.serve.app import create_app
    from clefctl.serve.explorer import Explorer

    if not math.isfinite(opts.max_upload_mb) or not 0 < opts.max_upload_mb <= 65536:
        raise ClefError(f"--max-upload-mb must be a number of megabytes in (0, 65536], not {opts.max_upload_mb}")
    loopback = is_loopback(opts.host)
    token = opts.token or (None if loopback else secrets.token_urlsafe(24))
    sock = bind_socket(opts.host, opts.port)      # before the slow start: a busy port fails at once
    try:
        explorer = Explorer.open(opts.store, _model(opts), config=opts.config, prompts=opts.prompts,
                                 mode=opts.mode, index=opts.index, progress=opts.progress)
        try:
            app = create_app(explorer, token=token, loopback_only=loopback,
                             max_upload_bytes=int(opts.max_upload_mb * (1 << 20)))
            record = start_record(explorer, sock, opts.host, token)
            if opts.on_ready is not None:
                opts.on_ready(record)
            server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
            server.run(sockets=[sock])
        finally:
            explorer.close()
    finally:
        sock.close()
    return record
