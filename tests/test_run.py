"""`hemato run` end to end: CSV rows, summary, sources, model errors, windows, camera loss and signals."""
import csv
import functools
import json
import os
import shutil
import signal
import threading

import cv2
import numpy as np
import pytest

import edge_app.core.model_path
import edge_app.run.cli as run_module
from conftest import LABELS, SHARED_DATA, make_smear, requires_real_data
from edge_app.core.model import Classifier
from edge_app.core.model_path import DEFAULT_MODEL_NAME
from edge_app.core.records import csv_columns
from edge_app.run.cli import Stopper
from edge_app.run.sources import open_source
from edge_app.core.vision import stain_mask
from hemato.cli import main as hemato
from test_sources import FakeCamera, FakeCapture

HANDLER_GUARD_S = 5  # only so that a deadlocked handler fails the test instead of hanging it


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return rows[0], [dict(zip(rows[0], row)) for row in rows[1:]]


def probabilities(row) -> list[float]:
    return [float(row[f"p_{label}"]) for label in LABELS]


def test_folder_run_rows_boxes_and_summary(tmp_path, tiny_tflite, capsys):
    folder = tmp_path / "smears"
    folder.mkdir()
    one = [(100, 120, 28), (200, 100, 30), (160, 140, 25)]
    for i, cell in enumerate(one):
        cv2.imwrite(str(folder / f"a{i}.jpg"), make_smear(cells=[cell], seed=i))
    cv2.imwrite(str(folder / "b_two.png"), make_smear(640, 480, cells=[(120, 120, 45), (480, 300, 50)], seed=3))
    cv2.imwrite(str(folder / "c_empty.jpg"), make_smear(cells=[], seed=4))
    (folder / "d_broken.jpg").write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "out" / "results.csv"
    assert hemato(["run", str(folder), "--model", str(tiny_tflite), "--csv", str(out), "--headless"]) == 0

    header, rows = read_csv(out)
    assert header == csv_columns(LABELS)
    assert header[:15] == ["source", "frame", "cell", "label", "predicted", "confidence", "runner_up", "reason",
                           "rbc_px", "x0", "y0", "x1", "y1", "latency_ms", "error"]
    by_source = {}
    for row in rows:
        by_source.setdefault(os.path.basename(row["source"]), []).append(row)
    assert sorted(by_source) == ["a0.jpg", "a1.jpg", "a2.jpg", "b_two.png", "d_broken.jpg"]  # no row: c_empty
    for i, (x, y, r) in enumerate(one):
        (row,) = by_source[f"a{i}.jpg"]
        x0, y0, x1, y1 = (int(row[k]) for k in ("x0", "y0", "x1", "y1"))
        # the default crop is the stained nucleus's own extent: centred on it, as wide within a pixel or two
        assert abs((x0 + x1) / 2 - x) <= 2 and abs((y0 + y1) / 2 - y) <= 2 and x1 - x0 >= 2 * r - 2
        p = probabilities(row)
        assert abs(sum(p) - 1) < 1e-3
        assert row["label"] == row["predicted"] == LABELS[int(np.argmax(p))]
        assert float(row["confidence"]) == pytest.approx(max(p), abs=1e-4)
        assert row["error"] == "" and float(row["latency_ms"]) > 0 and row["frame"] == "0"
        assert row["runner_up"] == LABELS[int(np.argsort(p)[-2])] and row["reason"] == ""
    assert [r["cell"] for r in by_source["b_two.png"]] == ["0", "1"]
    (broken,) = by_source["d_broken.jpg"]
    assert broken["error"] == "corrupt JPEG header (bad marker)"
    assert broken["label"] == "" and broken["p_NEUTROPHIL"] == ""

    summary = capsys.readouterr().out
    assert "Images read: 6  (1 failed, 1 with no cell found)" in summary
    assert "Cells classified: 5" in summary
    assert "d_broken.jpg: corrupt JPEG header (bad marker)" in summary
    assert "Latency per image: mean" in summary and "p95" in summary and "invoke" in summary
    counted = sum(int(line.split()[1]) for line in summary.splitlines()
                  if line.strip() and line.split()[0] in LABELS)
    assert counted == 5


