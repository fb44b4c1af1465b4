"""The review page and the printed report in headless Chromium: reclassify a cell (count and export follow),
print the report to PDF and look at its pages. Screenshots and PNG pages go to test-artifacts/."""
from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import time
from base64 import b64decode
from pathlib import Path
from typing import Callable

import pytest

from conftest import LABELS, SHARED_DATA, run_csv, smears_run
from edge_app.core.metadata import read_model_metadata
from edge_app.core.model_path import DEFAULT_MODEL_NAME
from test_web_browser import (ARTIFACTS, DevToolsPipe, browser, evaluate, find_chromium,  # noqa: F401
                              new_tab, serving, wait_for)

pytest.importorskip("flask")
pytestmark = pytest.mark.skipif(find_chromium() is None, reason="chromium not found: run .ci/install-browser")


def serving_review(model_path: Path, review_csv: Path, threads: int = 1):
    return serving(model_path, threads, review=str(review_csv))


STATE = """JSON.stringify({
  groups: [...document.querySelectorAll('.review-group')].map(g => g.dataset.label),
  thumbs: document.querySelectorAll('figure.thumb').length,
  loaded: [...document.querySelectorAll('figure.thumb img')].every(i => i.complete && i.naturalWidth > 0),
  reviewed: document.getElementById('review-reviewed').textContent,
  counts: Object.fromEntries([...document.querySelectorAll('#review-counts tr')].map(
    r => [r.cells[0].textContent.trim(), r.cells[1].textContent])),
  selected: (document.querySelector('figure.thumb.selected') || {dataset: {}}).dataset.id || null,
})"""


def fetch_text(browser: DevToolsPipe, session: str, path: str) -> str:
    """The text of a same-origin GET, fetched by the page (so with its session cookie)."""
    result = browser.send("Runtime.evaluate", {"expression": f"fetch({path!r}).then(r => r.text())",
                                               "awaitPromise": True, "returnByValue": True}, session)
    return result["result"]["value"]


def page_state(browser, session) -> dict:
    return json.loads(evaluate(browser, session, STATE))


