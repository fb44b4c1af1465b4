"""The classifier's graph, defined once for training and conversion: MobileNetV2 backbone, pixel scaling
inside the graph, pooled features and colour statistics, dropout, logits; rotation views; loading a run's model."""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import numpy as np


class WeightsError(ValueError):
    """The backbone weights cannot be loaded; the message says what to pass instead."""


# Where an offline machine keeps the ImageNet weights: $HEMATO_IMAGENET_WEIGHTS, else the shared folder
# beside the repository.
IMAGENET_WEIGHTS_FILE = "mobilenetv2_1.0_imagenet_no_top.weights.h5"


def local_imagenet_weights() -> Path | None:
    """A local copy of the ImageNet MobileNetV2 backbone weights, if this machine has one."""
    candidates = [os.environ.get("HEMATO_IMAGENET_WEIGHTS", ""),
                  Path(__file__).resolve().parents[1].parent / "shared" / "weights" / IMAGENET_WEIGHTS_FILE]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


def _backbone(input_size: int, weights: str | None):
    import keras
    source = None if weights in (None, "none") else weights
    if source not in (None, "imagenet") and not Path(source).is_file():
        raise WeightsError(f"backbone weights file not found: {source}")

    def load(from_weights):
        return keras.applications.MobileNetV2(input_shape=(input_size, input_size, 3), include_top=False,
                                              weights=from_weights, alpha=1.0)
    try:
        return load(source)
    except Exception as exc:  # download failures surface as several exception types
        if source != "imagenet":
            raise WeightsError(f"could not load backbone weights from {source}: {exc}") from exc
        local = local_imagenet_weights()
        if local is None:
            raise WeightsError("could not download the ImageNet MobileNetV2 weights (offline?) and found no local "
                               f"copy: pass --weights PATH/{IMAGENET_WEIGHTS_FILE} or set "
                               "HEMATO_IMAGENET_WEIGHTS") from exc
        print(f"could not download the ImageNet weights; using the local copy {local}", file=sys.stderr)
        return load(str(local))


# Backbone layers whose pooled outputs the head reads: mid-level features generalise to new photographs
# better than the last layer's (chosen on validation, see docs/experiments/); the backbone stops at block 13.
FEATURE_LAYERS = ("block_6_expand_relu", "block_13_expand_relu")


def _pooled_features(backbone, feature_layers: tuple[str, ...]):
    """The backbone cut after its deepest feature layer, each feature layer globally averaged, concatenated."""
    import keras
    names = [layer.name for layer in backbone.layers]
    missing = [name for name in feature_layers if name not in names]
    if missing or not feature_layers:
        raise ValueError(f"feature layers {missing or '(none)'} are not in the backbone; e.g. out_relu, "
                         "block_13_expand_relu, block_6_expand_relu")
    pooled = [keras.layers.GlobalAveragePooling2D(name=f"pool_{name}")(backbone.get_layer(name).output)
              for name in feature_layers]
    x = pooled[0] if len(pooled) == 1 else keras.layers.Concatenate(name="pooled_features")(pooled)
    return keras.Model(backbone.input, x, name=backbone.name)


COLOUR_LEVELS = 4  # levels per RGB channel of the colour histogram: 4 x 4 x 4 bins
COLOUR_STRIDE = 8  # the statistics read every 8th pixel of every 8th row: nearly the same histogram, 1/64 of the work
COLOUR_FEATURES = 6 + COLOUR_LEVELS ** 3


@functools.cache
def colour_statistics_layer():
    """A Keras layer: RGB [0, 255] crops -> per-channel mean and spread and a square-rooted RGB histogram.

    Granule colour separates eosinophils from neutrophils and pooled backbone features keep little of it.
    Inside the graph, so every runtime computes it alike, with ops XNNPACK runs; exact for integer pixels.
    """
    import math

    import keras
    from keras import ops

    class ColourStatistics(keras.layers.Layer):
        """(B,S,S,3) RGB in [0, 255] -> (B, 6 + levels^3)."""

        def __init__(self, stride: int = COLOUR_STRIDE, levels: int = COLOUR_LEVELS, **kwargs):
            super().__init__(**kwargs)
            self.stride, self.levels = stride, levels

        def get_config(self):
            return {**super().get_config(), "stride": self.stride, "levels": self.levels}

        def call(self, x):
            levels, n = self.levels, ops.shape(x)[0]
            pixels = ops.reshape(x[:, ::self.stride, ::self.stride, :], (n, -1, 3))
            scaled = pixels / 255.0
            mean = ops.mean(scaled, axis=1)
            centred = scaled - mean[:, None, :]
            spread = ops.sqrt(ops.mean(centred * centred, axis=1))
            # step k is 1 where floor(pixel * levels / 255) >= k: exactly 0 or 1 for integer pixels, and
            # their sum is the pixel's level; the bin (red*levels^2 + green*levels + blue) is an exact integer
            level = sum(ops.clip((pixels - (math.ceil(255 * k / levels) - 0.5)) * 2.0, 0.0, 1.0)
                        for k in range(1, levels))
            index = ops.sum(level * np.array([levels * levels, levels, 1], np.float32), axis=-1, keepdims=True)
            in_bin = ops.clip(1.0 - ops.abs(index - np.arange(levels ** 3, dtype=np.float32)), 0.0, 1.0)
            histogram = ops.mean(in_bin, axis=1)
            return ops.concatenate([mean, spread, ops.sqrt(histogram)], axis=-1)

        def compute_output_shape(self, input_shape):
            return (input_shape[0], 6 + self.levels ** 3)

    return ColourStatistics


