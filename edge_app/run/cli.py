"""`hemato run`: classify every white blood cell in images, a folder, a video or a camera, into a CSV.

Exit status: 0 done (or ended with q in the window), 1 a camera stopped delivering frames,
2 bad model, source, CSV or arguments, 130/143 stopped by Ctrl-C/SIGTERM (results so far are saved).
An existing CSV is resumed (see edge_app.run.resume) unless --overwrite is given.
"""
from __future__ import annotations

import argparse
import hashlib
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from edge_app.core.frames import Frame, as_bgr, scaled_cell
from edge_app.core.metadata import ModelFileError
from edge_app.core.model import Classifier, adaptation_note, runtime_version
from edge_app.core.model_path import MODEL_HELP, find_model
from edge_app.core.overlay import FpsMeter, draw_results
from edge_app.core.pipeline import FrameResult, classify_frame
from edge_app.core.records import csv_columns
from edge_app.core.sources import SourceError, SourceLost
from edge_app.core.wording import image_answer, naming, threshold_text
from edge_app.run.display import Display, display_available
from edge_app.run.results import CsvWriter, RunStats, csv_counts
from edge_app.run.resume import CsvMismatch, resume_csv
from edge_app.run.sources import Source, open_source
from edge_app.run.watch import WatchFolder
from hemato.argtypes import fraction, non_negative_int, output_file, positive_int, rbc_diameter, seconds
from hemato.cli import stdout_closed

EXIT_OK, EXIT_SOURCE_LOST, EXIT_USAGE = 0, 1, 2
PROGRESS_EVERY_S = 10.0
SIGNAL_SET_WAIT_S = 0.5  # how long a signal handler waits for the stop event to be set before returning


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `hemato run`."""
    parser.add_argument("source", help="a folder of images (searched recursively), an image, a video "
                                       "(.mp4 .avi .mov .mkv .m4v), a camera index such as 0, or picamera")
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument("--csv", default="results.csv",
                        help="where to write one row per cell (default: results.csv). An existing CSV is resumed: "
                             "sources already in it are skipped, new rows are appended")
    parser.add_argument("--overwrite", action="store_true", help="start the CSV afresh instead of resuming it")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="interpreter threads (default: all cores)")
    view = parser.add_mutually_exclusive_group()
    view.add_argument("--show", action="store_true", help="show frames with boxes, labels and FPS in a window "
                                                          "(q or Esc ends the run)")
    view.add_argument("--headless", action="store_true",
                      help="never open a window (the default without a display, and for files)")
    parser.add_argument("--min-confidence", type=fraction, default=None,
                        help="answer UNCERTAIN below this confidence (default: the model's own threshold)")
    parser.add_argument("--rbc-diameter", type=rbc_diameter, metavar="PX",
                        help="red-cell diameter in this camera's pixels, when known: crops are scaled by it "
                             "instead of by each frame's estimate (which the CSV's rbc_px column shows)")
    parser.add_argument("--every", type=positive_int, default=1,
                        help="classify every Nth frame of a video or camera (default: 1)")
    parser.add_argument("--read-retries", type=non_negative_int, default=3,
                        help="failed camera reads retried (0.1 s apart) before the camera is reopened (default: 3)")
    parser.add_argument("--reopen", type=non_negative_int, default=3,
                        help="times a camera that stops delivering is reopened before giving up (default: 3)")
    parser.add_argument("--watch", action="store_true",
                        help="keep watching the folder and classify each new image once it is completely written "
                             "(until Ctrl-C or SIGTERM)")
    parser.add_argument("--poll", type=seconds, default=1.0, metavar="S",
                        help="with --watch: look for new files every S seconds (default: 1)")
    parser.add_argument("--settle", type=seconds, default=2.0, metavar="S",
                        help="with --watch: a file is complete once its size and time are unchanged for S seconds "
                             "(default: 2)")
    parser.add_argument("--quiet", action="store_true",
                        help="no line per image (by default each image's answer is printed as it is classified)")
    parser.add_argument("--json-summary", metavar="PATH", type=output_file, help="also write the summary as JSON")
    parser.add_argument("--explain", metavar="DIR",
                        help="also write one heat-map PNG per cell into DIR: where in the crop the evidence for its "
                             "answer lies (a second interpreter; slower)")
    parser.add_argument("--fsync", action="store_true", help="fsync the CSV after every row (slower, safest)")


class Stopper:
    """Turns Ctrl-C/SIGTERM into a request to stop after the current frame; a second one stops at once."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None

    def _handle(self, signum: int, _frame: object) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        self._set_event()
        print(f"\nhemato run: {signal.Signals(signum).name} received, finishing the current frame "
              "(again to stop at once)", file=sys.stderr)

    def _set_event(self) -> None:
        """Set the event without risking a deadlock: the signal may have interrupted this very thread inside
        Event.wait while it holds the event's (non-reentrant) lock, so a direct set() would wait forever.
        A helper thread sets it; waiting briefly for it keeps the usual case synchronous."""
        setter = threading.Thread(target=self.event.set, name="hemato-stop", daemon=True)
        setter.start()
        setter.join(SIGNAL_SET_WAIT_S)

    @contextmanager
    def installed(self) -> Iterator["Stopper"]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def warm_up(classifier: Classifier) -> None:
    """Classify a made-up frame once, so one-time initialisation is not timed as the first image."""
    frame = np.full((240, 320, 3), 200, np.uint8)
    frame[100:140, 140:180] = (200, 40, 100)  # one purple "nucleus" (BGR)
    classify_frame(classifier, frame)


