"""Correct the int8 backbone's systematic error on the pooled features inside the float head.

With --float-stem the head (concatenation and dense layer) stays float, but the pooled features it
reads come from the int8 backbone, whose rounding shifts and scales whole channels: an error that
averaging over the crop does not remove. Fitted on the calibration crops: per channel, the
least-squares line from the int8 file's features to the float32 file's, folded into the dense layer
(network.model.fold_affine_input); the backbone is untouched.
"""
from __future__ import annotations

import numpy as np


def head_inputs(tflite_bytes: bytes, crops: list[np.ndarray]) -> np.ndarray:
    """(crops x views, D): what the file's last dense layer reads for each crop (edge_app.core.head_probe).

    Read with the builtin kernels, as XNNPACK (the default delegate) keeps its tensors to itself; the two
    round int8 slightly differently, so logits from these features are close to, not exactly, the file's.
    """
    from edge_app.core.head_probe import HeadProbe
    probe = HeadProbe(tflite_bytes)
    return np.concatenate([probe.features(crop) for crop in crops])


def fit_channel_lines(int8_features: np.ndarray, float_features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(gain, offset) per channel with float ~ gain * int8 + offset (least squares; gain 1 on constant channels)."""
    x_mean, y_mean = int8_features.mean(axis=0), float_features.mean(axis=0)
    x_var = int8_features.var(axis=0)
    covariance = ((int8_features - x_mean) * (float_features - y_mean)).mean(axis=0)
    gain = np.where(x_var > 1e-12, covariance / np.maximum(x_var, 1e-12), 1.0)
    return gain, y_mean - gain * x_mean

