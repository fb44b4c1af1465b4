"""Bias correction before int8 conversion: snap each convolution's weights to their int8 grid and let
the bias absorb the mean error that the rounding makes.

MobileNetV2's ImageNet stem has high-gain kernels whose taps nearly cancel; rounding them to int8
breaks the cancellation and shifts whole channels, which wrecked our int8 model (measured on 300
validation crops, single view: full-int8 top-1 agreement with float 47% without, 94% with). Snapping
first makes the converter's own per-channel rounding lossless, and the expected shift (rounding
error times the mean input of each channel, measured on the calibration crops) is subtracted from
the following BatchNorm's beta or the layer's own bias: the data-free quantisation idea of Nagel et
al. (2019) with measured input means. The float32 variant is converted from the untouched model.
"""
from __future__ import annotations

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


def _snap(folded: np.ndarray, channel_axes: tuple[int, ...]) -> np.ndarray:
    """Weights rounded to a symmetric per-output-channel int8 grid, as the TFLite converter rounds them."""
    scale = np.abs(folded).max(axis=channel_axes, keepdims=True) / INT8_MAX
    scale[scale == 0] = 1.0
    return np.round(folded / scale) * scale


def correct_for_int8(model, crops: np.ndarray, batch: int = 16) -> int:
    """Snap and bias-correct every convolution of `model` in place; returns how many layers changed.

    crops: model-ready RGB uint8 crops (the calibration set), used to measure each layer's input means.
    """
    import keras
    x = np.asarray(crops, np.float32)
    changed = 0
    for graph, inputs in _graphs_and_inputs(model, x):
        convs = _conv_layers(graph)
        if not convs:
            continue
        probe = keras.Model(graph.input, [conv.input for conv in convs])
        sums = None
        for start in range(0, len(inputs), batch):
            outs = probe(inputs[start:start + batch])
            outs = outs if isinstance(outs, (list, tuple)) else [outs]
            part = [np.asarray(o, np.float64).sum(axis=(0, 1, 2)) for o in outs]
            sums = part if sums is None else [s + p for s, p in zip(sums, part)]
        pixels = [len(inputs) * np.prod(conv.input.shape[1:3]) for conv in convs]
        for conv, total, count in zip(convs, sums, pixels):
            _correct_layer(graph, conv, total / count)
            changed += 1
    return changed


def _correct_layer(graph, conv, input_mean: np.ndarray) -> None:
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
    error = _snap(folded, (0, 1, 3) if depthwise else (0, 1, 2)) - folded
    if depthwise:
        shift = error[..., 0].sum(axis=(0, 1)) * input_mean
    else:
        shift = np.einsum("hwio,i->o", error, input_mean)
    safe = np.abs(bn_scale) > 1e-12
    snapped = np.where(safe.reshape(shape), (folded + error) / np.where(safe, bn_scale, 1.0).reshape(shape), kernel)
    weights = conv.get_weights()
    weights[0] = snapped.astype(np.float32)
    if bn is not None:  # the folded bias is beta - mean * bn_scale: move beta by the shift
        bn.set_weights([w.astype(np.float32) for w in (gamma, beta - shift, mean, var)])
    elif conv.use_bias:
        weights[1] = (np.asarray(weights[1], np.float64) - shift).astype(np.float32)
    conv.set_weights(weights)
