"""`hemato serve`: a small Flask viewer and JSON API around edge_app.core.pipeline.classify_frame.

Uploads are decoded in memory (never written to disk) by the core decoder; the classifier is shared behind a lock.
Served by waitress (a pure-Python production WSGI server that runs on a Raspberry Pi); Flask's development server
only with --debug.
"""
from __future__ import annotations

import argparse
import csv
import io
import secrets
import signal
import sys
import threading
import time
import unicodedata
from collections import OrderedDict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from flask import Flask, Request, Response, jsonify, render_template, request, session
from werkzeug.exceptions import HTTPException

from edge_app.core.frames import scaled_cell
from edge_app.core.image_decode import Decoded, ImageError, decode_image
from edge_app.core.metadata import ModelFileError
from edge_app.core.model import Classifier, adaptation_note, runtime_version
from edge_app.core.model_path import MODEL_HELP, find_model
from edge_app.core.overlay import colour_hex, draw_results, encode_jpeg, jpeg_data_url, rgb_jpeg
from edge_app.core.pipeline import FrameResult, classify_frame
from edge_app.core.records import BASE_COLUMNS, cell_record, csv_columns, csv_values, differential, spreadsheet_safe
from edge_app.core.sources import is_camera
from edge_app.core.wording import NOT_DIAGNOSTIC, naming, threshold_text, uncertain_meaning
from edge_app.web.live import LiveCamera, mjpeg_stream
from edge_app.web.review import ReviewStore, counts, export_csv, export_zip, session_report
from hemato.argtypes import fraction, port, positive_int
from hemato.argtypes import rbc_diameter as diameter_px

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_IMAGE_PIXELS = 50_000_000  # an upload may claim a huge image in a small file: refused before decoding
ANNOTATED_MAX_SIDE = 1280      # the page's annotated JPEG is at most this large
ANNOTATED_WIDTH = 960          # and drawn at about the width it is shown (labels legible, not upscaled pixels)
SERVER_THREADS = 8             # waitress worker threads (each open live stream holds one)
MAX_SESSIONS = 64              # browser sessions remembered (least recently used dropped)
MAX_SESSION_ROWS = 20_000      # rows remembered per session
ROW_FIELDS = BASE_COLUMNS      # the CSV of `hemato run`: source, frame, cell, label, ... error


class BadImage(ValueError):
    """The upload cannot be used as an image; the message (the core decoder's) says why."""


def decode_upload(data: bytes) -> np.ndarray:
    """Uploaded bytes to an upright BGR frame through the core decoder, at most MAX_IMAGE_PIXELS; else BadImage."""
    return _decode_upload(data).image


def _decode_upload(data: bytes) -> Decoded:
    try:
        return decode_image(data, max_pixels=MAX_IMAGE_PIXELS)
    except ImageError as exc:
        raise BadImage(str(exc)) from None


def clean_source(name: str | None) -> str:
    """A display name for an upload: the last path component, printable, at most 120 characters."""
    name = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    return name[:120] or "upload"


def result_rows(source: str, frame: int, result: FrameResult, labels: list[str],
                decode_ms: float = 0.0) -> list[dict[str, Any]]:
    """One row per located cell, as `hemato run` writes them (latency_ms: the frame's decode..invoke)."""
    latency = decode_ms + sum(result.timings_ms.values())
    return [_rounded(cell_record(source, frame, i, cell, labels, latency, result.rbc_px))
            for i, cell in enumerate(result.cells)]


def _rounded(record: dict[str, Any]) -> dict[str, Any]:
    """A record with JSON-friendly precision (confidence and probabilities to 6 places, latency to 3)."""
    record["confidence"] = round(record["confidence"], 6)
    record["latency_ms"] = round(record["latency_ms"], 3)
    record["probabilities"] = {k: round(v, 6) for k, v in record["probabilities"].items()}
    return record


