"""`hemato serve`: a small Flask viewer and JSON API around edge_app.pipeline.classify_frame.

Uploads are decoded in memory (never written to disk); the classifier is shared behind a lock.
"""
from __future__ import annotations

import os

# OpenCV reads this once, when it is first imported: refuse decompression bombs (a 20 MB PNG can
# hold a gigapixel image). Only effective when this module is imported before cv2, as in `hemato serve`.
MAX_IMAGE_PIXELS = 50_000_000
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))

import argparse  # noqa: E402
import base64  # noqa: E402
import csv  # noqa: E402
import io  # noqa: E402
import secrets  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import unicodedata  # noqa: E402
from collections import OrderedDict  # noqa: E402
from typing import Any  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from flask import Flask, Response, jsonify, render_template, request, session  # noqa: E402
from werkzeug.exceptions import HTTPException  # noqa: E402

from edge_app.metadata import ModelFileError  # noqa: E402
from edge_app.model import Classifier, runtime_version  # noqa: E402
from edge_app.model_path import default_model_path  # noqa: E402
from edge_app.pipeline import UNCERTAIN, FrameResult, classify_frame  # noqa: E402
from edge_app.web_live import LiveCamera, colour_hex, draw_cells, encode_jpeg, mjpeg_stream  # noqa: E402

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
ANNOTATED_MAX_SIDE = 1280      # the page's annotated JPEG is at most this large
MAX_SESSIONS = 64              # browser sessions remembered (least recently used dropped)
MAX_SESSION_ROWS = 20_000      # rows remembered per session
ROW_FIELDS = ["source", "frame", "cell", "label", "predicted", "confidence",
              "x0", "y0", "x1", "y1", "latency_ms", "error"]


class BadImage(ValueError):
    """The upload is not an image OpenCV can decode; the message says why."""


def decode_image(data: bytes) -> np.ndarray:
    """Decode uploaded bytes to a BGR frame in memory (cv2.imdecode), or raise BadImage."""
    if not data:
        raise BadImage("the uploaded file is empty")
    try:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        raise BadImage(f"the image is too large to decode (limit {MAX_IMAGE_PIXELS // 1_000_000} megapixels)") from None
    if bgr is None:
        raise BadImage("the file is not an image this server can read (use JPEG, PNG, BMP or TIFF)")
    return bgr


def clean_source(name: str | None) -> str:
    """A display name for an upload: the last path component, printable, at most 120 characters."""
    name = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    return name[:120] or "upload"


def result_rows(source: str, frame: int, result: FrameResult, labels: list[str]) -> list[dict[str, Any]]:
    """One row per located cell, as in the CSV; one row with `error` set when no cell was found."""
    rows = []
    for i, cell in enumerate(result.cells):
        b = cell.box
        rows.append({"source": source, "frame": frame, "cell": i, "label": cell.label,
                     "predicted": cell.predicted, "confidence": round(cell.confidence, 6),
                     "x0": b.x0, "y0": b.y0, "x1": b.x1, "y1": b.y1,
                     "latency_ms": round(cell.invoke_ms, 3), "error": "",
                     "probabilities": {lab: round(float(p), 6) for lab, p in zip(labels, cell.probabilities)}})
    if not rows:
        rows.append({"source": source, "frame": frame, "cell": None, "label": "", "predicted": "",
                     "confidence": None, "x0": None, "y0": None, "x1": None, "y1": None,
                     "latency_ms": round(sum(result.timings_ms.values()), 3), "error": "no cell found",
                     "probabilities": {}})
    return rows


def differential(rows: list[dict[str, Any]], labels: list[str]) -> dict[str, Any]:
    """Counts and percentages per class (and UNCERTAIN) over the rows that are cells."""
    names = labels + [UNCERTAIN]
    counts = dict.fromkeys(names, 0)
    for row in rows:
        if not row["error"] and row["label"] in counts:
            counts[row["label"]] += 1
    total = sum(counts.values())
    return {"total": total, "images": len({(r["source"], r.get("upload")) for r in rows}),
            "classes": [{"label": n, "count": counts[n], "percent": round(100 * counts[n] / total, 1) if total else 0.0}
                        for n in names]}


def _csv_safe(value: Any) -> Any:
    """Stop spreadsheet formula injection through file names."""
    return "'" + value if isinstance(value, str) and value[:1] in ("=", "+", "-", "@") else value


