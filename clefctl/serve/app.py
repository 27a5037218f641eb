"""The web app of ``clefctl serve`` (Starlette): the JSON API, media by row, and the static page.

Routes (documented in docs/serve.md):

=========================  ====================================================================
``GET /``                  the page (``static/index.html``; plain HTML/JS/CSS, no build step)
``GET /api/info``          store, model, index, prompt classes, limits
``GET /api/search``        ``q=TEXT`` | ``row=ROW`` | ``image=ID``, ``k``, ``offset``, ``classes``, ``by``
``POST /api/search/image`` the image file as the body -> its ``image`` id and the first page
``GET /api/rank``          ``class=ID`` (rows by a prompt class's probability), ``k``, ``offset``
``GET /api/hit/ROW``       one row in full
``GET /api/explain``       ``row``, ``q``, ``format=json|png``: the relevancy map and word relevancy
``POST /api/rescore``      an edited prompt set (JSON or YAML) -> re-scored classes
``GET /api/prompts``       the current prompt set; ``/api/prompts.yaml`` the same as a YAML download
``GET /media/ROW``         the row's face crop (JPEG, ``size``); ``/media/ROW/source`` its file
=========================  ====================================================================

Safety: requests that do not name the server by a loopback host are refused (403) unless a token
is set (a DNS-rebinding guard); with a token (always on a non-loopback bind) every request must
carry it (``Authorization: Bearer``, ``X-Clef-Token``, the cookie the page sets, or ``?token=``);
a state-changing request from another site (its ``Origin`` or ``Sec-Fetch-Site``) or without a
declared non-form content type is refused; media are served by row only, never by a path;
uploads are size-limited; every error is a JSON object ``{"error": ..., "status": ...}``, never a
traceback page, and names no absolute path of the server.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from http.cookies import SimpleCookie
from importlib import resources
from urllib.parse import parse_qs

from clefctl.errors import ClefError
from clefctl.serve.media import MediaError, media_type, thumb_size, thumbnail_jpeg

log = logging.getLogger("clefctl.serve")

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# The content types a page on another site can send without asking first (CORS "simple" requests):
# a state-changing request with one of them (or none) is refused, so every write needs a preflight.
SIMPLE_TYPES = frozenset({"", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"})
SAME_SITE_FETCH = frozenset({"same-origin", "none"})   # Sec-Fetch-Site values of the page itself, or typed
TOKEN_COOKIE = "clef_token"
DEFAULT_UPLOAD_BYTES = 16 << 20
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; media-src 'self'; style-src 'self'; "
            "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def static_dir():
    return resources.files("clefctl.serve") / "static"


def _json_default(v):
    if hasattr(v, "item"):
        return v.item()
    if hasattr(v, "tolist"):
        return v.tolist()
    return str(v)


def json_response(content, status: int = 200, headers: dict | None = None):
    from starlette.responses import Response

    body = json.dumps(content, default=_json_default, allow_nan=False, ensure_ascii=False).encode("utf-8")
    return Response(body, status_code=status, media_type="application/json", headers=headers)


_ABS_PATH = re.compile(r"(?<![\w.~/:])/(?:[^\s/'\":,;()]+/)+([^\s/'\":,;()]*)")


def _no_server_paths(text: str) -> str:
    """``text`` with every absolute file path of this machine cut to its last part: error bodies do not
    tell a client where the server keeps its files (``/api/...`` and ``/media/...`` stay as they are)."""
    def cut(m):
        full = m.group(0)
        return full if full.startswith(("/api/", "/media/", "/static/")) else m.group(1)
    return _ABS_PATH.sub(cut, text)


def error_response(status: int, message: str, hint: str | None = None):
    doc = {"error": _no_server_paths(message), "status": status}
    if hint:
        doc["hint"] = _no_server_paths(hint)
    return json_response(doc, status)


# ----------------------------------------------------------------------------------------------
# the guard: host, token, origin, headers
# ----------------------------------------------------------------------------------------------


def _host_name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _write_refusal(headers: dict) -> tuple[int, str, str | None] | None:
    """A state-changing request must come from this server's own page or a script, never another site:
    its ``Origin`` (when sent; ``null`` from sandboxed frames and files is refused) names this host,
    its ``Sec-Fetch-Site`` (when sent) is same-origin, and its content type is one that a foreign page
    cannot send without a CORS preflight (which this server never grants)."""
    origin = headers.get("origin")
    if origin is not None:
        origin_host = origin.split("://", 1)[-1].split("/", 1)[0].lower()
        if origin.strip().lower() == "null" or origin_host != headers.get("host", "").lower():
            return 403, f"cross-site request from {origin} refused", "post from this server's own page or a script"
    site = headers.get("sec-fetch-site")
    if site is not None and site.strip().lower() not in SAME_SITE_FETCH:
        return 403, f"cross-site request refused (Sec-Fetch-Site: {site})", "post from this server's own page"
    kind = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind in SIMPLE_TYPES:
        return (415, f"a request that changes the server needs a declared content type, not {kind or 'none'}",
                "send Content-Type: application/json (or application/yaml for /api/rescore, image/... "
                "for /api/search/image)")
    return None


def require_type(request, allowed: tuple[str, ...], what: str) -> None:
    """Refuse (415) a body whose content type is none of ``allowed`` (``image/`` matches any image)."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if not any(kind == a or (a.endswith("/") and kind.startswith(a)) for a in allowed):
        raise MediaError(f"{request.url.path} takes {what}, not {kind or 'a body without a content type'}", 415,
                         hint="set Content-Type to one of " + ", ".join(a + "*" if a.endswith("/") else a
                                                                         for a in allowed))