def review_and_check(browser: DevToolsPipe, url: str, screenshot: Path, labels: list[str] = LABELS,
                     truth: Callable[[str], str] | None = None) -> dict:
    """Open /review, reclassify the first cell with a class button, the second with a key; check counts and export.

    truth(source): a cell's true class, which the reviews then give (so the screenshot shows sensible
    reviews); without it the first cell gets another class than its group's and the second the first class.
    """
    session = new_tab(browser, url + "/review", height=1000)
    wait_for(browser, session, "document.querySelectorAll('figure.thumb').length > 0 && "
                               "document.getElementById('review-total').textContent !== '0'")
    before = page_state(browser, session)
    first = evaluate(browser, session, "document.querySelector('figure.thumb').dataset.id")
    first_group = evaluate(browser, session, "document.querySelector('figure.thumb').closest('.review-group').dataset.label")
    sources = {str(c["id"]): c["source"] for c in json.loads(fetch_text(browser, session, "/api/review"))["cells"]}
    target = truth(sources[first]) if truth else next(label for label in labels if label != first_group)
    evaluate(browser, session, f"document.querySelector('figure.thumb[data-id=\"{first}\"] "
                               f"button[data-label=\"{target}\"]').click()")
    wait_for(browser, session, "document.getElementById('review-reviewed').textContent.startsWith('1')")
    after_click = page_state(browser, session)
    # the next cell is selected: a key reclassifies it (1: the first class)
    key = str(labels.index(truth(sources[after_click["selected"]])) + 1) if truth else "1"
    browser.send("Input.dispatchKeyEvent", {"type": "keyDown", "key": key, "text": key}, session)
    browser.send("Input.dispatchKeyEvent", {"type": "keyUp", "key": key}, session)
    wait_for(browser, session, "document.getElementById('review-reviewed').textContent.startsWith('2')")
    after_key = page_state(browser, session)
    exported = fetch_text(browser, session, "/review.csv")
    wait_for(browser, session, f"(() => {{ const s = {STATE}; return JSON.parse(s).loaded; }})()")
    time.sleep(0.3)
    shot = browser.send("Page.captureScreenshot", {"format": "png"}, session)
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot.write_bytes(b64decode(shot["data"]))
    problems = [e for e in browser.events if e.get("method") == "Runtime.exceptionThrown"
                or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
    return {"before": before, "after_click": after_click, "after_key": after_key, "target": target,
            "first": first, "first_group": first_group, "problems": problems,
            "export": list(csv.DictReader(io.StringIO(exported)))}


def print_pdf(browser: DevToolsPipe, html_file: Path, pdf: Path) -> bytes:
    session = new_tab(browser, html_file.resolve().as_uri(), height=1000)
    wait_for(browser, session, "document.readyState === 'complete'")
    result = browser.send("Page.printToPDF", {"printBackground": True, "preferCSSPageSize": True,
                                              "displayHeaderFooter": False}, session)
    data = b64decode(result["data"])
    pdf.write_bytes(data)
    return data


def pdf_pages(pdf: Path, prefix: Path) -> list[Path]:
    """PNG pages of a PDF (poppler's pdftoppm), when it is installed."""
    if shutil.which("pdftoppm") is None:
        pytest.skip("pdftoppm not found: apt-get install poppler-utils")
    subprocess.run(["pdftoppm", "-png", "-r", "70", str(pdf), str(prefix)], check=True)
    return sorted(prefix.parent.glob(prefix.name + "-*.png"))


def test_review_reclassify_counts_and_export(browser, tmp_path, tiny_tflite):
    results = smears_run(tmp_path, tiny_tflite, 4)
    with serving_review(tiny_tflite, results) as url:
        state = review_and_check(browser, url, ARTIFACTS / "review_page_tiny.png")
    assert not state["problems"], state["problems"]
    before, after = state["before"], state["after_click"]
    assert before["thumbs"] == 4 and before["loaded"] and before["reviewed"] == "0"
    assert after["counts"][state["target"]] == str(int(before["counts"].get(state["target"], "0")) + 1)
    assert after["reviewed"].startswith("1")
    assert state["target"] in after["groups"]
    assert state["after_key"]["reviewed"].startswith("2")
    assert len([r for r in state["export"] if r["reviewed"] == "yes"]) == 2
    assert any(r["label"] == state["target"] and r["model_label"] == state["first_group"] and r["reviewed"] == "yes"
               for r in state["export"])


def test_printed_report_pages(browser, tmp_path, tiny_tflite):
    from hemato.cli import main
    results = smears_run(tmp_path, tiny_tflite, 30)
    report = tmp_path / "report.html"
    assert main(["report", str(results), "--out", str(report), "--model", str(tiny_tflite)]) == 0
    pdf = tmp_path / "report.pdf"
    data = print_pdf(browser, report, pdf)
    assert data[:5] == b"%PDF-"
    pages = pdf_pages(pdf, tmp_path / "page")
    assert 1 <= len(pages) <= 3
    if shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
        assert "Not a diagnostic device" in text and "Differential count" in text
    ARTIFACTS.mkdir(exist_ok=True)
    for page in pages:
        shutil.copy(page, ARTIFACTS / f"report_tiny_{page.name}")


SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "models" / DEFAULT_MODEL_NAME
REAL_IMAGES = SHARED_DATA / "TEST_SIMPLE"


@pytest.mark.realdata
@pytest.mark.skipif(not SHIPPED_MODEL.is_file() or not REAL_IMAGES.is_dir(),
                    reason="needs the shipped model and ../shared/data/blood-cells")
def test_real_cells_review_page_and_printed_report(browser, tmp_path):
    """Real TEST_SIMPLE cells through the shipped model: the review page and the printed report, kept as images."""
    from hemato.cli import main
    folder = tmp_path / "sample"
    folder.mkdir()
    for label in LABELS:
        for path in sorted((REAL_IMAGES / label).iterdir())[:4]:
            shutil.copy(path, folder / f"{label.lower()}_{path.name}")
    results = run_csv(folder, SHIPPED_MODEL, tmp_path / "results.csv")
    with serving_review(SHIPPED_MODEL, results, threads=2) as url:
        state = review_and_check(browser, url, ARTIFACTS / "review_page.png",
                                 read_model_metadata(SHIPPED_MODEL)["labels"],
                                 truth=lambda source: Path(source).name.split("_")[0].upper())
        session = new_tab(browser, url + "/review", height=1000)
        wait_for(browser, session, "document.querySelectorAll('figure.thumb').length > 0")
        exported = tmp_path / "reviewed.csv"
        exported.write_text(fetch_text(browser, session, "/review.csv"))
    assert not state["problems"], state["problems"]
    report = tmp_path / "report.html"
    assert main(["report", str(exported), "--out", str(report), "--model", str(SHIPPED_MODEL),
                 "--sample", "TEST_SIMPLE, 16 images"]) == 0
    print_pdf(browser, report, tmp_path / "report.pdf")
    pages = pdf_pages(tmp_path / "report.pdf", tmp_path / "page")
    assert pages
    for page in pages:
        shutil.copy(page, ARTIFACTS / f"report_{page.name}")
