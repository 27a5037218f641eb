"""`clefctl serve` end to end in a real headless browser: Debian's Chromium driven by Playwright.

Starts `clefctl serve` as a subprocess on a free port of 127.0.0.1 over a small synthetic store,
types a query and sees the result images load, scrolls for the next page, opens a hit's heatmap
and word relevancy, searches by an uploaded image, edits a prompt class and sees the ranking
change, saves the edit as YAML and a screenshot. Playwright's own browser download is not used:
the system Chromium is (`apt-get install -y chromium`; `.ci/run` installs it). The test is skipped
only when no Chromium is installed. ``CLEF_SERVE_SCREENSHOT=docs/img/serve.png`` also writes the
screenshot there (the README's picture).
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from serve_helpers import build_serve_store  # noqa: E402

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"]
TEXT = "a smiling face with raised cheeks"
PAGE = 12                          # the page asks for 12 hits at a time here (?page=12): scrolling pages
MAX_SCREENSHOT_BYTES = 200_000


def chromium_path() -> str | None:
    for cand in (os.environ.get("CLEF_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                 shutil.which("chromium-browser")):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`clefctl serve --port 0 --json` over the test store; yields (base URL, store info); stopped after."""
    built = build_serve_store(tmp_path_factory.mktemp("serve-browser"), outside_link=False)
    cmd = [sys.executable, "-m", "clefctl.cli", "serve", "--store", str(built["store"]), "--weights",
           str(built["weights"]), "--host", "127.0.0.1", "--port", "0", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
    try:
        first = lines.get(timeout=120)
    except queue.Empty:
        proc.kill()
        pytest.fail("clefctl serve did not start within 120 s: " + proc.stderr.read())
    if not first:
        proc.wait(timeout=10)
        pytest.fail(f"clefctl serve exited {proc.returncode}: {proc.stderr.read()}")
    record = json.loads(first)
    yield record["url"].rstrip("/"), record, built
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def browser():
    exe = chromium_path()
    if exe is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_FLAGS, headless=True)
        yield b
        b.close()


def _loaded_images(page, selector: str) -> int:
    return page.eval_on_selector_all(selector, "els => els.filter(i => i.complete && i.naturalWidth > 0).length")


def _ids(page, n: int = 10) -> list[str]:
    return page.eval_on_selector_all("#results .hit", f"els => els.slice(0, {n}).map(e => e.dataset.id)")


def _wait(page, script: str, arg=None) -> None:
    """``page.wait_for_function``; a timeout names what the page showed (status, error box, hits)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(script, arg=arg)
    except PlaywrightTimeout:
        shown = page.evaluate("() => ({status: document.querySelector('#status').textContent,"
                              " done: document.querySelector('#status').dataset.done,"
                              " error: document.querySelector('#error').textContent,"
                              " classes: document.querySelector('#classes-status').textContent,"
                              " hits: document.querySelectorAll('#results .hit').length})")
        raise AssertionError(f"timed out waiting for {script!r} ({arg!r}); the page shows {shown}") from None


def _wait_for_new_results(page, generation: str) -> None:
    _wait(page, "g => document.querySelector('#status').dataset.done !== g", generation)


def test_search_explain_rescore_in_chromium(server, browser, tmp_path):
    base, record, built = server
    errors: list[str] = []
    page = browser.new_page(viewport={"width": 1280, "height": 820})
    page.set_default_timeout(20_000)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{base}/?page={PAGE}")
    page.wait_for_selector("#store-info[data-ready='1']")
    assert f"{record['rows']} faces" in page.inner_text("#store-info")

    # a text query: result images load, and scrolling fetches the next page
    page.fill("#q", TEXT)
    page.press("#q", "Enter")
    _wait(page, "n => document.querySelectorAll('#results .hit img').length >= n", PAGE)
    _wait(page, "n => [...document.querySelectorAll('#results .hit img')].slice(0, n)"
                ".every(i => i.complete && i.naturalWidth > 0)", 8)
    assert page.eval_on_selector("#results .hit img", "i => i.naturalWidth") == 160
    page.eval_on_selector("#sentinel", "s => s.scrollIntoView()")
    _wait(page, "n => document.querySelectorAll('#results .hit').length > n", PAGE)
    shown = _ids(page, 100)
    assert len(set(shown)) == len(shown) > PAGE                    # pages do not repeat hits

    # why did it match: the heatmap and the word relevancy for the query text
    page.evaluate("() => window.scrollTo(0, 0)")
    page.click("#results .hit:nth-child(2)")
    _wait(page, "() => { const i = document.querySelector('#heatmap');"
                " return !i.hidden && i.complete && i.naturalWidth === 256; }")
    page.wait_for_selector("#words .word")
    assert page.eval_on_selector_all("#words .word", "ws => ws.map(w => w.textContent)") == TEXT.split()
    assert "cosine" in page.inner_text("#heatmap-caption")
    assert page.inner_text("#detail-fields")                        # id, source, labels...
    page.screenshot(path=str(tmp_path / "serve.png"))

    # search by an uploaded image: the photo itself comes first
    generation = page.get_attribute("#status", "data-done")
    page.set_input_files("#upload", str(built["images"] / "lfw_05.png"))
    _wait_for_new_results(page, generation)
    assert _ids(page, 1) == ["lfw/05"]
    generation = page.get_attribute("#status", "data-done")
    page.click("#results .hit:nth-child(1)")
    page.click("#more-like-this")
    _wait_for_new_results(page, generation)
    assert _ids(page, 1) == ["lfw/05"]

    # prompt classes live: rank by AU12, rename it, re-score: the ranking changes
    generation = page.get_attribute("#status", "data-done")
    page.click(".class[data-id='AU12'] button.rank")
    _wait_for_new_results(page, generation)
    assert "ranked by AU12" in page.inner_text("#status")
    before = _ids(page)
    generation = page.get_attribute("#status", "data-done")
    page.fill(".class[data-id='AU12'] input.name", "a wide toothy grin")
    page.click("#rescore")
    _wait_for_new_results(page, generation)
    after = _ids(page)
    assert after != before
    assert page.input_value(".class[data-id='AU12'] input.name") == "a wide toothy grin"
    with page.expect_download() as download:
        page.click("#save-yaml")
    saved = Path(download.value.path()).read_text(encoding="utf-8")
    assert "a wide toothy grin" in saved
    assert _loaded_images(page, "#results .hit img") >= 8
    assert not errors, errors
    page.close()

    # the screenshot of the search with its heatmap, made small for the README
    shot = Image.open(tmp_path / "serve.png").convert("RGB").quantize(colors=128, dither=Image.Dither.NONE)
    out = Path(os.environ.get("CLEF_SERVE_SCREENSHOT") or tmp_path / "serve-small.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    shot.save(out, optimize=True)
    assert out.stat().st_size < MAX_SCREENSHOT_BYTES, out.stat().st_size


def test_live_server_refuses_raw_dotdot_paths(server):
    base, record, _ = server
    conn = http.client.HTTPConnection("127.0.0.1", record["port"], timeout=20)
    try:
        conn.request("GET", "/media/../../../../etc/passwd")     # sent as is, not folded by a client
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status == 403 and b"root:" not in body
    assert json.loads(body)["status"] == 403
