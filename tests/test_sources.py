"""Frame sources: images and folders, video files, cameras that fail, and the Pi camera's colour order."""
import sys
import types

import cv2
import numpy as np
import pytest

from conftest import make_smear
from edge_app.core.sources import Camera, ImageFiles, SourceError, SourceLost, VideoFile, open_source, read_image


def write_video(path, frames: int, size=(160, 120)) -> list[np.ndarray]:
    """A short MJPG .avi whose frame i is uniformly grey level 20 * i."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, size)
    assert writer.isOpened()
    images = [np.full((size[1], size[0], 3), 20 * i, np.uint8) for i in range(frames)]
    for image in images:
        writer.write(image)
    writer.release()
    return images


class FakeCapture:
    """A cv2.VideoCapture stand-in delivering `frames` frames then failing; frames < 0: cannot open."""

    def __init__(self, frames: int, image: np.ndarray):
        self.left, self.image, self.released = frames, image, False

    def isOpened(self) -> bool:
        return self.left >= 0

    def read(self):
        if self.left <= 0:
            return False, None
        self.left -= 1
        return True, self.image.copy()

    def release(self) -> None:
        self.released = True


class FakeCamera:
    """An opener: each opening delivers the next count of `plan` frames; after the plan it never opens."""

    def __init__(self, plan: list[int]):
        self.plan, self.opened = list(plan), []
        self.image = make_smear()

    def __call__(self) -> FakeCapture:
        cap = FakeCapture(self.plan.pop(0) if self.plan else -1, self.image)
        self.opened.append(cap)
        return cap


class RecordingStop:
    """A stop event that never fires and records the backoff waits."""

    def __init__(self):
        self.waits = []

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        return False

    def is_set(self) -> bool:
        return False


def test_folder_lists_images_recursively_sorted_and_reports_unreadable(tmp_path):
    (tmp_path / "b").mkdir()
    cv2.imwrite(str(tmp_path / "b" / "2.png"), make_smear(seed=2))
    cv2.imwrite(str(tmp_path / "1.jpg"), make_smear(seed=1))
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "notes.txt").write_text("ignored")
    frames = list(open_source(str(tmp_path)))
    assert [f.source for f in frames] == [str(tmp_path / n) for n in ("1.jpg", "b/2.png", "broken.jpg")]
    assert frames[0].image.shape == (240, 320, 3) and frames[0].error == ""
    assert frames[2].image is None and frames[2].error == "not an image (unrecognised format)"


def test_unicode_path_is_decoded(tmp_path):
    path = tmp_path / "Ausstrich_ü_血液.jpg"
    ok, data = cv2.imencode(".jpg", make_smear())
    data.tofile(str(path))
    image, error = read_image(path)
    assert error == "" and image.shape == (240, 320, 3)
    assert isinstance(open_source(str(path)), ImageFiles)


def test_missing_path_and_empty_folder_are_source_errors(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        open_source(str(tmp_path / "nope"))
    with pytest.raises(SourceError, match="no images"):
        open_source(str(tmp_path))


def test_video_frames_in_order_and_every_nth(tmp_path):
    path = tmp_path / "clip.avi"
    expected = write_video(path, 6)
    source = open_source(str(path))
    assert isinstance(source, VideoFile) and source.stream
    frames = list(source)
    source.close()
    assert [f.index for f in frames] == list(range(6))
    assert {f.source for f in frames} == {"clip.avi"}
    for frame, image in zip(frames, expected):
        assert abs(float(frame.image.mean()) - float(image.mean())) < 4  # MJPG is lossy
    assert [f.index for f in open_source(str(path), every=2)] == [0, 2, 4]


def test_unopenable_video_is_a_source_error(tmp_path):
    path = tmp_path / "broken.mp4"
    path.write_bytes(b"\0" * 64)
    with pytest.raises(SourceError, match="cannot open video"):
        open_source(str(path))


def test_camera_index_uses_the_injected_opener():
    fake = FakeCamera([2])
    source = open_source("0", camera_opener=fake, reopen_attempts=1, backoff_s=0)
    assert isinstance(source, Camera) and source.live
    with pytest.raises(SourceLost):
        frames = []
        for frame in source:
            frames.append(frame)
    assert [f.source for f in frames] == ["camera:0", "camera:0"]


def test_camera_that_fails_intermittently_is_reopened_and_goes_on():
    fake, stop = FakeCamera([3, 2, -1, 4]), RecordingStop()
    camera = Camera("0", fake, reopen_attempts=3, backoff_s=0.5, stop=stop)
    frames = []
    with pytest.raises(SourceLost, match="stopped delivering"):
        for frame in camera:
            frames.append(frame)
    assert [f.index for f in frames] == list(range(9))  # 3 + 2 + 4, numbered without gaps
    assert camera.reopens == 2
    # After the 4 frames: three reopen attempts with doubling waits, then give up.
    assert stop.waits[-3:] == [0.5, 1.0, 2.0]
    assert all(cap.released for cap in fake.opened)


def test_camera_that_never_opens_gives_up_after_the_attempts():
    fake, stop = FakeCamera([]), RecordingStop()
    with pytest.raises(SourceLost, match="could not be opened"):
        list(Camera("3", fake, reopen_attempts=2, backoff_s=0.1, stop=stop))
    assert len(fake.opened) == 3 and stop.waits == [0.1, 0.2]


def test_camera_stops_without_error_when_asked_during_backoff():
    import threading
    import time
    stop = threading.Event()
    camera = Camera("0", FakeCamera([1]), reopen_attempts=5, backoff_s=30, stop=stop)
    frames = iter(camera)
    next(frames)
    threading.Timer(0.2, stop.set).start()
    start = time.perf_counter()
    assert list(frames) == []  # the 30 s backoff is cut short, and no SourceLost
    assert time.perf_counter() - start < 5


def test_camera_every_nth_frame():
    camera = Camera("0", FakeCamera([7]), every=3, reopen_attempts=0)
    frames = []
    with pytest.raises(SourceLost):
        for frame in camera:
            frames.append(frame)
    assert [f.index for f in frames] == [0, 3, 6]


def test_picamera_rgb_frames_become_bgr(monkeypatch):
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[..., 0] = 200  # red
    rgb[..., 2] = 30   # blue

    class FakePicamera2:
        def create_preview_configuration(self, main):
            assert main["format"] == "BGR888"  # picamera2's name for R, G, B byte order
            return main

        def configure(self, config): pass
        def start(self): pass
        def stop(self): pass
        def close(self): pass

        def capture_array(self):
            return rgb.copy()

    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=FakePicamera2))
    camera = open_source("picamera")
    frame = next(iter(camera))
    camera.close()
    assert frame.source == "camera:picamera"
    assert frame.image[0, 0].tolist() == [30, 0, 200]  # BGR


def test_picamera_missing_is_a_clear_source_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import fails
    with pytest.raises(SourceError, match="picamera2"):
        open_source("picamera")


def test_a_folder_lists_webp_images_as_a_single_file_is_read(tmp_path):
    """A .webp inside a folder is classified as the same file named on the command line is."""
    from edge_app.core.dataset import images_in
    ok, data = cv2.imencode(".webp", np.full((60, 80, 3), 200, np.uint8))
    (tmp_path / "cell.webp").write_bytes(data.tobytes())
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in images_in(tmp_path)] == ["cell.webp"]


def test_a_video_cut_short_is_noted_and_a_whole_one_or_a_stopped_run_is_not(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (160, 120))
    for k in range(12):
        writer.write(cv2.resize(make_smear(seed=k), (160, 120)))
    writer.release()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    whole = VideoFile(path)
    assert sum(1 for _ in whole) == 12 and whole.faults() == ""
    short = VideoFile(cut)
    frames = sum(1 for _ in short)
    assert frames < 12 and f"ended after {frames} of the 12 frames" in short.faults()
    stopped = VideoFile(path)
    next(iter(stopped))  # a run stopped after one frame: the file did not end
    assert stopped.faults() == ""