def test_single_image_video_json_summary_and_threads(tmp_path, tiny_tflite, capsys):
    image = tmp_path / "smear.jpg"
    cv2.imwrite(str(image), make_smear())
    summary_path = tmp_path / "summary.json"
    assert hemato(["run", str(image), "--model", str(tiny_tflite), "--csv", str(tmp_path / "one.csv"),
                   "--threads", "1", "--json-summary", str(summary_path)]) == 0
    summary = json.loads(summary_path.read_text())
    assert summary["threads"] == 1 and summary["images_read"] == 1 and summary["cells_classified"] == 1
    assert set(summary["stage_mean_ms"]) == {"decode", "rbc_estimate", "rescale", "localise", "preprocess",
                                             "invoke", "write"}
    assert sum(v["count"] for v in summary["differential"].values()) == 1

    video = tmp_path / "recording.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    for i in range(4):
        writer.write(make_smear(cells=[(80 + 50 * i, 120, 28)] if i != 2 else [], seed=i))
    writer.release()
    assert hemato(["run", str(video), "--model", str(tiny_tflite), "--csv", str(tmp_path / "v.csv")]) == 0
    _, rows = read_csv(tmp_path / "v.csv")
    assert [(r["source"], r["frame"]) for r in rows] == [("recording.avi", "0"), ("recording.avi", "1"),
                                                          ("recording.avi", "3")]
    assert "Images read: 4  (0 failed, 1 with no cell found)" in capsys.readouterr().out


def test_min_confidence_makes_uncertain_and_it_is_counted_apart(tmp_path, smear_folder, tiny_tflite, capsys):
    out = tmp_path / "r.csv"
    assert hemato(["run", str(smear_folder), "--model", str(tiny_tflite), "--csv", str(out),
                   "--min-confidence", "0.99"]) == 0
    _, rows = read_csv(out)
    assert len(rows) == 3 and {r["label"] for r in rows} == {"UNCERTAIN"}
    assert all(r["predicted"] in LABELS for r in rows)
    assert all(r["reason"] == "low confidence" and r["runner_up"] in set(LABELS) - {r["predicted"]} for r in rows)
    summary = capsys.readouterr().out
    assert "Differential count (0 cells; 3 UNCERTAIN not counted):" in summary
    guesses = [int(line.rsplit(": ", 1)[1].rstrip(")")) for line in summary.splitlines()
               if "(UNCERTAIN, best guess" in line]
    assert len(guesses) == len(LABELS) and sum(guesses) == 3  # a reviewer sees what the pending cells look like
    for label in {r["predicted"] for r in rows}:
        n = sum(r["predicted"] == label for r in rows)
        assert f"(UNCERTAIN, best guess {label}: {n})" in summary