class Guard:
    """ASGI middleware: the loopback Host check, the token, the Origin check, security headers."""

    def __init__(self, app, token: str | None, loopback_only: bool):
        self.app, self.token, self.loopback_only = app, token, loopback_only

    def _refusal(self, scope) -> tuple[int, str, str | None] | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = _host_name(headers.get("host", ""))
        if self.token is None and self.loopback_only and host not in LOOPBACK_HOSTS:
            return (403, f"this server answers requests to 127.0.0.1 or localhost only, not {host!r}",
                    "serve on another host with --host, which requires the token printed at start")
        if self.token is not None and not self._has_token(scope, headers):
            return (401, "this server needs its access token",
                    "open the URL printed at start (?token=...) or send 'Authorization: Bearer TOKEN'")
        if scope.get("method") not in SAFE_METHODS:
            return _write_refusal(headers)
        return None

    def _has_token(self, scope, headers: dict) -> bool:
        given = []
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given.append(auth[7:].strip())
        given.append(headers.get("x-clef-token", ""))
        if "cookie" in headers:
            cookie = SimpleCookie()
            try:
                cookie.load(headers["cookie"])
            except Exception:  # a malformed cookie header counts as no cookie
                cookie = SimpleCookie()
            if TOKEN_COOKIE in cookie:
                given.append(cookie[TOKEN_COOKIE].value)
        given += parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [])
        return any(g and secrets.compare_digest(g.encode(), self.token.encode()) for g in given)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            await error_response(*refusal)(scope, receive, send)
            return

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                extra = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                         (b"x-frame-options", b"DENY")]
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        await self.app(scope, receive, send_with_headers)


# ----------------------------------------------------------------------------------------------
# request helpers
# ----------------------------------------------------------------------------------------------


UPLOAD_HINT = "upload a smaller image, or start the server with a larger --max-upload-mb"


async def read_body(request, limit: int, hint: str = UPLOAD_HINT) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (checked while it streams in); ``hint``
    says what to do about it at this endpoint."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise MediaError(f"the upload is {int(declared)} bytes; this server takes at most {limit}", 413, hint=hint)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise MediaError(f"the upload is over {limit} bytes, the most this server takes", 413, hint=hint)
        chunks.append(chunk)
    return b"".join(chunks)


FILTER_BY = ("predicted", "labels")


def _page_args(q) -> dict:
    by = q.get("by", "predicted")
    if by not in FILTER_BY:
        raise ClefError(f"by={by[:40]!r} is not a filter", hint=f"use by={' or by='.join(FILTER_BY)}")
    return {"k": q.get("k", 60), "offset": q.get("offset", 0), "classes": q.get("classes", ""), "by": by}


# ----------------------------------------------------------------------------------------------
# the app
# ----------------------------------------------------------------------------------------------


def _ex(request):
    return request.app.state.explorer


async def _run(fn, *args, **kwargs):
    """Model and store work runs in the thread pool (the explorer serialises it with its lock)."""
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args, **kwargs)


async def page(request):
    from starlette.responses import Response

    token = request.app.state.token
    html = (static_dir() / "index.html").read_bytes()
    resp = Response(html, media_type="text/html; charset=utf-8",
                    headers={"content-security-policy": PAGE_CSP, "cache-control": "no-store"})
    given = request.query_params.get("token")
    if token is not None and given and secrets.compare_digest(given.encode(), token.encode()):
        resp.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
    return resp


async def info(request):
    return json_response(await _run(_ex(request).info))


async def search(request):
    q = request.query_params
    return json_response(await _run(_ex(request).search, text=q.get("q"), row=q.get("row"), image=q.get("image"),
                                    **_page_args(q)))