class HeatMaps:
    """`--explain DIR`: one PNG per cell, the crop beside its class activation map for the answer's class."""

    def __init__(self, classifier: Classifier, folder: str):
        from edge_app.core.explain import Explainer
        self.explainer, self.folder = Explainer(classifier.path, classifier.threads), Path(folder)
        self.labels = classifier.labels
        self.folder.mkdir(parents=True, exist_ok=True)

    def write(self, frame: Frame, result: FrameResult) -> None:
        """The maps of the crops the model classified (FrameResult.crops)."""
        stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in Path(frame.source).stem)[:80]
        # images of one name in different folders (s1/img.jpg, s2/img.jpg) must not overwrite each other's maps
        tag = hashlib.sha1(frame.source.encode()).hexdigest()[:6]
        for index, (cell, crop) in enumerate(zip(result.cells, result.crops)):
            picture = np.hstack([crop, self.explainer.overlay(crop, self.labels.index(cell.predicted))])
            name = f"{stem}_{tag}_f{frame.index}_c{index}_{cell.label}.png"
            cv2.imwrite(str(self.folder / name), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))


def process_frame(frame: Frame, classifier: Classifier, writer: CsvWriter, stats: RunStats,
                  min_confidence: float | None = None, rbc_diameter: float | None = None,
                  echo: bool = False, heat_maps: HeatMaps | None = None) -> FrameResult | None:
    """Classify one frame, write its rows and count it; the FrameResult, or None for an unusable frame.

    rbc_diameter: the camera's red-cell diameter in source pixels, when the user gave it.
    echo: print the frame's answer as one line on stdout (the source, then its cells or the error).
    """
    error = frame.error
    result = None
    if frame.image is not None:
        try:
            result = classify_frame(classifier, as_bgr(frame.image), min_confidence,
                                    None if rbc_diameter is None else rbc_diameter / frame.scale)
        except (cv2.error, ValueError, MemoryError) as exc:
            error = f"cannot classify: {exc}".splitlines()[0]
    if result is None:
        writer.write_error(frame.source, frame.index, error or "no image")
        stats.add_failure(frame.source, error or "no image")
        if echo:
            print(f"{frame.source}: error: {error or 'no image'}", flush=True)
        return None
    timings = {"decode": frame.decode_ms, **result.timings_ms}
    latency = sum(timings.values())
    rbc_px = None if result.rbc_px is None else result.rbc_px * frame.scale
    start = time.perf_counter()
    for index, cell in enumerate(result.cells):
        writer.write_cell(frame.source, frame.index, index, scaled_cell(cell, frame.scale), latency, rbc_px)
    timings["write"] = (time.perf_counter() - start) * 1000
    stats.add_frame(result.cells, timings, rbc_px)
    if echo:
        print(f"{frame.source}: {image_answer(result.cells, classifier.labels, stats.threshold)}", flush=True)
    if heat_maps is not None:
        heat_maps.write(frame, result)
    return result


def answers_per_image(source: Source) -> bool:
    """Whether the source's frames are still images, each worth a line (a video's or camera's frames are not)."""
    return isinstance(source, WatchFolder) or not source.stream


