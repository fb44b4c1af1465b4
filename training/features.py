"""Backbone features of cached crops under the four 90-degree rotations, computed once.

They train the head quickly on CPU (the frozen backbone would otherwise run every epoch).
Copies of one photograph are found by evaluation.photographs, not from these features.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np


def features_cache_file(crops_file: Path, weights: str | None, rows: int,
                        feature_layers: tuple[str, ...] = ("out_relu",)) -> Path:
    """Cache file for the backbone features of one crop cache's rows under one backbone's weights.

    Keyed by the crop cache (itself keyed by the image files), by the weights file's size and time
    and by the layers pooled, not by the row count alone: another dataset of the same size never
    reuses stale features.
    """
    tag = Path(str(weights)).name
    if weights and Path(str(weights)).is_file():
        stat = Path(str(weights)).stat()
        tag += "_" + hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:8]
    tag += "_" + hashlib.sha256("+".join(feature_layers).encode()).hexdigest()[:8]
    key = Path(crops_file).stem.removeprefix("crops_")
    return Path(crops_file).parent / f"features_{key}_{tag}_{rows}.npy"


def feature_extractor(model):
    """A model mapping RGB [0,255] crops to pooled backbone features, sharing `model`'s layers."""
    import keras
    pooled = model.get_layer("pool").output
    return keras.Model(model.inputs, pooled)


def _tflite_runner(extractor):
    """A function that runs one crop (S x S x 3) through a TFLite copy of the Keras extractor.

    On a CPU the TFLite interpreter (XNNPACK) runs the frozen backbone several times faster than Keras,
    with the same features up to float rounding.
    """
    import os

    from edge_app.core.model import interpreter_class
    from network.tflite import float32_tflite

    model_bytes = float32_tflite(extractor, extractor.input_shape[1])
    interpreter = interpreter_class()[0](model_content=model_bytes, num_threads=os.cpu_count() or 1)
    interpreter.allocate_tensors()
    input_index = interpreter.get_input_details()[0]["index"]
    output_index = interpreter.get_output_details()[0]["index"]

    def run(crop: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(input_index, crop[None].astype(np.float32))
        interpreter.invoke()
        return interpreter.get_tensor(output_index)[0]

    return run


def _features_of_views(extractor, crops: np.ndarray, views: int, view, label: str) -> np.ndarray:
    """Array (views, N, D): pooled features of view(k, i, crop) for every view k and crop i, with progress."""
    run = _tflite_runner(extractor)
    out = np.zeros((views, len(crops), extractor.output_shape[-1]), np.float32)
    total = views * len(crops)
    for k in range(views):
        for i, crop in enumerate(crops):
            out[k, i] = run(view(k, i, crop))
            done = k * len(crops) + i + 1
            if done % 500 == 0 or done == total:
                print(f"\r{label}: {done}/{total}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return out


ROTATIONS = 4  # the 90-degree rotations whose features are cached for the head


def rotated_features(extractor, crops: np.ndarray, rotations: int = ROTATIONS, label: str = "features") -> np.ndarray:
    """Array (rotations, N, D) of pooled features of each crop rotated by k*90 degrees."""
    return _features_of_views(extractor, crops, rotations, lambda k, i, crop: np.rot90(crop, k), label)


def augmented_features(extractor, crops: np.ndarray, copies: int, seed: int,
                       label: str = "augmented features") -> np.ndarray:
    """Array (copies, N, D) of pooled features of augmented crops (training.augment), one view each.

    A head trained on these as well as on the clean crops reads colour- and scale-jittered crops far
    better (chosen on validation, see docs/experiments/).
    """
    import tensorflow as tf

    from training.augment import augment

    def view(k: int, i: int, crop: np.ndarray) -> np.ndarray:
        return augment(tf.constant(crop), tf.constant([seed + 1 + k, i], tf.int64)).numpy()

    return _features_of_views(extractor, crops, copies, view, label)
