"""``clefctl serve``: a local web explorer over one embedding store, with a JSON API (docs/serve.md).

* :mod:`~clefctl.serve.explorer`: :class:`Explorer`, the warm state (store, model, index, row
  metadata, head and prompt-class scores) and every action of the page as a method;
* :mod:`~clefctl.serve.classes`: the prompt set shown as classes, live re-scoring, class filters;
* :mod:`~clefctl.serve.media`: the face crops, and which files may be served (:class:`SourceGuard`);
* :mod:`~clefctl.serve.why`: the relevancy heatmap and word relevancy of a hit;
* :mod:`~clefctl.serve.app`: the Starlette app (routes, token and host guard, JSON errors);
* :mod:`~clefctl.serve.server`: :func:`run_serve` (``clefctl serve``: bind, start, run uvicorn);
* ``static/``: the page (plain HTML, JavaScript and CSS; no build step).

Example::

    >>> from starlette.testclient import TestClient
    >>> from clefctl.serve import Explorer, create_app
    >>> ex = Explorer.open("store.h5", model)                                    # doctest: +SKIP
    >>> client = TestClient(create_app(ex), base_url="http://127.0.0.1")        # doctest: +SKIP
    >>> client.get("/api/search", params={"q": "a smiling face", "k": 8}).json()["hits"][0]["row"]  # doctest: +SKIP
"""

from clefctl.serve.explorer import MAX_K, Explorer
from clefctl.serve.server import ServeOptions, bind_socket, is_loopback, run_serve


def create_app(explorer, **kwargs):
    """The web app over ``explorer`` (see :func:`clefctl.serve.app.create_app`)."""
    from clefctl.serve.app import create_app as _create_app

    return _create_app(explorer, **kwargs)


__all__ = ["Explorer", "MAX_K", "ServeOptions", "run_serve", "create_app", "bind_socket", "is_loopback"]
