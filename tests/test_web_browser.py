"""End to end in headless Chromium: upload smears on the page, see the class and the probability bars.

Chromium is driven over its DevTools pipe (--remote-debugging-pipe) with the standard library only:
no chromedriver, no extra Python package, no debugging port. Screenshots go to test-artifacts/ (git-ignored):
web_upload_page.png (the page before an upload) and web_result_page.png (shipped model, real samples), the two
shown in docs/web.md.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
import time
from base64 import b64decode
from contextlib import contextmanager
from pathlib import Path

import cv2
import pytest

from conftest import LABELS, SHARED_DATA, make_smear
from edge_app.core.model_path import DEFAULT_MODEL_NAME

pytest.importorskip("flask")

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
SCREENSHOT = ARTIFACTS / "web_upload_result.png"
UPLOAD_PAGE = ARTIFACTS / "web_upload_page.png"
RESULT_PAGE = ARTIFACTS / "web_result_page.png"
SAMPLES = Path(__file__).resolve().parents[1] / "samples"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-default-browser-check", "--disable-dev-shm-usage", "--mute-audio", "--hide-scrollbars",
                  "--window-size=1280,1100", "--remote-debugging-pipe"]


def find_chromium() -> str | None:
    """$CHROMIUM (when executable), else the first Chromium/Chrome on PATH."""
    if os.environ.get("CHROMIUM"):
        return shutil.which(os.environ["CHROMIUM"])
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


class DevToolsPipe:
    """A minimal Chrome DevTools Protocol client over the pipe: commands on fd 3, replies on fd 4, NUL-framed."""

    def __init__(self, chromium: str, profile: Path):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # bash puts the pipe ends where Chromium expects them (fd 3 in, fd 4 out), then becomes Chromium.
        script = f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w}'
        self.log = profile.parent / "chromium.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(["bash", "-c", script, chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                          "about:blank"], pass_fds=(to_browser_r, from_browser_w),
                                         stdout=log, stderr=subprocess.STDOUT)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._replies: dict[int, queue.Queue] = {}
        self.events: list[dict] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        while chunk := os.read(self._from_browser, 65536):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                with self._lock:
                    box = self._replies.get(message.get("id"))
                if box is not None:
                    box.put(message)
                else:
                    self.events.append(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60) -> dict:
        """Send one command and wait for its reply; raises on a protocol error."""
        with self._lock:
            self._next_id += 1
            ident = self._next_id
            self._replies[ident] = box = queue.Queue()
        message = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        try:
            reply = box.get(timeout=timeout)
        except queue.Empty:
            state = "running" if self.proc.poll() is None else f"exited with status {self.proc.returncode}"
            tail = self.log.read_text(errors="replace")[-2000:]
            raise TimeoutError(f"Chromium did not answer {method} within {timeout} s ({state}); "
                               f"its output:\n{tail}") from None
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)


@contextmanager
def serving(model_path: Path, threads: int = 1, **options):
    """The web app for a model on a free local port, in a thread (werkzeug, threaded: `hemato serve --debug`);
    options go to create_app (e.g. review=CSV)."""
    from werkzeug.serving import make_server

    from edge_app.core.model import Classifier
    from edge_app.web.app import create_app

    app = create_app(Classifier(model_path, threads=threads), **options)
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        app.extensions["hemato"].close()


@pytest.fixture
def server(tiny_tflite):
    with serving(tiny_tflite) as url:
        yield url


# Decided at collection, before the session's tiny model is built.
pytestmark = pytest.mark.skipif(find_chromium() is None, reason="chromium not found: run .ci/install-browser "
                                "(apt-get install chromium) or set CHROMIUM=/path/to/chromium")


@pytest.fixture
def browser(tmp_path):
    pipe = DevToolsPipe(find_chromium(), tmp_path / "chromium-profile")
    yield pipe
    pipe.close()


def evaluate(pipe: DevToolsPipe, session: str, expression: str):
    result = pipe.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
    if "exceptionDetails" in result:
        raise AssertionError(f"page script failed: {result['exceptionDetails']}")
    return result["result"].get("value")


def wait_for(pipe: DevToolsPipe, session: str, expression: str, timeout: float = 60):
    """Poll a JavaScript expression until it is truthy; its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = evaluate(pipe, session, expression)
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for: {expression}")