IMAGE_TYPES = ("image/", "application/octet-stream")
PROMPT_TYPES = ("application/json", "application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


async def search_image(request):
    ex, q = _ex(request), request.query_params
    require_type(request, IMAGE_TYPES, "an image file as the body")
    args = _page_args(q)
    data = await read_body(request, request.app.state.max_upload_bytes)
    key = await _run(ex.add_image, data)
    doc = await _run(ex.search, image=key, **args)
    doc["image"] = key
    return json_response(doc)


async def rank(request):
    q = request.query_params
    return json_response(await _run(_ex(request).rank, q.get("class", ""), **_page_args(q)))


async def hit(request):
    return json_response(await _run(_ex(request).hit, request.path_params["row"]))


async def explain(request):
    from starlette.responses import Response

    q = request.query_params
    fmt = q.get("format", "json")
    if fmt not in ("json", "png"):
        raise ClefError(f"unknown format {fmt!r}", hint="use format=json or format=png")
    doc, png = await _run(_ex(request).explain, q.get("row"), q.get("q", ""))
    if fmt == "png":
        return Response(png, media_type="image/png", headers={"cache-control": "private, max-age=600"})
    return json_response(doc)


async def rescore(request):
    from clefctl.serve.classes import MAX_PROMPT_BYTES, parse_edited

    require_type(request, PROMPT_TYPES, "a prompt set as JSON or YAML")
    body = await read_body(request, MAX_PROMPT_BYTES, hint=f"a prompt set is at most {MAX_PROMPT_BYTES >> 20} MB: "
                                                          "post fewer classes or shorter descriptions")
    prompts_, mode = parse_edited(body, request.headers.get("content-type", ""))
    return json_response(await _run(_ex(request).rescore, prompts_, mode))


async def prompts(request):
    scores = _ex(request).scores
    return json_response({"prompt_classes": scores.summary() if scores is not None else None})


async def prompts_yaml(request):
    from starlette.responses import Response

    ex = _ex(request)
    text = ex.prompts_yaml()
    name = f"{ex.scores.prompts.dataset or 'prompts'}-edited.yaml"
    return Response(text, media_type="application/yaml; charset=utf-8",
                    headers={"content-disposition": f'attachment; filename="{name}"'})


async def media(request):
    from starlette.responses import Response

    size = thumb_size(request.query_params.get("size"))
    face = await _run(_ex(request).face, request.path_params["row"], size)
    data = await _run(thumbnail_jpeg, face, size)
    return Response(data, media_type="image/jpeg", headers={"cache-control": "private, max-age=3600"})


async def media_source(request):
    from starlette.responses import FileResponse

    path = await _run(_ex(request).source_file, request.path_params["row"])
    return FileResponse(path, media_type=media_type(path))


async def media_refused(request):
    raise MediaError("media are served by row number only (/media/ROW), never by a path", 403)


async def http_error(request, exc):
    return error_response(exc.status_code, str(exc.detail))


async def clef_error(request, exc):
    name = exc.path.rstrip("/").rsplit("/", 1)[-1] if exc.path and exc.path.startswith("/") else exc.path
    where = (f"{name}:{exc.line}: " if exc.line is not None else f"{name}: ") if name else ""
    return error_response(getattr(exc, "status", 400), where + exc.bare_message, exc.hint)


async def crash(request, exc):
    log.exception("serve: %s %s failed", request.method, request.url.path)
    return error_response(500, f"internal error: {type(exc).__name__}: {exc}",
                          "this is a bug in clefctl; the server's log has the traceback")


def create_app(explorer, *, token: str | None = None, loopback_only: bool = True,
               max_upload_bytes: int = DEFAULT_UPLOAD_BYTES):
    """The Starlette app over an :class:`~clefctl.serve.explorer.Explorer`.

    ``token``: required on every request when set; ``loopback_only`` (no token): refuse requests whose
    Host is not a loopback name. Test it in-process with ``starlette.testclient.TestClient(app,
    base_url="http://127.0.0.1")``.
    """
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    routes = [
        Route("/", page),
        Route("/api/info", info),
        Route("/api/search", search),
        Route("/api/search/image", search_image, methods=["POST"]),
        Route("/api/rank", rank),
        Route("/api/hit/{row}", hit),
        Route("/api/explain", explain),
        Route("/api/rescore", rescore, methods=["POST"]),
        Route("/api/prompts", prompts),
        Route("/api/prompts.yaml", prompts_yaml),
        Route("/media/{row:int}", media),
        Route("/media/{row:int}/source", media_source),
        Route("/media/{rest:path}", media_refused),
        Mount("/static", app=StaticFiles(directory=str(static_dir())), name="static"),
    ]
    handlers = {HTTPException: http_error, ClefError: clef_error, Exception: crash}
    middleware = [Middleware(Guard, token=token, loopback_only=loopback_only)]
    app = Starlette(routes=routes, exception_handlers=handlers, middleware=middleware)
    app.state.explorer = explorer
    app.state.token = token
    app.state.max_upload_bytes = int(max_upload_bytes)
    return app