def run(classifier: Classifier, source: Source, writer: CsvWriter, min_confidence: float | None = None,
        display: Display | None = None, stop: threading.Event | None = None,
        rbc_diameter: float | None = None, echo: bool = False,
        heat_maps: HeatMaps | None = None) -> tuple[RunStats, int]:
    """Classify every frame of the source into the writer until it ends or a stop is asked; (stats, status).

    echo: print a line per image (still images only, see answers_per_image)."""
    stats = RunStats(classifier.labels, model_rbc_px=classifier.crop_settings.rbc_diameter_px,
                     rbc_given=rbc_diameter is not None,
                     threshold=classifier.min_confidence if min_confidence is None else min_confidence,
                     colour_guard=classifier.colour_guard is not None)
    echo = echo and answers_per_image(source)
    stop = stop or threading.Event()
    fps = FpsMeter()
    status = EXIT_OK
    start = last_progress = time.perf_counter()
    try:
        for frame in source:
            result = process_frame(frame, classifier, writer, stats, min_confidence, rbc_diameter, echo, heat_maps)
            rate = fps.tick()
            if display is not None and frame.image is not None and result is not None:
                shown = draw_results(as_bgr(frame.image), result.cells, classifier.labels,
                                     rate if source.stream else None)
                if not display.show(shown):
                    stats.stopped = "ended from the window (q)"
                    break
            if stop.is_set():
                break
            if time.perf_counter() - last_progress > PROGRESS_EVERY_S:
                last_progress = time.perf_counter()
                print(f"hemato run: {stats.images + stats.failed} images, {stats.classified} cells, "
                      f"{(rate or 0):.1f} FPS", file=sys.stderr)
    except SourceLost as exc:
        stats.stopped, status = str(exc), EXIT_SOURCE_LOST
    except KeyboardInterrupt:
        stats.stopped, status = "interrupted", 128 + signal.SIGINT
    except BrokenPipeError:  # `hemato run ... | head`: stop after this image; the summary goes nowhere
        stats.stopped, status = "standard output was closed", stdout_closed()
    except OSError as exc:  # the CSV cannot be written (disk full, card removed): stop and say so
        stats.stopped, status = f"cannot write {writer.path}: {exc.strerror or exc}", EXIT_USAGE
    finally:
        stats.elapsed_s = time.perf_counter() - start
        try:
            writer.close()
        except OSError:  # the same failure again on the final flush; already reported
            pass
        source.close()
        if display is not None:
            display.close()
    return stats, status


def _error(message: str) -> int:
    print(f"hemato run: error: {' '.join(message.split())}", file=sys.stderr)
    return EXIT_USAGE


def _make_display(args: argparse.Namespace, source: Source) -> Display | None:
    """A window when --show was asked (or by default for a camera on a desktop), else None."""
    if args.headless or not (args.show or source.live):
        return None
    if not display_available():
        if args.show:
            print("hemato run: no display (DISPLAY/WAYLAND_DISPLAY not set); running headless", file=sys.stderr)
        return None
    return Display(wait_ms=1 if source.stream else 0)


def open_csv(path: str, labels: list[str], source: Source, overwrite: bool = False,
             fsync: bool = False) -> tuple[CsvWriter, list[str], int | None]:
    """The CSV writer, resuming an existing CSV unless overwrite; notes on what resuming did; and the rows kept
    from earlier runs (None when the CSV was started afresh).

    Raises CsvMismatch (other columns) or OSError (cannot read or write it).
    """
    notes = []
    resume = None
    csv_path = Path(path)
    if not overwrite and csv_path.is_file() and csv_path.stat().st_size:
        resume = resume_csv(csv_path, csv_columns(labels), source.covers)
    if resume is not None:
        if resume.cut_bytes:
            notes.append(f"removed a half-written last row ({resume.cut_bytes} bytes) from {path}")
        skipped = source.skip(resume.done)
        notes.append(f"resumed {path}: {resume.rows} rows kept"
                     + (f", {skipped} sources already in it skipped" if skipped else "")
                     + (f"; {resume.redo} is classified again (its {resume.redo_rows} rows may be incomplete)"
                        if resume.redo else "")
                     + (" (--overwrite classifies everything again)" if skipped else ""))
    kept = resume.rows if resume is not None else None
    return CsvWriter(path, labels, fsync=fsync, append=resume is not None), notes, kept


