"""The web viewer's JSON API, pages and live stream, through Flask's test client (no browser)."""
from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

from conftest import LABELS, make_smear

flask = pytest.importorskip("flask")

from edge_app.web import app as web  # noqa: E402
from edge_app.core.model import Classifier  # noqa: E402
from edge_app.core.model_path import DEFAULT_MODEL_NAME, default_model_path  # noqa: E402


def png(bgr) -> bytes:
    return cv2.imencode(".png", bgr)[1].tobytes()


@pytest.fixture(scope="module")
def classifier(tiny_tflite) -> Classifier:
    return Classifier(tiny_tflite, threads=1)


@pytest.fixture
def app(classifier):
    app = web.create_app(classifier)
    yield app
    app.extensions["hemato"].close()


@pytest.fixture
def client(app):
    return app.test_client()


def post_image(client, data: bytes, name: str = "smear.png", query: str = ""):
    return client.post(f"/api/classify{query}", data={"file": (io.BytesIO(data), name)},
                       content_type="multipart/form-data")


def test_health(client):
    r = client.get("/api/health")
    assert r.status_code == 200
    body = r.get_json()
    assert body["labels"] == LABELS
    assert body["model"] == "tiny_float32.tflite"
    assert body["runtime"] in ("ai-edge-litert", "tflite-runtime", "tensorflow")
    assert body["runtime_version"] and body["version"]
    assert body["camera"] is False


def test_classify_generated_image(client):
    r = post_image(client, png(make_smear(cells=[(160, 120, 30)])))
    assert r.status_code == 200
    body = r.get_json()
    assert body["source"] == "smear.png" and "annotated" not in body
    (row,) = body["rows"]
    assert set(web.ROW_FIELDS) <= set(row)
    assert row["error"] == "" and row["cell"] == 0 and row["frame"] == 0
    assert row["label"] in LABELS + ["UNCERTAIN"] and row["predicted"] in LABELS
    assert list(row["probabilities"]) == LABELS
    assert sum(row["probabilities"].values()) == pytest.approx(1, abs=1e-4)
    assert row["confidence"] == pytest.approx(max(row["probabilities"].values()), abs=1e-6)
    # the default crop is the stained nucleus's own extent: centred on it, as wide within a pixel or two
    assert abs((row["x0"] + row["x1"]) / 2 - 160) <= 2 and row["x1"] - row["x0"] >= 2 * 30 - 2
    assert row["latency_ms"] == pytest.approx(sum(body["timings_ms"].values()), abs=0.01)
    assert body["cells"] == 1 and set(body["timings_ms"]) == {"decode", "rbc_estimate", "rescale", "localise",
                                                             "preprocess", "invoke"}


def test_classify_annotated_and_no_cell(client):
    body = post_image(client, png(make_smear(cells=[])), query="?annotated=1").get_json()
    assert body["annotated"].startswith("data:image/jpeg;base64,")
    assert body["cells"] == 0 and body["rows"] == []  # as in `hemato run`: no row without a cell


def test_uncertain_below_threshold(classifier):
    app = web.create_app(classifier, min_confidence=1.0)
    body = post_image(app.test_client(), png(make_smear())).get_json()
    assert body["rows"][0]["label"] == "UNCERTAIN"
    assert body["rows"][0]["predicted"] in LABELS


def test_non_image_is_400(client):
    r = post_image(client, b"%PDF-1.4 definitely not a picture", name="report.pdf")
    assert r.status_code == 400
    assert "unsupported format: PDF" in r.get_json()["error"]
    r = client.post("/api/classify", data={}, content_type="multipart/form-data")
    assert r.status_code == 400 and "'file'" in r.get_json()["error"]


def test_oversized_upload_is_413_json(client):
    r = post_image(client, b"\xff" * (web.MAX_UPLOAD_BYTES + 1), name="huge.jpg")
    assert r.status_code == 413
    assert "20 MB" in r.get_json()["error"]


