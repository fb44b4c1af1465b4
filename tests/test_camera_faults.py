"""A camera that fails intermittently: failed reads are retried, the device reopened with backoff, and after
the limits the run ends with status 1, a clear message and every row so far in the CSV."""
from __future__ import annotations

import csv
import functools

import numpy as np
import pytest

import edge_app.run.cli as run_module
from conftest import make_smear
from edge_app.core.sources import Camera, SourceLost
from edge_app.run.sources import open_source
from hemato.cli import main as hemato
from test_sources import RecordingStop

SMEAR = make_smear()


class ScriptedCapture:
    """A capture whose reads follow a script: 'f' frame, 'x' failed read, 'n' ok but no image, 'e' driver error."""

    def __init__(self, script: str):
        self.script, self.released = list(script), False

    def isOpened(self) -> bool:
        return True

    def read(self):
        step = self.script.pop(0) if self.script else "x"
        if step == "e":
            raise OSError("VIDIOC_DQBUF: No such device")
        if step == "n":
            return True, np.zeros((0, 0, 3), np.uint8)
        return (True, SMEAR.copy()) if step == "f" else (False, None)

    def release(self) -> None:
        self.released = True


class ScriptedCamera:
    """An opener: each opening plays the next script; 'raise' makes the opening itself fail."""

    def __init__(self, scripts: list[str]):
        self.scripts, self.opened = list(scripts), []

    def __call__(self):
        script = self.scripts.pop(0) if self.scripts else "raise"
        if script == "raise":
            raise RuntimeError("cannot open camera")
        self.opened.append(ScriptedCapture(script))
        return self.opened[-1]


def frames_until_lost(camera: Camera) -> list:
    frames = []
    with pytest.raises(SourceLost) as lost:
        for frame in camera:
            frames.append(frame)
    return frames, str(lost.value)


def test_isolated_failures_are_retried_without_reopening():
    stop = RecordingStop()
    camera = Camera("0", ScriptedCamera(["ffxfxxfefnfxxxf"]), read_retries=3, retry_wait_s=0.1, stop=stop)
    frames, _ = frames_until_lost(camera)
    assert [f.index for f in frames] == list(range(7))  # every frame delivered, numbered without gaps
    assert camera.failed_reads == 8 + 4 and camera.reopens == 0  # 8 in the script, 4 more at the end
    assert stop.waits[:8] == [0.1] * 8


def test_a_burst_longer_than_the_retries_reopens_the_camera_and_goes_on():
    stop = RecordingStop()
    opener = ScriptedCamera(["ffxxxxff", "raise", "xxxxx", "fff"])
    camera = Camera("0", opener, read_retries=3, retry_wait_s=0.1, reopen_attempts=3, backoff_s=0.5, stop=stop)
    frames, message = frames_until_lost(camera)
    assert len(frames) == 2 + 3  # the first opening's 2 frames (after x x x x it is reopened), then 3
    assert camera.reopens == 1
    # Reopen attempts: raise (0.5 s), no frame in 4 reads (1 s), then frames (2 s); at the end 0.5, 1, 2.
    assert [w for w in stop.waits if w >= 0.5] == [0.5, 1.0, 2.0, 0.5, 1.0, 2.0]
    assert "camera 0 stopped delivering frames" in message and "reopened 3 times" in message
    assert all(cap.released for cap in opener.opened)


def test_a_camera_that_dies_ends_the_run_with_status_1_and_keeps_the_rows(tmp_path, tiny_tflite, monkeypatch,
                                                                         capsys):
    opener = ScriptedCamera(["fxfxf" + "f" * 5, "xfxf"])  # 8 frames, reopened: 2 more, then dead
    monkeypatch.setattr(run_module, "open_source", functools.partial(
        open_source, camera_opener=opener, backoff_s=0, retry_wait_s=0))
    out = tmp_path / "cam.csv"
    status = hemato(["run", "0", "--model", str(tiny_tflite), "--csv", str(out), "--headless",
                     "--read-retries", "1", "--reopen", "2"])
    assert status == 1
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["frame"]) for r in rows] == list(range(10)) and all(r["label"] for r in rows)
    captured = capsys.readouterr()
    assert "Images read: 10" in captured.out
    assert "hemato run: camera 0: " in captured.err and "reopened 1 times" in captured.err  # a note: stderr, once
    assert "camera 0: " not in captured.out
    err = captured.err.strip().splitlines()
    assert err[-1] == (f"hemato run: error: camera 0 stopped delivering frames (reads retried 1 times, then "
                       f"reopened 2 times with backoff); the results so far are in {out}")


def test_a_camera_that_never_opens_gives_the_error_alone(tmp_path, tiny_tflite, monkeypatch, capsys):
    monkeypatch.setattr(run_module, "open_source", functools.partial(
        open_source, camera_opener=ScriptedCamera([]), backoff_s=0, retry_wait_s=0))
    status = hemato(["run", "7", "--model", str(tiny_tflite), "--csv", str(tmp_path / "cam.csv"), "--headless",
                     "--reopen", "1"])
    assert status == 1
    captured = capsys.readouterr()
    assert "Differential count" not in captured.out and "Results:" not in captured.out  # no empty summary
    assert captured.err.strip().splitlines()[-1].endswith("; no frame was read")


def test_no_retries_and_no_reopening_give_up_at_the_first_failure():
    camera = Camera("0", ScriptedCamera(["ffxfff"]), read_retries=0, reopen_attempts=0, stop=RecordingStop())
    frames, _ = frames_until_lost(camera)
    assert len(frames) == 2 and camera.failed_reads == 1