def main(args: argparse.Namespace) -> int:
    """Load the model (failing fast), open the source and CSV, classify everything, print the summary."""
    model_path = None
    try:
        model_path = find_model(args.model)
        classifier = Classifier(model_path, threads=args.threads)
    except (ModelFileError, RuntimeError) as exc:
        return _error(naming(model_path if isinstance(exc, ModelFileError) else None, exc))
    if args.explain and Path(args.source).is_dir() and Path(args.source).resolve() in (
            explain := Path(args.explain).resolve(), *explain.parents):
        return _error(f"--explain {args.explain} is inside the folder being classified: its heat maps would be "
                      "classified too; give a folder outside it")
    stopper = Stopper()
    try:
        source = open_source(args.source, every=args.every, reopen_attempts=args.reopen, stop=stopper.event,
                             read_retries=args.read_retries, watch=args.watch, poll_s=args.poll,
                             settle_s=args.settle)
    except SourceError as exc:
        return _error(str(exc))
    try:
        writer, notes, earlier_rows = open_csv(args.csv, classifier.labels, source, args.overwrite, args.fsync)
    except CsvMismatch as exc:
        source.close()
        return _error(str(exc))
    except OSError as exc:
        source.close()
        return _error(f"cannot write {args.csv}: {exc.strerror or exc}")
    for note in notes:
        print(f"hemato run: {note}", file=sys.stderr)
    display = _make_display(args, source)
    if display is not None and not source.stream:
        print("hemato run: press any key for the next image, q to stop", file=sys.stderr)
    threshold = classifier.min_confidence if args.min_confidence is None else args.min_confidence
    print(f"Model: {classifier.name} ({', '.join(classifier.labels)}; "
          + (f"UNCERTAIN below {threshold_text(threshold)}; " if threshold else "")
          + f"{classifier.runtime} {runtime_version(classifier.runtime)}, {classifier.threads} threads)", flush=True)
    print(f"Model file: {classifier.path}" + (f", {note}" if (note := adaptation_note(classifier.metadata)) else ""),
          flush=True)
    if args.watch:
        print(f"hemato run: watching {args.source} for new images (Ctrl-C or SIGTERM to stop)", file=sys.stderr)
    heat_maps = None
    if args.explain:
        try:
            heat_maps = HeatMaps(classifier, args.explain)
        except (ModelFileError, OSError) as exc:
            source.close()
            writer.close()
            return _error(f"--explain: {exc}")
    warm_up(classifier)
    with stopper.installed():
        stats, status = run(classifier, source, writer, args.min_confidence, display, stopper.event,
                            args.rbc_diameter, echo=not args.quiet, heat_maps=heat_maps)
    faults = [fault for fault in [source.faults()] if fault]
    for fault in faults:  # the resume notes were printed above: each note once, on stderr
        print(f"hemato run: {fault}", file=sys.stderr)
    stats.notes = notes + faults
    if stopper.signum is not None:
        stats.stopped = stats.stopped or f"{signal.Signals(stopper.signum).name} received"
        status = 128 + stopper.signum
    ended_by_fault = status in (EXIT_SOURCE_LOST, EXIT_USAGE)
    whole, other_rows = None, 0
    if earlier_rows:  # a resumed CSV: its differential is the folder's, not just this run's, nor another sample's
        try:
            whole, other_rows = csv_counts(writer.path, classifier.labels, source.owns)
        except (OSError, ValueError) as exc:
            print(f"hemato run: cannot read {writer.path} back for its differential: {exc}", file=sys.stderr)
    # a source lost before its first frame (a camera that never opened) has no summary to give, only the error
    nothing_read = status == EXIT_SOURCE_LOST and not stats.images and not stats.failed and not earlier_rows
    if not nothing_read:
        print(stats.format(whole, earlier_rows or 0, str(writer.path), other_rows))
        print(f"Results: {writer.path}")
    if args.json_summary:
        try:
            extra = {"model": str(classifier.path), "runtime": classifier.runtime, "threads": classifier.threads,
                     "source": args.source, "csv": str(writer.path), "exit_status": status,
                     "min_confidence": stats.threshold}
            if whole is not None:
                extra["whole_csv"] = {"rows_from_earlier_runs": earlier_rows, "rows_of_other_sources": other_rows,
                                      **whole.to_dict(counts_only=True)}
            stats.write_json(args.json_summary, extra)
        except OSError as exc:
            status = status or _error(f"cannot write {args.json_summary}: {exc.strerror or exc}")
    if ended_by_fault:
        print(f"hemato run: error: {stats.stopped}; "
              + ("no frame was read" if nothing_read else f"the results so far are in {writer.path}"), file=sys.stderr)
    elif status in (128 + signal.SIGINT, 128 + signal.SIGTERM) and not source.live and not args.watch:
        print(f"hemato run: the same command again goes on where this one stopped ({writer.path} is resumed)",
              file=sys.stderr)
    return status
