"""Model problems stop `hemato run` at once: exit 2, one line naming the file, before any image is read."""
from __future__ import annotations

from pathlib import Path

import cv2
import pytest

import edge_app.core.frames
from conftest import LABELS, build_tiny_keras, make_smear, tiny_metadata
from hemato.cli import main as hemato


@pytest.fixture(scope="module")
def bare_tflite() -> bytes:
    """The tiny model converted without any HematoVision metadata."""
    import tensorflow as tf
    return tf.lite.TFLiteConverter.from_keras_model(build_tiny_keras()).convert()


def with_metadata(model: bytes, metadata: dict) -> bytes:
    from convert.metadata_writer import embed_metadata
    return embed_metadata(model, metadata)


def bad_models(folder: Path, bare: bytes, good: Path) -> dict[str, tuple[Path, str]]:
    """name -> (model path, what the one-line error must say)."""
    jpeg = cv2.imencode(".jpg", make_smear())[1].tobytes()
    no_labels = {k: v for k, v in tiny_metadata(LABELS, 32).items() if k != "labels"}
    cases = {
        "missing.tflite": (None, "model file not found"),
        "photo.tflite": (jpeg, "not a TFLite model"),
        "random.tflite": (bytes(range(256)) * 40, "not a TFLite model"),
        "empty.tflite": (b"", "not a TFLite model"),
        "half.tflite": (good.read_bytes()[:len(good.read_bytes()) // 2], "TFLite"),
        "root_past_end.tflite": (b"\xff\xff\x00\x00TFL3" + bytes(8), "corrupt TFLite flatbuffer"),
        "no_metadata.tflite": (bare, "no 'hemato_edge' metadata (labels, input size)"),
        "no_labels.tflite": (with_metadata(bare, no_labels), "no usable 'labels' list"),
        "wrong_size.tflite": (with_metadata(bare, tiny_metadata(LABELS, 48)),
                              "input shape (1, 32, 32, 3) does not match the pipeline's (1, 48, 48, 3)"),
        "three_labels.tflite": (with_metadata(bare, tiny_metadata(LABELS[:3], 32)), "4 outputs but 3 labels"),
        "a_folder": ("folder", "is a folder, not a model file"),
    }
    out = {}
    for name, (data, message) in cases.items():
        if data == "folder":
            (folder / name).mkdir()
        elif data is not None:
            (folder / name).write_bytes(data)
        out[name] = (folder / name, message)
    return out


def test_each_model_problem_fails_fast_with_one_clear_line(tmp_path, smear_folder, tiny_tflite, bare_tflite,
                                                           capsys, monkeypatch):
    def no_reading(path):
        raise AssertionError(f"an image was read ({path}) although the model is unusable")

    monkeypatch.setattr(edge_app.core.frames, "load_image", no_reading)
    csv_path = tmp_path / "never.csv"
    for name, (model, message) in bad_models(tmp_path, bare_tflite, tiny_tflite).items():
        assert hemato(["run", str(smear_folder), "--model", str(model), "--csv", str(csv_path)]) == 2, name
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("hemato run: error: "), (name, captured.err)
        assert message in lines[0] and str(model) in lines[0], (name, lines[0])
        assert captured.out == ""  # not even the model banner
        assert not csv_path.exists()
