"""A Keras model -> TFLite bytes behind a fixed [1,S,S,3] input: the float32 file training's feature
extractor runs, and the converter that `hemato convert` configures for each variant."""
from __future__ import annotations

import contextlib
from io import StringIO


def batch_one(model, input_size: int):
    """The model behind a fixed [1,S,S,3] input, so the TFLite tensors have static shapes."""
    import keras
    inputs = keras.Input((input_size, input_size, 3), batch_size=1, name="image")
    return keras.Model(inputs, model(inputs), name="hemato_edge")


def tflite_converter(model, input_size: int):
    """A TFLiteConverter for the model behind a batch of one, not yet configured (float32)."""
    import tensorflow as tf
    return tf.lite.TFLiteConverter.from_keras_model(batch_one(model, input_size))


def run_converter(converter) -> bytes:
    """The converter's flatbuffer (Keras prints its temporary SavedModel's signature: kept off stdout)."""
    with contextlib.redirect_stdout(StringIO()):
        return bytes(converter.convert())


def float32_tflite(model, input_size: int) -> bytes:
    """The float32 TFLite flatbuffer of a Keras model."""
    return run_converter(tflite_converter(model, input_size))