def rows_to_csv(rows: list[dict[str, Any]], labels: list[str]) -> str:
    """The rows as CSV with the columns and number formats of `hemato run` (p_<LABEL> per class)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(csv_columns(labels))
    for r in rows:
        writer.writerow(csv_values(r | {"source": spreadsheet_safe(r["source"])}, labels))
    return out.getvalue()


def annotated_data_url(bgr: np.ndarray, result: FrameResult, labels: list[str]) -> str:
    """The frame with boxes and labels (edge_app.core.overlay) as a JPEG data URL, resized to about
    ANNOTATED_WIDTH wide (at most ANNOTATED_MAX_SIDE) before drawing, so that a small camera frame shown across
    the card has crisp, legible labels instead of enlarged pixels."""
    height, width = bgr.shape[:2]
    scale = min(ANNOTATED_WIDTH / width, ANNOTATED_MAX_SIDE / max(height, width))
    if abs(scale - 1.0) > 0.01:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
        cells = [scaled_cell(cell, scale) for cell in result.cells]
    else:
        cells = result.cells
    shown = draw_results(bgr, cells, labels)
    return jpeg_data_url(encode_jpeg(shown))


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


class InMemoryRequest(Request):
    """Keeps uploaded files in memory (bounded by MAX_CONTENT_LENGTH) instead of spooling them to /tmp."""

    def _get_file_stream(self, total_content_length: int | None, content_type: str | None,
                         filename: str | None = None, content_length: int | None = None) -> io.BytesIO:
        return io.BytesIO()


class _State:
    """What the routes share: the classifier, its lock, the sessions and the optional live camera."""

    def __init__(self, classifier: Classifier, min_confidence: float | None, camera: LiveCamera | None,
                 lock: threading.Lock, review: ReviewStore):
        self.classifier, self.min_confidence, self.camera, self.lock = classifier, min_confidence, camera, lock
        self.sessions = SessionStore()
        self.review = review
        self.explainer = None  # opened on the first heat-map request (edge_app.core.explain)
        self.snapshots = 0  # live frames added to a count

    def close(self) -> None:
        if self.camera is not None:
            self.camera.stop()


def create_app(classifier: Classifier, camera: str | None = None,
               min_confidence: float | None = None, rbc_diameter: float | None = None,
               review: str | None = None) -> Flask:
    """The Flask app: upload page, live page (when `camera`, a `hemato run` source, is given), review page
    (every cell of the session, and those of the `review` CSV read from this machine's disk now), JSON API.

    Starts the camera thread; stop it with app.extensions["hemato"].close().
    """
    app = Flask(__name__)
    app.request_class = InMemoryRequest
    app.config.update(MAX_CONTENT_LENGTH=MAX_UPLOAD_BYTES, SECRET_KEY=secrets.token_bytes(32),
                      SESSION_COOKIE_SAMESITE="Lax")
    app.json.sort_keys = False  # keep probabilities in the model's label order
    lock = threading.Lock()
    review_store = ReviewStore()
    app.config["REVIEW_NOTES"] = review_store.load_csv(review, classifier.input_size) if review else []
    live = LiveCamera(classifier, camera, lock, min_confidence, rbc_diameter=rbc_diameter).start() if camera is not None else None
    state = _State(classifier, min_confidence, live, lock, review_store)
    app.extensions["hemato"] = state
    labels = classifier.labels

    def session_id(create: bool = False) -> str | None:
        if create and "sid" not in session:
            session["sid"] = secrets.token_urlsafe(16)
        return session.get("sid")

    threshold = classifier.min_confidence if min_confidence is None else min_confidence

    def page_context() -> dict[str, Any]:
        return {"model": classifier.name, "labels": labels, "live": live is not None,
                "adapted": adaptation_note(classifier.metadata),
                "colours": [colour_hex(label, labels) for label in labels], "max_bytes": MAX_UPLOAD_BYTES,
                "threshold": threshold, "threshold_text": threshold_text(threshold) if threshold else "",
                "uncertain_meaning": uncertain_meaning(threshold, classifier.colour_guard is not None),
                "not_diagnostic": NOT_DIAGNOSTIC}

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
                       min_confidence=threshold,
                       model_name=classifier.metadata.get("model_name"), camera=live is not None)

    @app.post("/api/classify")
    def classify():
        upload = request.files.get("file")
        if upload is None:
            return jsonify(error="no image: send it as multipart/form-data in the field 'file'", status=400), 400
        source = clean_source(upload.filename)
        start = time.perf_counter()
        try:
            decoded = _decode_upload(upload.read())
        except BadImage as exc:
            return jsonify(error=f"{source}: {exc}", source=source, status=400), 400
        decode_ms = (time.perf_counter() - start) * 1000
        bgr = decoded.image
        with lock:
            result = classify_frame(classifier, bgr, min_confidence,
                                    None if rbc_diameter is None else rbc_diameter / decoded.scale)
        rows = result_rows(source, 0, result, labels, decode_ms)
        if session_id():
            state.sessions.add(session_id(), rows)
            for row, crop in zip(rows, result.crops):  # the review page shows the crop the model saw
                row["review_id"] = state.review.add(session_id(), dict(row), rgb_jpeg(crop))
        timings = {"decode": decode_ms, **result.timings_ms}
        body: dict[str, Any] = {"source": source, "model": classifier.name, "labels": labels,
                                "width": int(bgr.shape[1]), "height": int(bgr.shape[0]), "cells": len(rows),
                                "timings_ms": {k: round(v, 3) for k, v in timings.items()}, "rows": rows}
        if request.args.get("annotated") == "1":
            body["annotated"] = annotated_data_url(bgr, result, labels)
        return jsonify(body)

    @app.get("/api/session")
    def session_counts():
        return jsonify(differential(state.sessions.rows(session_id()), labels))

    @app.post("/api/session/reset")
    def session_reset():
        state.sessions.reset(session_id())
        state.review.reset(session_id())
        return jsonify(differential([], labels))

    @app.get("/session.csv")
    def session_csv():
        return _download(rows_to_csv(state.sessions.rows(session_id()), labels), "text/csv",
                         time.strftime("hemato-session-%Y%m%d-%H%M%S.csv"))

    @app.get("/review")
    def review_page():
        session_id(create=True)
        return render_template("review.html", **page_context(), review_from=state.review.loaded_from,
                               review_notes=app.config["REVIEW_NOTES"])

    @app.get("/api/review")
    def review_cells():
        cells = state.review.cells(session_id())
        return jsonify(cells=[c.public() for c in cells], counts=counts(cells, labels))

    @app.post("/api/review/<int:ident>")
    def review_set(ident: int):
        body = request.get_json(silent=True)
        label = body.get("label") if isinstance(body, dict) else None
        if label not in labels:
            return jsonify(error=f"label must be one of {', '.join(labels)}", status=400), 400
        cell = state.review.set_label(session_id(), ident, label)
        if cell is None:
            return jsonify(error="no such cell in this session", status=404), 404
        return jsonify(cell=cell.public(), counts=counts(state.review.cells(session_id()), labels))

    @app.get("/review/crop/<int:ident>.jpg")
    def review_crop(ident: int):
        cell = state.review.get(session_id(), ident)
        if cell is None:
            return Response("no such cell\n", 404, mimetype="text/plain")
        return Response(cell.jpeg, mimetype="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/review/explain/<int:ident>.png")
    def review_explain(ident: int):
        cell = state.review.get(session_id(), ident)
        if cell is None:
            return Response("no such cell\n", 404, mimetype="text/plain")
        png = heat_map_png(state, cell)
        return Response(png, mimetype="image/png", headers={"Cache-Control": "private, max-age=3600"})

    def _download(body: str | bytes, mimetype: str, name: str) -> Response:
        return Response(body, mimetype=mimetype, headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.get("/review.csv")
    def review_csv():
        return _download(export_csv(state.review.cells(session_id()), labels), "text/csv",
                         time.strftime("hemato-reviewed-%Y%m%d-%H%M%S.csv"))

    @app.get("/review.zip")
    def review_zip():
        return _download(export_zip(state.review.cells(session_id())), "application/zip",
                         time.strftime("hemato-reviewed-%Y%m%d-%H%M%S.zip"))

    @app.get("/report.html")
    def report():
        cells = state.review.cells(session_id())
        sample = state.review.loaded_from or "web session"
        body = session_report(cells, labels, sample, str(classifier.path), classifier.metadata)
        response = _download(body, "text/html", time.strftime("hemato-report-%Y%m%d-%H%M%S.html"))
        response.headers["Content-Security-Policy"] = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
        return response

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
            state.snapshots += 1
            source = f"live-{state.snapshots}"
        state.sessions.add(session_id(create=True), result_rows(source, 0, result, labels))
        return jsonify(differential(state.sessions.rows(session_id()), labels))

    return app


def heat_map_png(state: _State, cell) -> bytes:
    """The cell's crop with its class activation map for the model's answer; the explainer (a second
    interpreter) is opened on the first request only."""
    from edge_app.core.explain import Explainer
    classifier = state.classifier
    crop = cv2.cvtColor(cv2.imdecode(np.frombuffer(cell.jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    with state.lock:
        if state.explainer is None:
            state.explainer = Explainer(classifier.path, classifier.threads)
        shown = state.explainer.overlay(crop, classifier.labels.index(cell.row["predicted"]))
    return cv2.imencode(".png", cv2.cvtColor(shown, cv2.COLOR_RGB2BGR))[1].tobytes()


def _app_version() -> str:
    from hemato import __version__
    return __version__


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `hemato serve`."""
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    parser.add_argument("--port", type=port, default=8000, help="port (default 8000)")
    parser.add_argument("--camera", metavar="SOURCE",
                        help="also stream a camera with boxes and labels on /live: an index such as 0, picamera, "
                             "or a video file (looped)")
    parser.add_argument("--min-confidence", type=fraction,
                        help="answer UNCERTAIN below this confidence, a fraction (0.95 for 95 %%; default: the "
                             "threshold stored in the model)")
    parser.add_argument("--threads", type=positive_int, help="interpreter threads (default: all cores)")
    parser.add_argument("--rbc-diameter", type=diameter_px, metavar="PX",
                        help="red-cell diameter in this camera's pixels, when known: crops are scaled by it "
                             "instead of by each frame's estimate")
    parser.add_argument("--review", metavar="RESULTS.csv",
                        help="put the cells of a hemato run CSV on the review page (its images are read from this "
                             "machine's disk at start)")
    parser.add_argument("--debug", action="store_true",
                        help="Flask's development server with its debugger instead of waitress (never on a network)")


def serve_forever(app: Flask, host: str, port: int, debug: bool = False) -> None:
    """Serve the app until Ctrl-C/SIGTERM: waitress, or with debug Flask's development server."""
    if debug:
        app.run(host=host, port=port, threaded=True, debug=True, use_reloader=False)
        return
    import waitress  # the web extra; pure Python, runs on a Raspberry Pi
    waitress.serve(app, host=host, port=port, threads=SERVER_THREADS, ident="hemato")


def main(args: argparse.Namespace) -> int:
    """Load the model and serve until Ctrl-C or SIGTERM; 2 when the model cannot be loaded or the port is taken."""
    if not args.debug:
        import waitress  # noqa: F401  fail before loading the model: hemato.cli names the extra to install
    camera = args.camera
    if camera is not None and not is_camera(camera) and not Path(camera).expanduser().exists():
        # a camera may be plugged in later (the live view retries it); a file named wrongly will not appear
        print(f"hemato serve: --camera {camera}: no such file (give a camera index such as 0, picamera, or a video "
              "file)", file=sys.stderr)
        return 2
    try:
        classifier = Classifier(find_model(args.model), threads=args.threads)
    except (ModelFileError, RuntimeError) as exc:
        print(f"hemato serve: {exc}", file=sys.stderr)
        return 2
    try:
        app = create_app(classifier, camera=args.camera, min_confidence=args.min_confidence,
                         rbc_diameter=args.rbc_diameter, review=args.review)
    except (OSError, ValueError, KeyError) as exc:
        print(f"hemato serve: --review {naming(args.review, getattr(exc, 'strerror', None) or exc)}",
              file=sys.stderr)
        return 2
    for note in app.config["REVIEW_NOTES"]:
        print(f"hemato serve: review: skipped {note}", file=sys.stderr)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"hemato serve: listening on {args.host}: anyone who can reach this machine can use it", file=sys.stderr)
    note = adaptation_note(classifier.metadata)
    print(f"hemato serve: model {classifier.path}" + (f", {note}" if note else ""), file=sys.stderr)
    print(f"hemato serve: {classifier.name} on http://{args.host}:{args.port}/  (Ctrl-C to stop)", file=sys.stderr)
    signal.signal(signal.SIGTERM, _interrupt)  # `systemctl stop` ends it like Ctrl-C: camera released
    try:
        serve_forever(app, args.host, args.port, args.debug)
    except (OSError, ValueError) as exc:  # ValueError: waitress cannot use the address
        print(f"hemato serve: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    finally:
        app.extensions["hemato"].close()
    return 0