PAGE_STATE = """JSON.stringify({
  answers: [...document.querySelectorAll('.result .answer .label')].map(e => e.textContent),
  confidences: [...document.querySelectorAll('.result .answer .conf')].map(e => e.textContent),
  barLabels: [...document.querySelectorAll('.result .bar-row .bar-label')].map(e => e.textContent),
  barWidths: [...document.querySelectorAll('.result .bar-row .fill')].map(e => parseFloat(e.style.width)),
  imageWidth: (document.querySelector('.result img.annotated') || {}).naturalWidth || 0,
  total: document.getElementById('diff-total').textContent,
  errors: [...document.querySelectorAll('.error-card')].map(e => e.textContent),
  cards: [...document.querySelectorAll('#results > article .source')].map(e => e.textContent),
  status: document.getElementById('status').textContent,
  notice: (document.getElementById('not-diagnostic') || {}).textContent || '',
  threshold: (document.getElementById('threshold') || {}).textContent || '',
  explained: (document.getElementById('uncertain-explained') || {}).textContent || '',
  reasons: [...document.querySelectorAll('.result .answer .reason')].map(e => e.textContent),
  imageShownWidth: (document.querySelector('.result img.annotated') || {}).clientWidth || 0,
  cardWidth: (document.querySelector('.result') || {}).clientWidth || 0,
  diffHead: [...document.querySelectorAll('#differential thead th')].map(e => e.textContent),
})"""