def test_request_path_is_never_a_file_path(client, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    body = post_image(client, png(make_smear()), name="../../etc/passwd").get_json()
    assert body["source"] == "passwd"
    assert list(tmp_path.iterdir()) == []


def test_uploads_stay_in_memory(client, monkeypatch):
    import werkzeug.formparser

    def no_disk(*args, **kwargs):
        raise AssertionError("an upload was about to be spooled to a temporary file")

    monkeypatch.setattr(werkzeug.formparser, "SpooledTemporaryFile", no_disk)
    big = cv2.imencode(".bmp", make_smear(640, 480))[1].tobytes()  # ~0.9 MB: werkzeug would spool it
    assert len(big) > 500 * 1024
    assert post_image(client, big, name="big.bmp").status_code == 200


def test_decompression_bomb_is_400():
    # OpenCV reads its pixel limit when first imported, so check in a fresh process, as `hemato serve` starts.
    script = ("from edge_app.web import app as web\n"
              "import cv2, numpy as np\n"
              "bomb = cv2.imencode('.png', np.zeros((8000, 8000), np.uint8))[1].tobytes()  # 64 MP in 70 kB\n"
              "try:\n    web.decode_upload(bomb)\nexcept web.BadImage as exc:\n    print('refused:', exc)\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                         cwd=Path(web.__file__).parents[1], timeout=120)
    assert "refused: image too large" in out.stdout, out.stderr


def test_pages_and_session_differential_csv(client):
    page = client.get("/")  # sets the session cookie
    assert page.status_code == 200 and b"Choose or drop" in page.data
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert client.get("/static/app.js").status_code == 200
    assert b"No camera" in client.get("/live").data
    for seed in range(2):
        assert post_image(client, png(make_smear(seed=seed)), name=f"=s{seed}.png").status_code == 200
    post_image(client, png(make_smear(cells=[])), name="empty.png")
    diff = client.get("/api/session").get_json()
    assert diff["total"] == 2 and diff["certain"] + diff["uncertain"] == 2
    assert [c["label"] for c in diff["classes"]] == LABELS
    assert sum(c["percent"] for c in diff["classes"]) == pytest.approx(100, abs=0.2)
    r = client.get("/session.csv")
    assert r.mimetype == "text/csv" and "attachment" in r.headers["Content-Disposition"]
    lines = r.get_data(as_text=True).strip().splitlines()
    assert lines[0].split(",") == web.ROW_FIELDS + [f"p_{label}" for label in LABELS]  # as `hemato run`
    assert len(lines) == 3 and lines[1].startswith("'=s0.png,0,0,")  # formula-injection guard
    assert client.post("/api/session/reset").get_json()["total"] == 0
    assert client.get("/session.csv").get_data(as_text=True).count("\n") == 1


def test_api_without_cookie_keeps_no_session(app, client):
    post_image(client, png(make_smear()))
    assert app.extensions["hemato"].sessions._rows == {}


def test_live_stream_from_video_file(classifier, tmp_path):
    video = tmp_path / "smear.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 20, (320, 240))
    for seed in range(4):
        writer.write(make_smear(seed=seed))
    writer.release()
    app = web.create_app(classifier, camera=str(video))
    try:
        client = app.test_client()
        client.get("/live")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status = client.get("/api/live").get_json()
            if status["cells"] and status["fps"] > 0:
                break
            time.sleep(0.1)
        assert status["error"] is None and status["cells"] == 1 and status["fps"] > 0
        assert status["frame"]["total"] == 1
        assert client.get("/live").status_code == 200 and b'src="/stream"' in client.get("/live").data
        r = client.get("/stream", buffered=False)
        assert r.mimetype == "multipart/x-mixed-replace"
        part = next(r.response)
        assert part.startswith(b"--frame\r\nContent-Type: image/jpeg") and b"\xff\xd8" in part
        r.close()
        assert client.post("/api/live/count").get_json()["total"] == 1
    finally:
        app.extensions["hemato"].close()
    assert app.extensions["hemato"].camera._thread.is_alive() is False


def test_live_camera_failure_is_reported_not_fatal(classifier, tmp_path):
    app = web.create_app(classifier, camera=str(tmp_path / "no-such-camera.avi"))
    try:
        client = app.test_client()
        deadline = time.monotonic() + 10
        status = client.get("/api/live").get_json()
        while status["error"] is None and time.monotonic() < deadline:
            time.sleep(0.1)
            status = client.get("/api/live").get_json()
        assert "no such file" in status["error"]
        assert client.get("/api/health").status_code == 200
        assert client.post("/api/live/count").status_code == 409
    finally:
        app.extensions["hemato"].close()


def test_no_camera_endpoints_are_404(client):
    assert client.get("/stream").status_code == 404
    assert client.get("/api/live").status_code == 404
    assert client.get("/api/nothing").get_json()["status"] == 404


def test_cli_arguments_and_bad_model(tmp_path, capsys, monkeypatch):
    parser = argparse.ArgumentParser()
    web.add_arguments(parser)
    args = parser.parse_args(["--model", str(tmp_path / "missing.tflite")])
    assert args.host == "127.0.0.1" and args.port == 8000 and args.camera is None
    assert web.main(args) == 2
    assert "model file not found" in capsys.readouterr().err
    from hemato.cli import main as hemato
    assert hemato(["serve", "--model", str(tmp_path / "missing.tflite"), "--port", "8001"]) == 2
    assert "hemato serve: model file not found" in capsys.readouterr().err
    monkeypatch.setenv("HEMATO_MODEL", str(tmp_path / "gone.tflite"))
    assert hemato(["serve"]) == 2
    assert "gone.tflite (from $HEMATO_MODEL)" in capsys.readouterr().err


def test_default_model_path(tmp_path, monkeypatch):
    monkeypatch.delenv("HEMATO_MODEL", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_model_path().name == DEFAULT_MODEL_NAME
    assert default_model_path().parent.parent != tmp_path  # falls back to the repo's models/
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / DEFAULT_MODEL_NAME).write_bytes(b"x")
    assert default_model_path() == tmp_path / "models" / DEFAULT_MODEL_NAME
    monkeypatch.setenv("HEMATO_MODEL", "/elsewhere/m.tflite")
    assert str(default_model_path()) == "/elsewhere/m.tflite"


def test_page_for_the_bench_states_threshold_meaning_and_notice(classifier):
    app = web.create_app(classifier, min_confidence=0.9857)
    page = app.test_client().get("/").get_data(as_text=True)
    assert "Not a diagnostic device: a qualified person must confirm every result." in page
    assert 'id="threshold">98.57 %<' in page and "UNCERTAIN means the model&#39;s confidence was below" in page
    assert "% of answered" in page and "% of all cells" in page  # both percentages, each labelled
    app.extensions["hemato"].close()


def test_differential_with_and_without_uncertain(classifier):
    rows = [{"label": label, "error": ""} for label in ["EOSINOPHIL", "EOSINOPHIL", "MONOCYTE", "UNCERTAIN"]]
    diff = web.differential(rows, LABELS)
    by = {c["label"]: c for c in diff["classes"]}
    assert by["EOSINOPHIL"]["percent"] == 66.7 and by["EOSINOPHIL"]["percent_of_all"] == 50.0
    assert diff["uncertain_percent"] == 25.0 and diff["total"] == 4 and diff["certain"] == 3


def test_annotated_image_is_drawn_at_display_size(client):
    body = post_image(client, png(make_smear(320, 240)), query="?annotated=1").get_json()
    data = __import__("base64").b64decode(body["annotated"].split(",", 1)[1])
    shown = cv2.imdecode(__import__("numpy").frombuffer(data, "uint8"), cv2.IMREAD_COLOR)
    assert shown.shape[1] == web.ANNOTATED_WIDTH and shown.shape[0] == 720  # upscaled before drawing


def serve_args(*extra):
    parser = argparse.ArgumentParser()
    web.add_arguments(parser)
    return parser.parse_args(list(extra))


def test_served_by_waitress_unless_debug(tiny_tflite, monkeypatch):
    calls = []
    fake = type(sys)("waitress")
    fake.serve = lambda app, **kw: calls.append(("waitress", kw))
    monkeypatch.setitem(sys.modules, "waitress", fake)
    monkeypatch.setattr(flask.Flask, "run", lambda self, **kw: calls.append(("flask", kw)))
    monkeypatch.setattr(web.signal, "signal", lambda *a: None)
    assert web.main(serve_args("--model", str(tiny_tflite), "--port", "8123")) == 0
    assert calls == [("waitress", {"host": "127.0.0.1", "port": 8123, "threads": web.SERVER_THREADS,
                                   "ident": "hemato"})]
    calls.clear()
    assert web.main(serve_args("--model", str(tiny_tflite), "--debug")) == 0
    assert calls[0][0] == "flask" and calls[0][1]["debug"] is True


def test_serve_without_waitress_names_the_extra(tiny_tflite, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "waitress", None)  # import waitress raises ImportError
    from hemato.cli import main as hemato
    assert hemato(["serve", "--model", str(tiny_tflite)]) == 2
    assert 'pip install ".[web]"' in capsys.readouterr().err
