"""Conversion test assets, built once per session: labelled synthetic smears, a trained tiny run, its .tflite files.

The tiny model is trained for a few seconds so that its classes are separable; an untrained
model has near-tied logits whose top-1 flips under any quantisation noise, which would make
an agreement check meaningless.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from conftest import LABELS, build_tiny_keras, make_smear, tiny_metadata
from edge_app.core.vision import CropSettings, largest_cell_crop

INPUT_SIZE = 32
# One nucleus stain per class (BGR; blue well above green so every one is located).
STAINS = {"EOSINOPHIL": (170, 60, 120), "LYMPHOCYTE": (205, 90, 40),
          "MONOCYTE": (150, 40, 175), "NEUTROPHIL": (115, 35, 70)}

_cache: dict[str, object] = {}


def make_labelled_folder(root: Path, per_class: int, seed: int, stains: dict | None = None) -> Path:
    """ROOT/<CLASS>/*.png: one cell per smear, the class given by the nucleus stain (STAINS) and jittered."""
    rng = np.random.default_rng(seed)
    for k, label in enumerate(LABELS):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            stain = tuple(int(c + rng.integers(-12, 13)) for c in (stains or STAINS)[label])
            cell = (int(rng.integers(110, 210)), int(rng.integers(90, 150)), int(rng.integers(22, 34)))
            img = make_smear(cells=[cell], seed=int(seed * 10000 + k * 1000 + i), nucleus_bgr=stain)
            cv2.imwrite(str(root / label / f"{label.lower()}_{i:03d}.png"), img)
    return root


def crops_of(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs and class indices of a labelled folder, cut by edge_app's crop."""
    from edge_app.core.dataset import labelled_images
    settings = CropSettings(input_size=INPUT_SIZE)
    xs, ys = [], []
    for path, label in labelled_images(folder):
        crop, _ = largest_cell_crop(cv2.imread(str(path)), settings)
        assert crop is not None, path
        xs.append(crop)
        ys.append(LABELS.index(label))
    return np.stack(xs).astype(np.float32), np.array(ys)


def make_run(run_dir: Path, train_folder: Path) -> Path:
    """A run folder (model.keras + metadata.json) holding the tiny model trained on the smears."""
    import keras
    model = build_tiny_keras(LABELS, INPUT_SIZE)
    x, y = crops_of(train_folder)
    model.compile(keras.optimizers.Adam(0.02), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    # One long epoch (the data repeated) trains as well as many short ones at a third of the overhead.
    model.fit(np.tile(x, (20, 1, 1, 1)), np.tile(y, 20), batch_size=32, epochs=1, verbose=0, shuffle=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    model.save(run_dir / "model.keras")
    (run_dir / "metadata.json").write_text(json.dumps(tiny_metadata(LABELS, INPUT_SIZE)))
    return run_dir


def assets(tmp_path_factory) -> dict:
    """The labelled folders and the trained run, built at most once per test session."""
    if not _cache:
        root = tmp_path_factory.mktemp("convert_assets")
        train = make_labelled_folder(root / "TRAIN", per_class=30, seed=1)
        test = make_labelled_folder(root / "TEST", per_class=15, seed=2)
        _cache.update(root=root, train=train, test=test, run=make_run(root / "run", train))
    return _cache


def converted(tmp_path_factory, variant: str, io_input: str = "uint8", io_output: str = "float32") -> Path:
    """The run converted to one variant (int8 calibrated on the TRAIN smears), cached per session."""
    from convert.calibration import build_calibration_set
    from convert.converter import convert_run
    key = f"{variant}-{io_input}-{io_output}"
    if key not in _cache:
        a = assets(tmp_path_factory)
        calib = build_calibration_set(a["train"], CropSettings(input_size=INPUT_SIZE), count=60,
                                      progress=lambda _: None) if variant == "int8" else None
        out = a["root"] / "models" / f"tiny_{key}.tflite"
        convert_run(a["run"], variant, out, calib, io_input, io_output)
        _cache[key] = out
    return _cache[key]


def broken_int8(tmp_path_factory) -> Path:
    """An int8 model calibrated on constant grey images: its ranges are wrong, so verify must reject it."""
    from convert.calibration import CalibrationSet
    from convert.converter import convert_model, file_sha256, load_keras, read_run_metadata, tflite_metadata
    from convert.metadata_writer import embed_metadata
    if "broken" not in _cache:
        a = assets(tmp_path_factory)
        meta = read_run_metadata(a["run"])
        calib = CalibrationSet([Path("constant")], [np.full((INPUT_SIZE, INPUT_SIZE, 3), 128, np.uint8)] * 10)
        data = convert_model(load_keras(a["run"], meta), "int8", INPUT_SIZE, calib)
        written = tflite_metadata(meta, "int8", {"input": "uint8", "output": "float32"},
                                  file_sha256(a["run"] / "model.keras"), calib)
        out = a["root"] / "models" / "tiny_int8_constant_calibration.tflite"
        out.write_bytes(embed_metadata(data, written))
        _cache["broken"] = out
    return _cache["broken"]
