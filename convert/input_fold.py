"""Fold the model's pixel scaling into its first convolution before full-int8 conversion.

TFLite quantises the Rescaling layer as a MUL and an ADD, each with its own int8 tensor; the MUL's
tensor is coarser than a grey level, and MobileNetV2's high-gain stem amplifies that noise. Folding the
scaling into Conv1's weights and bias leaves the raw pixels as the first tensor, which int8 holds exactly. Conv1's 'same' padding pads the scaled image with 0, so the folded graph pads the
raw image with the pixel value that scales to 0 (127.5; int8 rounds it by half a grey level on the
padded border only) and convolves without padding: the same function in float.
"""
from __future__ import annotations

import math

import numpy as np


def _constant_pad_layer(before: int, after: int, value: float, name: str):
    """A Keras layer padding both spatial axes by (before, after) with `value`."""
    import keras
    from keras import ops

    class ConstantPad(keras.layers.Layer):
        """Pads height and width with a constant (TFLite PADV2)."""

        def call(self, x):
            return ops.pad(x, [[0, 0], [before, after], [before, after], [0, 0]], constant_values=value)

    return ConstantPad(name=name)


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) that TensorFlow's 'same' padding adds along one axis."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def fold_input_scaling(model):
    """A copy of a `network.model.build_model` model whose Rescaling is folded into Conv1.

    Returns None when the model does not have that layout (Rescaling, then a backbone whose first
    layer is a bias-free 'same' Conv2D with square kernel and stride), so the caller converts as is.
    """
    import keras
    layers = model.layers
    if len(layers) < 3 or not isinstance(layers[1], keras.layers.Rescaling) \
            or not isinstance(layers[2], keras.Model):
        return None
    scaling, backbone = layers[1], layers[2]
    conv1 = backbone.layers[1]
    if not (isinstance(conv1, keras.layers.Conv2D) and conv1.padding == "same" and not conv1.use_bias
            and conv1.kernel_size[0] == conv1.kernel_size[1] and conv1.strides[0] == conv1.strides[1]):
        return None
    scale, offset = float(scaling.scale), float(scaling.offset)
    size = model.input_shape[1]
    before, after = _same_padding(size, conv1.kernel_size[0], conv1.strides[0])
    folded_conv = keras.layers.Conv2D(conv1.filters, conv1.kernel_size, conv1.strides, padding="valid",
                                      use_bias=True, name=conv1.name)

    def reuse_except_conv1(layer):
        return folded_conv if layer is conv1 else layer

    padded = keras.Input((size + before + after, size + before + after, 3), name="padded_rgb")
    new_backbone = keras.models.clone_model(backbone, input_tensors=padded, clone_function=reuse_except_conv1)
    kernel = np.asarray(conv1.get_weights()[0], np.float64)
    bias = offset * kernel.sum(axis=(0, 1, 2))
    folded_conv.set_weights([(kernel * scale).astype(np.float32), bias.astype(np.float32)])

    pad = _constant_pad_layer(before, after, -offset / scale, name="pad_to_scaled_zero")
    # the same graph with the Rescaling replaced by the pad and the backbone by its folded copy;
    # every other layer (the head, and any branch reading the raw pixels) is reused as it is
    replaced = {id(scaling): pad, id(backbone): new_backbone}
    return keras.models.clone_model(model, clone_function=lambda layer: replaced.get(id(layer), layer))