def custom_objects() -> dict:
    """The custom layers a saved model.keras needs to load (keras.saving.load_model(custom_objects=...))."""
    return {"ColourStatistics": colour_statistics_layer()}


def build_model(num_classes: int, input_size: int = 224, weights: str | None = "imagenet", dropout: float = 0.3,
                feature_layers: tuple[str, ...] = FEATURE_LAYERS, colour_statistics: bool = True):
    """A Keras model taking RGB pixels in [0, 255] and returning logits (softmax is the runtime's job).

    With colour_statistics the head also reads the crop's colour statistics (colour_statistics_layer).
    """
    import keras
    inputs = keras.Input((input_size, input_size, 3), name="rgb_0_255")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="scale_to_pm1")(inputs)
    backbone = _pooled_features(_backbone(input_size, weights), tuple(feature_layers))
    backbone.trainable = False
    x = backbone(x, training=False)  # BatchNorm stays in inference mode
    if colour_statistics:
        colour = colour_statistics_layer()(name="colour_statistics")(inputs)
        x = keras.layers.Concatenate(name="pooled_and_colour")([x, colour])
    x = keras.layers.Identity(name="pool")(x)  # the head's input: the features training caches
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="wbc_mobilenetv2")


def backbone_of(model):
    """The MobileNetV2 sub-model inside a model built by build_model."""
    import keras
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


def unfreeze_top(model, first_layer: str) -> int:
    """Make the backbone's convolutions trainable from `first_layer` on, BatchNorm frozen; returns layers unfrozen."""
    import keras
    backbone = backbone_of(model)
    backbone.trainable = True
    names = [layer.name for layer in backbone.layers]
    if first_layer not in names:
        raise ValueError(f"no backbone layer named {first_layer!r}; e.g. Conv1, block_13_expand, block_15_expand")
    start = names.index(first_layer)
    unfrozen = 0
    for i, layer in enumerate(backbone.layers):
        layer.trainable = i >= start and not isinstance(layer, keras.layers.BatchNormalization)
        unfrozen += int(layer.trainable and bool(layer.weights))
    return unfrozen


def _rotation_layers():
    """Keras layers that stack the four 90-degree rotations on the batch axis and average them back."""
    import keras
    from keras import ops

    class RotationViews(keras.layers.Layer):
        """(B,S,S,3) -> (views*B,S,S,3): the input rotated by 0, 90, 180, 270 degrees."""

        def __init__(self, views: int, **kwargs):
            super().__init__(**kwargs)
            self.views = views

        def call(self, x):
            out, turned = [x], x
            for _ in range(self.views - 1):
                turned = ops.flip(ops.transpose(turned, (0, 2, 1, 3)), axis=1)
                out.append(turned)
            return ops.concatenate(out, axis=0)

    class AverageViews(keras.layers.Layer):
        """(views*B,C) logits -> (B,C): the mean over views."""

        def __init__(self, views: int, **kwargs):
            super().__init__(**kwargs)
            self.views = views

        def call(self, logits):
            return ops.mean(ops.reshape(logits, (self.views, -1, logits.shape[-1])), axis=0)

    return RotationViews, AverageViews


def with_rotation_views(model, views: int):
    """The deployed classifier: mean logits over `views` rotations of the crop (1 = the model itself).

    Cells have no orientation, yet a CNN's answer changes with it; averaging the four
    rotations inside the graph makes the answer orientation-free on every runtime.
    """
    if views == 1:
        return model
    if views not in (2, 4):
        raise ValueError("views must be 1, 2 or 4")
    import keras
    rotation_views, average_views = _rotation_layers()
    inputs = keras.Input(model.input_shape[1:], name="rgb_0_255")
    logits = average_views(views, name="average_views")(model(rotation_views(views, name="rotation_views")(inputs)))
    return keras.Model(inputs, logits, name=f"{model.name}_x{views}")


class ModelLoadError(ValueError):
    """A run's model.keras cannot be loaded or does not fit its metadata; the message says why."""


def load_run_model(run_dir: Path, input_size: int, classes: int):
    """The run's model.keras, checked to take (S,S,3) and give one output per class."""
    import keras
    path = Path(run_dir) / "model.keras"
    if not path.is_file():
        raise ModelLoadError(f"{run_dir} has no model.keras")
    try:
        model = keras.saving.load_model(path, compile=False, custom_objects=custom_objects())
    except Exception as exc:  # keras raises many types for a bad archive
        raise ModelLoadError(f"{path}: Keras cannot load it: {exc}") from exc
    if tuple(model.input_shape[1:]) != (input_size, input_size, 3):
        raise ModelLoadError(f"{path}: input shape {model.input_shape} but metadata input_size is {input_size}")
    if model.output_shape[-1] != classes:
        raise ModelLoadError(f"{path}: {model.output_shape[-1]} outputs but {classes} labels")
    return model


def fold_affine_input(kernel: np.ndarray, bias: np.ndarray, gain: np.ndarray,
                      offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense weights on raw features x equal to (kernel, bias) on gain * x + offset: no extra op in the graph."""
    return (kernel * gain[:, None]).astype(np.float32), (bias + offset @ kernel).astype(np.float32)
