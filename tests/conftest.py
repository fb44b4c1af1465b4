"""Shared test fixtures: synthetic smear images and tiny models built in the test session."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "blood-cells"
LABELS = ["EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"]

requires_real_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"real data not found at {SHARED_DATA} (../shared is absent)")

BACKGROUND_BGR = (215, 205, 230)  # pale pink
RED_CELL_BGR = (175, 160, 215)    # pink-red erythrocyte
NUCLEUS_BGR = (170, 60, 120)      # purple stain: blue well above green


def make_smear(width: int = 320, height: int = 240, cells: list[tuple[int, int, int]] | None = None,
               seed: int = 0, red_cells: int = 12, nucleus_bgr: tuple[int, int, int] = NUCLEUS_BGR) -> np.ndarray:
    """A smear-like BGR frame: pink background, red cells, and a purple nucleus per (x, y, radius)."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width, 3), BACKGROUND_BGR, np.uint8)
    for _ in range(red_cells):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.circle(img, centre, int(min(width, height) * 0.08), RED_CELL_BGR, -1)
    for x, y, r in cells if cells is not None else [(width // 2, height // 2, int(min(width, height) * 0.12))]:
        cv2.circle(img, (x, y), int(r * 1.4), (220, 190, 200), -1)  # pale cytoplasm
        cv2.circle(img, (x, y), r, nucleus_bgr, -1)
    noise = rng.normal(0, 3, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def build_tiny_keras(labels: list[str] = LABELS, input_size: int = 32, seed: int = 0):
    """A small convolutional classifier with the production contract: RGB [0,255] in, logits out."""
    import keras
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((input_size, input_size, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(labels))(x)
    return keras.Model(inputs, outputs)


def tiny_metadata(labels: list[str], input_size: int) -> dict:
    from edge_app.core.vision import CropSettings
    return {"labels": labels, "input_size": input_size, "output": "logits", "temperature": 1.0,
            "crop": CropSettings(input_size=input_size).to_dict(), "model_name": "tiny-test"}


def export_float_tflite(model, path: Path, labels: list[str], input_size: int) -> Path:
    """Plain float32 TFLite export with HematoVision metadata embedded."""
    import tensorflow as tf
    from convert.metadata_writer import embed_metadata
    data = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    path.write_bytes(embed_metadata(data, tiny_metadata(labels, input_size)))
    return path


@pytest.fixture(scope="session")
def tiny_tflite(tmp_path_factory) -> Path:
    """A float32 .tflite of the tiny model, with the four production labels."""
    path = tmp_path_factory.mktemp("models") / "tiny_float32.tflite"
    return export_float_tflite(build_tiny_keras(), path, LABELS, 32)


@pytest.fixture
def smear_folder(tmp_path) -> Path:
    """A folder of three synthetic smear JPEGs, one cell each."""
    folder = tmp_path / "smears"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"smear_{i}.jpg"), make_smear(seed=i))
    return folder


def run_csv(folder: Path, model: Path, out: Path) -> Path:
    """`hemato run` over a folder into the CSV `out` (one thread); the CSV's path."""
    from hemato.cli import main
    assert main(["run", str(folder), "--model", str(model), "--csv", str(out), "--threads", "1"]) == 0
    return out


def smears_run(tmp_path: Path, model: Path, count: int = 3) -> Path:
    """The `hemato run` CSV (tmp_path/results.csv) of `count` one-cell synthetic smears in tmp_path/sample."""
    folder = tmp_path / "sample"
    folder.mkdir()
    for i in range(count):
        cv2.imwrite(str(folder / f"smear_{i:02d}.png"), make_smear(seed=i))
    return run_csv(folder, model, tmp_path / "results.csv")