def new_tab(browser: DevToolsPipe, url: str, width: int = 1280, height: int = 1100) -> str:
    """A new tab of that size navigated to url (not waited for); its DevTools session."""
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Runtime", "Log"):
        browser.send(f"{domain}.enable", session=session)
    browser.send("Emulation.setDeviceMetricsOverride",
                 {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session)
    browser.send("Page.navigate", {"url": url}, session)
    return session


def open_page(browser: DevToolsPipe, url: str, height: int = 1100) -> str:
    """A new tab on the upload page, loaded; its DevTools session."""
    session = new_tab(browser, url + "/", height=height)
    wait_for(browser, session, "document.readyState === 'complete' && !!document.getElementById('file') "
                               "&& document.getElementById('diff-body').children.length > 0")
    return session


def screenshot(browser: DevToolsPipe, session: str, path: Path) -> None:
    time.sleep(0.3)  # let the last paint land before the screenshot
    shot = browser.send("Page.captureScreenshot", {"format": "png"}, session)
    ARTIFACTS.mkdir(exist_ok=True)
    path.write_bytes(b64decode(shot["data"]))


def upload(browser: DevToolsPipe, session: str, images: list[Path]) -> dict:
    """Give the page's file input these images; wait until each has its card and the batch is done."""
    root = browser.send("DOM.getDocument", session=session)["root"]["nodeId"]
    file_input = browser.send("DOM.querySelector", {"nodeId": root, "selector": "#file"}, session)["nodeId"]
    browser.send("DOM.setFileInputFiles", {"files": [str(i) for i in images], "nodeId": file_input}, session)
    done = (f"document.querySelectorAll('#results > article').length === {len(images)} && "
            "document.getElementById('status').textContent.length > 0 && "
            "!document.getElementById('status').textContent.startsWith('Classifying')")
    wait_for(browser, session, done)
    return json.loads(evaluate(browser, session, PAGE_STATE))


def upload_and_screenshot(browser: DevToolsPipe, url: str, image: Path, path: Path, height: int = 1100) -> dict:
    """Open the upload page, give it one image, wait for the answer and save a screenshot; the page state."""
    session = open_page(browser, url, height)
    state = upload(browser, session, [image])
    screenshot(browser, session, path)
    return state


def test_upload_shows_class_and_probability_bars(browser, server, tmp_path):
    image = tmp_path / "smear_two_cells.png"
    cv2.imwrite(str(image), make_smear(640, 480, cells=[(170, 160, 45), (470, 320, 50)], seed=4))
    state = upload_and_screenshot(browser, server, image, SCREENSHOT)

    assert not state["errors"], state["errors"]
    assert len(state["answers"]) == 2, state  # two cells located, each with an answer
    assert all(answer in LABELS or "uncertain" in answer for answer in state["answers"])
    assert all(c.endswith("%") for c in state["confidences"])
    assert state["barLabels"] == LABELS * 2  # one bar per class, per cell
    assert all(0 <= w <= 100 for w in state["barWidths"]) and sum(state["barWidths"]) == pytest.approx(200, abs=1)
    assert state["imageWidth"] == 960 and state["total"] == "2"  # drawn at display size, labels legible
    problems = [e for e in browser.events if e.get("method") == "Runtime.exceptionThrown"
                or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
    assert not problems, problems  # no script errors, no CSP violations, no failed loads
    assert SCREENSHOT.stat().st_size > 10_000


SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "models" / DEFAULT_MODEL_NAME
REAL_IMAGE = SHARED_DATA / "TEST_SIMPLE" / "EOSINOPHIL" / "_0_5239.jpeg"


@pytest.fixture
def shipped_server():
    """The web app serving the shipped default model."""
    with serving(SHIPPED_MODEL, threads=2) as url:
        yield url


@pytest.mark.realdata
@pytest.mark.skipif(not SHIPPED_MODEL.is_file() or not REAL_IMAGE.is_file(),
                    reason="needs the shipped model in models/ and ../shared/data/blood-cells")
def test_real_test_image_on_shipped_model(browser, shipped_server):
    """A real TEST eosinophil through the page: one cell, its class and a bar per class; screenshot kept."""
    from edge_app.core.metadata import read_model_metadata
    state = upload_and_screenshot(browser, shipped_server, REAL_IMAGE, ARTIFACTS / "web_real_test_image.png", 900)
    assert not state["errors"], state["errors"]
    assert len(state["answers"]) == 1 and len(state["barLabels"]) == len(read_model_metadata(SHIPPED_MODEL)["labels"])
    (ARTIFACTS / "web_real_test_image.json").write_text(json.dumps(state, indent=1))


def test_bench_page_with_the_shipped_model_and_samples(browser, shipped_server, tmp_path):
    """The shipped model on three uploads, in this order: an answered cell, an UNCERTAIN one, a broken file.
    Saves the screenshots of the upload page and of the result page."""
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a JPEG")
    images = [SAMPLES / "neutrophil_0_1966.jpeg", SAMPLES / "eosinophil_11_9310.jpeg", broken]
    session = open_page(browser, shipped_server, 2250)
    screenshot(browser, session, UPLOAD_PAGE)
    state = upload(browser, session, images)
    screenshot(browser, session, RESULT_PAGE)

    from edge_app.core.metadata import read_model_metadata
    threshold = f"{100 * read_model_metadata(SHIPPED_MODEL)['min_confidence']:.2f} %"
    assert state["cards"] == [p.name for p in images]  # upload order
    assert state["answers"] == ["NEUTROPHIL", "⚠ UNCERTAIN"]
    assert state["reasons"] == [f"(below the {threshold} threshold: a person classifies this cell)"]
    assert len(state["errors"]) == 1 and "failed" in state["errors"][0]
    assert state["status"] == "Done: 2 images classified; 1 failed (see below)."
    assert state["notice"] == "Not a diagnostic device: a qualified person must confirm every result."
    assert state["threshold"] == threshold and "UNCERTAIN means" in state["explained"]
    assert state["diffHead"] == ["Class", "Count", "% of answered", "% of all cells"]
    assert state["imageShownWidth"] >= state["cardWidth"] - 40  # scaled to the card
    assert UPLOAD_PAGE.stat().st_size > 10_000 and RESULT_PAGE.stat().st_size > 10_000


def test_a_failed_only_upload_says_failed(browser, server, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    state = upload(browser, open_page(browser, server), [broken])
    assert state["status"] == "Failed: 1 image could not be classified (see below)."
    assert len(state["errors"]) == 1 and state["total"] == "0"
