"""Bias correction before int8 conversion: snap each convolution's weights to their int8 grid and let
the bias absorb the mean error that the rounding makes.

MobileNetV2's ImageNet stem has high-gain kernels whose taps nearly cancel; rounding them to int8
breaks the cancellation and shifts whole channels (see docs/experiments/). Snapping first makes the
converter's own per-channel rounding lossless, and the expected shift (rounding error times the mean
input patch, measured on the calibration crops) is subtracted from the following BatchNorm's beta or the layer's own bias: the data-free quantisation idea of Nagel et
al. (2019) with measured input means. Layers that stay float in the converted model are left alone,
and the float32 and float16 variants are converted from the untouched model.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

INT8_MAX = 127


def _conv_layers(graph) -> list:
    import keras
    return [layer for layer in graph.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))]


def _batchnorm_after(graph, conv) -> Any | None:
    """The BatchNormalization layer fed directly by `conv`, if any (the converter folds it into conv)."""
    import keras
    for layer in graph.layers:
        if isinstance(layer, keras.layers.BatchNormalization) and layer.input._keras_history.operation is conv:
            return layer
    return None


def _graphs_and_inputs(model, x: np.ndarray) -> list[tuple[Any, np.ndarray]]:
    """The model and every nested functional model inside it, each with its input values for x."""
    import keras
    found = [(model, x)]
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            feeding = layer._inbound_nodes[0].input_tensors[0]
            values = np.asarray(keras.Model(model.input, feeding)(x))
            found += _graphs_and_inputs(layer, values)
    return found


def _patches(conv, x) -> np.ndarray:
    """The input patches `conv` multiplies by its kernel: (P, kh*kw, C), taps in the kernel's order."""
    import tensorflow as tf
    kh, kw = conv.kernel_size
    channels = x.shape[-1]
    if (kh, kw) == (1, 1):
        sh, sw = conv.strides
        return np.asarray(x[:, ::sh, ::sw, :], np.float64).reshape(-1, 1, channels)
    patches = tf.image.extract_patches(x, sizes=[1, kh, kw, 1], strides=[1, *conv.strides, 1],
                                       rates=[1, 1, 1, 1], padding=conv.padding.upper())
    return np.asarray(patches, np.float64).reshape(-1, kh * kw, channels)


class _PatchMean:
    """Running mean of one conv's input patches, (kh*kw, C) in the kernel's order."""

    def __init__(self):
        self.count = 0
        self.total = 0.0

    def add(self, patches: np.ndarray) -> None:
        self.count += len(patches)
        self.total = self.total + patches.sum(axis=0)

    def mean(self) -> np.ndarray:
        """The mean patch; at the borders it counts the zero padding the convolution sees too."""
        return self.total / self.count


def correct_for_int8(model, crops: np.ndarray, batch: int = 16,
                     keep_float: Callable[[str], bool] = lambda name: False) -> int:
    """Snap and bias-correct every convolution of `model` in place; returns how many layers changed.

    crops: model-ready RGB uint8 crops (the calibration set), used to measure each layer's inputs.
    keep_float: names of layers that will stay float in the converted model, left untouched.
    """
    import keras
    x = np.asarray(crops, np.float32)
    changed = 0
    for graph, inputs in _graphs_and_inputs(model, x):
        convs = [conv for conv in _conv_layers(graph) if not keep_float(conv.name)]
        if not convs:
            continue
        probe = keras.Model(graph.input, [conv.input for conv in convs])
        stats = [_PatchMean() for _ in convs]
        for start in range(0, len(inputs), batch):
            outs = probe(inputs[start:start + batch])
            outs = outs if isinstance(outs, (list, tuple)) else [outs]
            for conv, stat, out in zip(convs, stats, outs):
                stat.add(_patches(conv, out))
        for conv, stat in zip(convs, stats):
            _correct_layer(graph, conv, stat)
            changed += 1
    return changed


def _grid_steps(folded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(weights in grid steps, step size) on a symmetric per-output-channel int8 grid, as TFLite rounds.

    folded: (n, out), one column per output channel.
    """
    scale = np.abs(folded).max(axis=0) / INT8_MAX
    scale[scale == 0] = 1.0
    return folded / scale, scale


def _correct_layer(graph, conv, stats: _PatchMean) -> None:
    """Snap one conv (with its BatchNorm folded in, as the converter will fold it) and fix its bias."""
    import keras
    depthwise = isinstance(conv, keras.layers.DepthwiseConv2D)
    kernel = np.asarray(conv.get_weights()[0], np.float64)  # (kh, kw, in, out) or (kh, kw, in, multiplier=1)
    bn = _batchnorm_after(graph, conv)
    if bn is not None:
        gamma, beta, mean, var = (np.asarray(w, np.float64) for w in bn.get_weights())
        bn_scale = gamma / np.sqrt(var + bn.epsilon)
    else:
        bn_scale = np.ones(kernel.shape[2] if depthwise else kernel.shape[3])
    shape = (1, 1, -1, 1) if depthwise else (1, 1, 1, -1)
    folded = kernel * bn_scale.reshape(shape)
    columns = folded[..., 0].reshape(-1, folded.shape[2]) if depthwise else folded.reshape(-1, folded.shape[3])
    steps, scale = _grid_steps(columns)
    error = (np.round(steps) - steps) * scale  # (n, out) in the kernel's flattened order
    input_mean = stats.mean()  # (taps, C)
    shift = (error * input_mean).sum(axis=0) if depthwise else error.T @ input_mean.reshape(-1)
    error = error.reshape(folded.shape[:3])[..., None] if depthwise else error.reshape(folded.shape)
    safe = np.abs(bn_scale) > 1e-12
    snapped = np.where(safe.reshape(shape), (folded + error) / np.where(safe, bn_scale, 1.0).reshape(shape), kernel)
    weights = conv.get_weights()
    weights[0] = snapped.astype(np.float32)
    if bn is not None:  # the folded bias is beta - mean * bn_scale: move beta by the shift
        bn.set_weights([w.astype(np.float32) for w in (gamma, beta - shift, mean, var)])
    elif conv.use_bias:
        weights[1] = (np.asarray(weights[1], np.float64) - shift).astype(np.float32)
    conv.set_weights(weights)
