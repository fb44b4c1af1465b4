"""`hemato run FOLDER --watch`: each new file classified once, only when completely written; files that
vanish are skipped; SIGTERM ends it with the summary; a restart with the same CSV resumes."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import pytest

import edge_app.run.watch
from conftest import make_smear
from edge_app.core.model import Classifier
from edge_app.run.results import CsvWriter
from edge_app.run.cli import run
from edge_app.run.watch import WatchFolder

REPO = Path(__file__).resolve().parents[1]
HANG_GUARD_S = 120  # only so that a broken watcher fails instead of hanging CI; not a timing requirement


def jpeg(seed: int) -> bytes:
    return cv2.imencode(".jpg", make_smear(cells=[(100, 100, 28), (220, 140, 30)], seed=seed))[1].tobytes()


def csv_sources(path: Path) -> list[str]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [os.path.basename(row["source"]) for row in csv.DictReader(f) if row.get("source")]


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def test_a_slowly_written_file_is_read_once_when_complete_and_a_vanished_one_is_skipped(
        tmp_path, tiny_tflite, monkeypatch):
    folder = tmp_path / "incoming"
    folder.mkdir()
    (folder / "old.jpg").write_bytes(jpeg(1))
    (folder / "ghost.jpg").write_bytes(jpeg(2))
    reads, finished = [], {}
    real_image_frame = edge_app.run.watch.image_frame

    def recording_image_frame(path):
        if path.name == "ghost.jpg":
            path.unlink()  # deleted between the listing and the read
        reads.append((path.name, path.stat().st_size if path.exists() else None, time.monotonic()))
        return real_image_frame(path)

    monkeypatch.setattr(edge_app.run.watch, "image_frame", recording_image_frame)
    data = jpeg(3)

    def slow_copy():
        chunks = [data[k:k + len(data) // 12 + 1] for k in range(0, len(data), len(data) // 12 + 1)]
        with open(folder / "slow.jpg", "wb") as f:
            for chunk in chunks:
                f.write(chunk)
                f.flush()
                time.sleep(0.08)
        finished["at"] = time.monotonic()

    stop, notes = threading.Event(), []
    source = WatchFolder(folder, poll_s=0.05, settle_s=1.5, stop=stop, note=notes.append)
    out = tmp_path / "watch.csv"
    classifier = Classifier(tiny_tflite, threads=1)
    result = {}
    runner = threading.Thread(target=lambda: result.update(stats=run(classifier, source, CsvWriter(
        out, classifier.labels), stop=stop)[0]))
    runner.start()
    writer = threading.Thread(target=slow_copy)
    writer.start()
    try:
        wait_for(lambda: {"old.jpg", "slow.jpg"} <= set(csv_sources(out)), "both files in the CSV")
        time.sleep(0.3)  # a few more polls: nothing is read twice
    finally:
        stop.set()
        runner.join(HANG_GUARD_S)
        writer.join(HANG_GUARD_S)
    assert not runner.is_alive()

    slow_reads = [r for r in reads if r[0] == "slow.jpg"]
    assert len(slow_reads) == 1 and slow_reads[0][1] == len(data) and slow_reads[0][2] >= finished["at"]
    assert sorted(csv_sources(out)) == ["old.jpg"] * 2 + ["slow.jpg"] * 2  # two cells each, no error rows
    assert notes == [f"{folder / 'ghost.jpg'} vanished before it was read; skipped"]
    stats = result["stats"]
    assert stats.images == 2 and stats.failed == 0 and source.faults() == "1 files vanished before they were read"


def test_files_changing_while_read_are_read_again_later(tmp_path):
    folder = tmp_path / "incoming"
    folder.mkdir()
    path = folder / "growing.jpg"
    path.write_bytes(jpeg(1)[:1000])
    now = [0.0]
    source = WatchFolder(folder, settle_s=2.0, clock=lambda: now[0])
    assert source._ready() == []          # first seen
    now[0] = 2.5
    assert source._ready() == [path]      # unchanged for 2 s ...
    with open(path, "ab") as f:
        f.write(b"\0" * 10)               # ... but it grows again while being read
    assert source._read(path) is None and str(path) not in source.done
    path.write_bytes(jpeg(1))
    now[0] = 3.0
    assert source._ready() == []          # changed: the settle time starts again
    now[0] = 5.5
    assert source._ready() == [path]
    frame = source._read(path)
    assert frame.error == "" and frame.image is not None and str(path) in source.done
    now[0] = 9.0
    assert source._ready() == []          # never twice


def start_watch(folder: Path, model: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hemato.cli", "run", str(folder), "--watch", "--poll", "0.1", "--settle", "0.3",
         "--model", str(model), "--csv", str(out), "--threads", "1"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)


def stop_watch(proc: subprocess.Popen) -> tuple[str, str]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 128 + signal.SIGTERM, err
    return out, err


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM")
def test_watch_ends_on_sigterm_with_summary_and_resumes_after_a_restart(tmp_path, tiny_tflite):
    folder = tmp_path / "incoming"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(jpeg(1))
    (folder / "b.jpg").write_bytes(jpeg(2))
    out = tmp_path / "watch.csv"

    proc = start_watch(folder, tiny_tflite, out)
    try:
        wait_for(lambda: {"a.jpg", "b.jpg"} <= set(csv_sources(out)) or proc.poll() is not None, "a and b")
        (folder / "c.jpg").write_bytes(jpeg(3))
        wait_for(lambda: "c.jpg" in csv_sources(out) or proc.poll() is not None, "c")
    finally:
        stdout, stderr = stop_watch(proc)
    assert "watching" in stderr and "Images read: 3" in stdout and "Stopped early: SIGTERM received" in stdout
    assert out.read_bytes().endswith(b"\r\n")
    assert csv_sources(out) == ["a.jpg"] * 2 + ["b.jpg"] * 2 + ["c.jpg"] * 2

    (folder / "d.jpg").write_bytes(jpeg(4))
    proc = start_watch(folder, tiny_tflite, out)  # the same CSV: a and b are skipped, c (the last) redone
    try:
        wait_for(lambda: "d.jpg" in csv_sources(out) or proc.poll() is not None, "d")
        time.sleep(0.5)  # a few more polls: nothing is read twice
    finally:
        stdout, stderr = stop_watch(proc)
    assert "2 sources already in it skipped" in stderr and "c.jpg is classified again" in stderr
    assert "Images read: 2" in stdout  # c again and d
    assert csv_sources(out) == ["a.jpg"] * 2 + ["b.jpg"] * 2 + ["c.jpg"] * 2 + ["d.jpg"] * 2


def test_rows_of_images_moved_out_of_the_watched_folder_still_count_in_its_differential(tmp_path):
    from edge_app.run.watch import WatchFolder
    folder = tmp_path / "incoming"
    folder.mkdir()
    (folder / "here.jpg").write_bytes(b"x")
    watch = WatchFolder(folder)
    assert watch.owns(str(folder / "moved_away.jpg")) and not watch.covers(str(folder / "moved_away.jpg"))
    assert watch.owns(str(folder / "here.jpg")) and watch.covers(str(folder / "here.jpg"))
    assert not watch.owns(str(tmp_path / "other" / "a.jpg"))