def test_model_problems_fail_fast_with_one_line(tmp_path, smear_folder, capsys, monkeypatch):
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"nonsense")
    out = tmp_path / "never.csv"
    for model in (str(tmp_path / "missing.tflite"), str(garbage)):
        assert hemato(["run", str(smear_folder), "--model", model, "--csv", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("hemato run: error:") and len(err.splitlines()) == 1
    assert not out.exists()  # nothing was read or written

    # No --model: $HEMATO_MODEL, then models/ in the current folder, then the installed models.
    monkeypatch.delenv("HEMATO_MODEL", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(edge_app.core.model_path, "installed_models_folder", lambda: tmp_path / "site" / "hemato_models")
    assert hemato(["run", str(smear_folder), "--csv", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "models" / DEFAULT_MODEL_NAME) in err
    assert str(tmp_path / "site" / "hemato_models" / DEFAULT_MODEL_NAME) in err and "--model" in err


def test_default_model_lookup(tmp_path, smear_folder, tiny_tflite, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HEMATO_MODEL", str(tiny_tflite))
    assert run_module.find_model(None) == tiny_tflite
    monkeypatch.setenv("HEMATO_MODEL", str(tmp_path / "gone.tflite"))
    with pytest.raises(run_module.ModelFileError, match="HEMATO_MODEL"):
        run_module.find_model(None)
    monkeypatch.delenv("HEMATO_MODEL")
    (tmp_path / "models").mkdir()
    shutil.copy(tiny_tflite, tmp_path / "models" / DEFAULT_MODEL_NAME)
    assert run_module.find_model(None) == tmp_path / "models" / DEFAULT_MODEL_NAME
    assert hemato(["run", str(smear_folder)]) == 0
    assert (tmp_path / "results.csv").is_file()  # the default CSV, in the current folder


def test_source_and_output_problems_exit_2(tmp_path, smear_folder, tiny_tflite, capsys):
    assert hemato(["run", str(tmp_path / "nowhere"), "--model", str(tiny_tflite)]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert hemato(["run", str(smear_folder), "--model", str(tiny_tflite), "--csv", str(blocker / "r.csv")]) == 2
    assert "hemato run: error: cannot write" in capsys.readouterr().err


def fake_camera_source(monkeypatch, opener):
    """Make `hemato run 0` open `opener` instead of a real camera, with no backoff waits."""
    monkeypatch.setattr(run_module, "open_source",
                        functools.partial(open_source, camera_opener=opener, backoff_s=0, retry_wait_s=0))


def test_lost_camera_saves_results_and_exits_1(tmp_path, tiny_tflite, monkeypatch, capsys):
    fake = FakeCamera([3, 2])
    fake_camera_source(monkeypatch, fake)
    out = tmp_path / "cam.csv"
    assert hemato(["run", "0", "--model", str(tiny_tflite), "--csv", str(out), "--headless"]) == 1
    _, rows = read_csv(out)
    assert [r["frame"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert {r["source"] for r in rows} == {"camera:0"}
    captured = capsys.readouterr()
    assert "Images read: 5" in captured.out and "Stopped early: camera 0 stopped delivering frames" in captured.out
    assert "hemato run: error: camera 0 stopped delivering frames" in captured.err
    assert len(fake.opened) == 2 + 3  # two good openings, then three failed reopen attempts


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_ends_the_run_with_results_and_summary(tmp_path, tiny_tflite, monkeypatch, capsys, signum):
    class SignallingCapture(FakeCapture):
        reads = 0

        def read(self):
            SignallingCapture.reads += 1
            if SignallingCapture.reads == 3:
                os.kill(os.getpid(), signum)  # as if Ctrl-C / systemd stop arrived here
            return super().read()

    fake_camera_source(monkeypatch, lambda: SignallingCapture(1000, make_smear()))
    out = tmp_path / "sig.csv"
    # What the process had before (SIG_IGN, not Python's handler, when started in the background by nohup).
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    status = hemato(["run", "0", "--model", str(tiny_tflite), "--csv", str(out), "--headless"])
    assert status == 128 + signum
    _, rows = read_csv(out)
    assert len(rows) == 3  # the frame being read when the signal came is finished, then the run stops
    captured = capsys.readouterr()
    assert "Images read: 3" in captured.out and "received" in captured.out
    assert {s: signal.getsignal(s) for s in before} == before  # handlers restored


def test_an_interrupted_folder_run_says_how_to_go_on(tmp_path, tiny_tflite, monkeypatch, capsys):
    import edge_app.run.cli as run_cli
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(4):
        cv2.imwrite(str(folder / f"{k}.png"), make_smear(seed=k))
    classify = run_cli.process_frame

    def interrupted(*args, **kwargs):
        result = classify(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C after the first image
        return result
    monkeypatch.setattr(run_cli, "process_frame", interrupted)
    assert hemato(["run", str(folder), "--model", str(tiny_tflite), "--csv", str(tmp_path / "r.csv")]) == 130
    assert "the same command again goes on where this one stopped" in capsys.readouterr().err


def test_a_signal_landing_inside_the_stop_events_wait_does_not_deadlock():
    """The handler runs on the thread it interrupts: if that thread is inside Event.wait it holds the event's
    lock (the watch loop's poll), and a plain event.set() in the handler would wait for itself forever."""
    stopper = Stopper()
    handled = threading.Event()
    handler = threading.Thread(target=lambda: (stopper._handle(signal.SIGTERM, None), handled.set()), daemon=True)
    with stopper.event._cond:  # what Event.wait holds between waking up and returning (CPython's Event)
        handler.start()
        handler_returned = handled.wait(HANDLER_GUARD_S)
    assert handler_returned, "the signal handler blocked on the stop event's lock"
    assert stopper.event.wait(HANDLER_GUARD_S) and stopper.signum == signal.SIGTERM
    with pytest.raises(KeyboardInterrupt):  # a second signal stops at once
        stopper._handle(signal.SIGTERM, None)


def test_show_without_gui_says_so_once_and_goes_on(tmp_path, tiny_tflite, monkeypatch, capsys):
    calls = []

    def no_gui(*args):
        calls.append(args)
        raise cv2.error("The function is not implemented. Rebuild the library with GUI support")

    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(cv2, "imshow", no_gui)
    cells_video = tmp_path / "cells.avi"
    writer = cv2.VideoWriter(str(cells_video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    for i in range(3):
        writer.write(make_smear(seed=i))
    writer.release()
    out = tmp_path / "s.csv"
    assert hemato(["run", str(cells_video), "--show", "--model", str(tiny_tflite), "--csv", str(out)]) == 0
    assert len(calls) == 1
    assert capsys.readouterr().err.count("cannot open a window") == 1
    assert len(read_csv(out)[1]) == 3


def test_show_draws_boxes_and_q_ends_the_run(tmp_path, tiny_tflite, monkeypatch, capsys):
    shown = []
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(cv2, "imshow", lambda name, image: shown.append(image))
    monkeypatch.setattr(cv2, "waitKey", lambda ms: ord("q") if len(shown) == 2 else -1)
    monkeypatch.setattr(cv2, "destroyAllWindows", lambda: None)
    fake_camera_source(monkeypatch, FakeCamera([50]))
    out = tmp_path / "q.csv"
    assert hemato(["run", "0", "--model", str(tiny_tflite), "--csv", str(out)]) == 0  # a camera shows by default
    assert len(shown) == 2 and len(read_csv(out)[1]) == 2
    raw = make_smear()
    assert shown[0].shape == raw.shape and np.abs(shown[0].astype(int) - raw).max() > 100  # boxes, text drawn
    assert "ended from the window" in capsys.readouterr().out


def test_headless_never_opens_a_window(tmp_path, tiny_tflite, monkeypatch):
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(cv2, "imshow", lambda *a: pytest.fail("imshow called in headless mode"))
    fake_camera_source(monkeypatch, FakeCamera([2]))
    assert hemato(["run", "0", "--headless", "--model", str(tiny_tflite), "--csv", str(tmp_path / "h.csv")]) == 1
    # Without a display, --show falls back to headless without trying.
    monkeypatch.delenv("DISPLAY")
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    fake_camera_source(monkeypatch, FakeCamera([2]))
    assert hemato(["run", "0", "--show", "--model", str(tiny_tflite), "--csv", str(tmp_path / "h.csv")]) == 1


@requires_real_data
@pytest.mark.realdata
def test_test_simple_one_row_per_image_with_the_stained_cell_in_its_box(tmp_path, tiny_tflite):
    folder = SHARED_DATA / "TEST_SIMPLE"
    out = tmp_path / "ts.csv"
    assert hemato(["run", str(folder), "--model", str(tiny_tflite), "--csv", str(out)]) == 0
    _, rows = read_csv(out)
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    assert len(rows) == len(images) == 71
    assert sorted(r["source"] for r in rows) == sorted(str(p) for p in images)
    settings = Classifier(tiny_tflite).crop_settings
    for row in rows:
        assert row["error"] == ""
        image = cv2.imread(row["source"])
        # The stained cell: the largest connected stained region (the nucleus).
        mask = cv2.morphologyEx(stain_mask(image, settings), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask)
        x, y, w, h, _ = stats[1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))]
        x0, y0, x1, y1 = (int(row[k]) for k in ("x0", "y0", "x1", "y1"))
        assert x0 <= x and y0 <= y and x1 >= x + w and y1 >= y + h, (row["source"], (x, y, w, h))


def test_a_full_disk_stops_the_run_with_status_2_and_says_so(tmp_path, smear_folder, tiny_tflite, monkeypatch,
                                                             capsys):
    import errno

    from edge_app.run.results import CsvWriter
    real_put = CsvWriter._put
    written = []

    def filling_put(self, row):
        if len(written) == 2:  # the header and one row fit
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(row)
        real_put(self, row)

    monkeypatch.setattr(CsvWriter, "_put", filling_put)
    out = tmp_path / "full.csv"
    assert hemato(["run", str(smear_folder), "--model", str(tiny_tflite), "--csv", str(out)]) == 2
    captured = capsys.readouterr()
    assert f"Stopped early: cannot write {out}: No space left on device" in captured.out
    assert captured.err.strip().splitlines()[-1].startswith(f"hemato run: error: cannot write {out}")
    assert len(read_csv(out)[1]) == 1


def test_csv_values_leave_what_a_record_lacks_empty():
    """A row without a latency or a class's probability (an upload, an older CSV) is not given an invented 0."""
    from edge_app.core.records import csv_columns, csv_values
    record = {"source": "a.png", "frame": "0", "cell": "0", "label": LABELS[0], "confidence": "0.5",
              "probabilities": {LABELS[0]: 0.5}}
    values = dict(zip(csv_columns(LABELS), csv_values(record, LABELS)))
    assert values["confidence"] == "0.5000" and values[f"p_{LABELS[0]}"] == "0.5000"
    assert values["latency_ms"] == "" and values["rbc_px"] == "" and values[f"p_{LABELS[1]}"] == ""


def test_a_threshold_of_one_answers_no_cell_even_at_probability_one():
    """A model whose cells could not show the target accuracy is stored with threshold 1: float32
    probabilities can round to exactly 1, and such a cell must still be UNCERTAIN."""
    from edge_app.core.pipeline import NO_ANSWER, decide, is_answered
    from evaluation.calibration import coverage_at
    assert decide("MONOCYTE", 1.0, NO_ANSWER) == ("UNCERTAIN", "low confidence")
    assert decide("MONOCYTE", 0.995, 0.99) == ("MONOCYTE", "")
    assert decide("MONOCYTE", 0.985, 0.99)[0] == "UNCERTAIN"
    probs = np.array([[1.0, 0.0], [0.2, 0.8]])
    assert list(is_answered(probs.max(1), 0.8)) == [True, True]
    assert coverage_at(probs, np.array([0, 1]), NO_ANSWER) == (0.0, None)


def test_a_closed_standard_output_ends_the_run_quietly(tmp_path, tiny_tflite):
    """`hemato run FOLDER | head -1`: the run stops as a Unix tool does (status 141), without a traceback, and
    the CSV holds whole rows of what was classified."""
    import subprocess
    import sys
    folder = tmp_path / "many"
    folder.mkdir()
    for k in range(30):
        cv2.imwrite(str(folder / f"{k:03d}.png"), make_smear(seed=k))
    for lines_read in (0, 1, 3):  # the reader leaves before the banner, during it, or during the answers
        out = tmp_path / f"r{lines_read}.csv"
        proc = subprocess.Popen([sys.executable, "-m", "hemato.cli", "run", str(folder), "--model", str(tiny_tflite),
                                 "--csv", str(out), "--headless", "--threads", "1"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(lines_read):
            proc.stdout.readline()
        proc.stdout.close()
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=120) == 141, (lines_read, err)
        assert "Traceback" not in err, (lines_read, err)
        rows = out.read_text().splitlines() if out.exists() else []
        assert all(row.count(",") == rows[0].count(",") for row in rows)