def rows_to_csv(rows: list[dict[str, Any]], labels: list[str]) -> str:
    """The rows as CSV: ROW_FIELDS then one probability column per class label."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(ROW_FIELDS + labels)
    for row in rows:
        probs = row["probabilities"]
        writer.writerow([_csv_safe("" if row[f] is None else row[f]) for f in ROW_FIELDS]
                        + [probs.get(lab, "") for lab in labels])
    return out.getvalue()


def annotated_data_url(bgr: np.ndarray, result: FrameResult, labels: list[str]) -> str:
    """The frame with boxes and labels, at most ANNOTATED_MAX_SIDE, as a JPEG data URL."""
    scale = min(1.0, ANNOTATED_MAX_SIDE / max(bgr.shape[:2]))
    if scale < 1.0:
        bgr = cv2.resize(bgr, (round(bgr.shape[1] * scale), round(bgr.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    jpeg = encode_jpeg(draw_cells(bgr, result.cells, labels, scale))
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


class SessionStore:
    """Rows classified per browser session, in memory, bounded in sessions and rows."""

    def __init__(self) -> None:
        self._rows: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, sid: str, rows: list[dict[str, Any]]) -> None:
        with self._lock:
            kept = self._rows.pop(sid, [])
            kept.extend(rows)
            self._rows[sid] = kept[-MAX_SESSION_ROWS:]
            while len(self._rows) > MAX_SESSIONS:
                self._rows.popitem(last=False)

    def rows(self, sid: str | None) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._rows.get(sid, [])) if sid else []

    def reset(self, sid: str | None) -> None:
        with self._lock:
            self._rows.pop(sid, None)


class _State:
    """What the routes share: the classifier, its lock, the sessions and the optional live camera."""

    def __init__(self, classifier: Classifier, min_confidence: float | None, camera: LiveCamera | None,
                 lock: threading.Lock):
        self.classifier, self.min_confidence, self.camera, self.lock = classifier, min_confidence, camera, lock
        self.sessions = SessionStore()
        self.uploads = 0

    def close(self) -> None:
        if self.camera is not None:
            self.camera.stop()


def create_app(classifier: Classifier, camera: int | str | None = None,
               min_confidence: float | None = None) -> Flask:
    """The Flask app: upload page, live page (when `camera` is given), JSON API. Starts the camera thread."""
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=MAX_UPLOAD_BYTES, SECRET_KEY=secrets.token_bytes(32),
                      SESSION_COOKIE_SAMESITE="Lax")
    app.json.sort_keys = False  # keep probabilities in the model's label order
    lock = threading.Lock()
    live = LiveCamera(classifier, camera, lock, min_confidence).start() if camera is not None else None
    state = _State(classifier, min_confidence, live, lock)
    app.extensions["hemato"] = state
    labels = classifier.labels

    def session_id(create: bool = False) -> str | None:
        if create and "sid" not in session:
            session["sid"] = secrets.token_urlsafe(16)
        return session.get("sid")

    def page_context() -> dict[str, Any]:
        return {"model": classifier.name, "labels": labels, "live": live is not None,
                "colours": [colour_hex(i) for i in range(len(labels))], "max_bytes": MAX_UPLOAD_BYTES}

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Content-Security-Policy",
                                    "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'")
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        if exc.code == 413:
            message = f"upload too large: the limit is {MAX_UPLOAD_BYTES // (1024 * 1024)} MB"
        else:
            message = exc.description or exc.name
        if request.path.startswith("/api/"):
            return jsonify(error=message, status=exc.code), exc.code
        return Response(f"{exc.code} {exc.name}: {message}\n", exc.code, mimetype="text/plain")

    @app.get("/")
    def index():
        session_id(create=True)
        return render_template("index.html", **page_context())

    @app.get("/live")
    def live_page():
        session_id(create=True)
        return render_template("live.html", **page_context())

    @app.get("/api/health")
    def health():
        return jsonify(status="ok", model=classifier.name, labels=labels, runtime=classifier.runtime,
                       runtime_version=runtime_version(classifier.runtime), version=_app_version(),
                       input_size=classifier.input_size, input_dtype=classifier.input_dtype,
                       min_confidence=classifier.min_confidence if min_confidence is None else min_confidence,
                       model_name=classifier.metadata.get("model_name"), camera=live is not None)

    @app.post("/api/classify")
    def classify():
        upload = request.files.get("file")
        if upload is None:
            return jsonify(error="no image: send it as multipart/form-data in the field 'file'", status=400), 400
        source = clean_source(upload.filename)
        try:
            bgr = decode_image(upload.read())
        except BadImage as exc:
            return jsonify(error=f"{source}: {exc}", source=source, status=400), 400
        with lock:
            result = classify_frame(classifier, bgr, min_confidence)
            state.uploads += 1
            upload_no = state.uploads
        rows = result_rows(source, 0, result, labels)
        sid = session_id()
        if sid:
            state.sessions.add(sid, [{**r, "upload": upload_no} for r in rows])
        body: dict[str, Any] = {"source": source, "model": classifier.name, "labels": labels,
                                "width": int(bgr.shape[1]), "height": int(bgr.shape[0]),
                                "timings_ms": {k: round(v, 3) for k, v in result.timings_ms.items()},
                                "rows": rows}
        if request.args.get("annotated") == "1":
            body["annotated"] = annotated_data_url(bgr, result, labels)
        return jsonify(body)

    @app.get("/api/session")
    def session_counts():
        return jsonify(differential(state.sessions.rows(session_id()), labels))

    @app.post("/api/session/reset")
    def session_reset():
        state.sessions.reset(session_id())
        return jsonify(differential([], labels))

    @app.get("/session.csv")
    def session_csv():
        rows = state.sessions.rows(session_id())
        name = time.strftime("hemato-session-%Y%m%d-%H%M%S.csv")
        return Response(rows_to_csv(rows, labels), mimetype="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.get("/stream")
    def stream():
        if live is None:
            return Response("no camera: start the server with --camera\n", 404, mimetype="text/plain")
        return Response(mjpeg_stream(live), mimetype="multipart/x-mixed-replace; boundary=frame",
                        headers={"Cache-Control": "no-store"})

    @app.get("/api/live")
    def live_status():
        if live is None:
            return jsonify(error="no camera: start the server with --camera", status=404), 404
        result, fps, error = live.snapshot()
        rows = result_rows("live", 0, result, labels) if result is not None else []
        return jsonify(fps=round(fps, 2), error=error, cells=len(result.cells) if result else 0,
                       frame=differential(rows, labels))

    @app.post("/api/live/count")
    def live_count():
        if live is None:
            return jsonify(error="no camera: start the server with --camera", status=404), 404
        result, _, error = live.snapshot()
        if result is None:
            return jsonify(error=error or "no frame yet", status=409), 409
        with lock:
            state.uploads += 1
            upload_no = state.uploads
        rows = [{**r, "upload": upload_no} for r in result_rows(f"live-{upload_no}", 0, result, labels)]
        state.sessions.add(session_id(create=True), rows)
        return jsonify(differential(state.sessions.rows(session_id()), labels))

    return app


def _app_version() -> str:
    from hemato import __version__
    return __version__


def parse_camera(value: str | None) -> int | str | None:
    """--camera: a device index ("0") or a video file / stream URL."""
    if value is None:
        return None
    return int(value) if value.isdigit() else value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `hemato serve`."""
    parser.add_argument("--model", help="the .tflite model (default: $HEMATO_MODEL, else models/wbc_mobilenetv2_int8.tflite)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--camera", metavar="INDEX|VIDEO",
                        help="also stream this camera (index, e.g. 0) or video file with boxes and labels on /live")
    parser.add_argument("--min-confidence", type=float,
                        help="answer UNCERTAIN below this confidence (default: the threshold stored in the model)")
    parser.add_argument("--threads", type=int, help="interpreter threads (default: all cores)")


def main(args: argparse.Namespace) -> int:
    """Load the model and serve until Ctrl-C; 2 when the model cannot be loaded or the port is taken."""
    path = args.model or default_model_path()
    try:
        classifier = Classifier(path, threads=args.threads)
    except (ModelFileError, RuntimeError) as exc:
        print(f"hemato serve: {exc}", file=sys.stderr)
        return 2
    app = create_app(classifier, camera=parse_camera(args.camera), min_confidence=args.min_confidence)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"hemato serve: listening on {args.host}: anyone who can reach this machine can use it", file=sys.stderr)
    print(f"hemato serve: {classifier.name} on http://{args.host}:{args.port}/  (Ctrl-C to stop)", file=sys.stderr)
    try:
        app.run(host=args.host, port=args.port, threaded=True, debug=False, use_reloader=False)
    except OSError as exc:
        print(f"hemato serve: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    finally:
        app.extensions["hemato"].close()
    return 0
