"""Model loading: labels from the file, every quantisation's I/O dequantised, and RGB (not BGR) input."""
from pathlib import Path

import numpy as np
import pytest

from conftest import LABELS, build_tiny_keras, make_smear, tiny_metadata
from edge_app.core.metadata import ModelFileError
from edge_app.core.model import Classifier
from edge_app.core.pipeline import classify_frame
from edge_app.core.vision import CropSettings, crop_for_model, locate_cells

pytestmark = pytest.mark.filterwarnings("ignore:Statistics for quantized inputs:UserWarning")
SIZE = 32


def smear_crops(seeds: range) -> np.ndarray:
    """Model-ready RGB crops of synthetic smears with varied cell sizes and stain."""
    crops = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        nucleus = (int(rng.integers(140, 220)), int(rng.integers(30, 90)), int(rng.integers(80, 160)))
        frame = make_smear(cells=[(160, 120, int(rng.integers(18, 40)))], seed=seed, nucleus_bgr=nucleus)
        box = locate_cells(frame, CropSettings(input_size=SIZE))[0]
        crops.append(crop_for_model(frame, box, SIZE))
    return np.stack(crops)


def convert(model, kind: str) -> bytes:
    """TFLite bytes of the Keras model: float32, float16, dynamic or full-integer (int8/uint8/float I/O)."""
    import tensorflow as tf
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if kind != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if kind == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if kind.startswith("full"):
        calibration = smear_crops(range(100, 140)).astype(np.float32)
        converter.representative_dataset = lambda: ([c[None]] for c in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        io_type = {"full_int8": tf.int8, "full_uint8": tf.uint8, "full_float_io": tf.float32}[kind]
        converter.inference_input_type = converter.inference_output_type = io_type
    return converter.convert()


def save(tmp: Path, name: str, data: bytes, metadata: dict) -> Path:
    from convert.metadata_writer import embed_metadata
    path = tmp / f"{name}.tflite"
    path.write_bytes(embed_metadata(data, metadata))
    return path


VARIANTS = {  # kind -> (input dtype, output dtype)
    "float32": ("float32", "float32"),
    "float16": ("float32", "float32"),
    "dynamic": ("float32", "float32"),
    "full_int8": ("int8", "int8"),
    "full_uint8": ("uint8", "uint8"),
    "full_float_io": ("float32", "float32"),
}


def variant_model():
    """The tiny classifier plus a hidden layer big enough (>1024 weights) that dynamic-range
    quantisation really quantises it (the converter leaves smaller tensors in float)."""
    import keras
    keras.utils.set_random_seed(1)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(256, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(len(LABELS))(x))


@pytest.fixture(scope="module")
def variants(tmp_path_factory) -> dict[str, Path]:
    """The tiny model converted every way the device must handle, with metadata embedded."""
    tmp = tmp_path_factory.mktemp("variants")
    model = variant_model()
    meta = tiny_metadata(LABELS, SIZE)
    return {kind: save(tmp, kind, convert(model, kind), meta) for kind in VARIANTS}


@pytest.mark.parametrize("kind", list(VARIANTS))
def test_variant_io_and_dequantised_outputs_match_float(variants, kind):
    reference = Classifier(variants["float32"], threads=1)
    clf = Classifier(variants[kind], threads=1)
    assert clf.labels == LABELS
    assert (clf.input_dtype, clf.output_dtype) == VARIANTS[kind]
    stored = {np.dtype(t["dtype"]).name for t in clf._interp.get_tensor_details()}
    expected = {"float16": "float16", "dynamic": "int8"}.get(kind, "int8" if kind.startswith("full") else "float32")
    assert expected in stored, (kind, stored)  # the variant really is quantised as named
    crops = smear_crops(range(10))
    ref = np.stack([reference.raw_outputs(c) for c in crops])
    got = np.stack([clf.raw_outputs(c) for c in crops])
    spread = float(ref.max() - ref.min())
    # Full-integer outputs carry 8-bit steps over the logit range; the others are nearly exact.
    tolerance = 0.05 * spread if kind.startswith("full") else 0.02 * spread
    assert np.abs(got - ref).max() <= tolerance, (kind, got - ref)
    probs = np.stack([clf.predict(c) for c in crops])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert np.abs(probs - np.stack([reference.predict(c) for c in crops])).max() < 0.05


def test_full_integer_input_is_quantised_not_cast(variants):
    """A uint8/int8 input must be scale/zero-point mapped: int8 casting of 200 would wrap to -56."""
    clf = Classifier(variants["full_int8"], threads=1)
    scale, zero = clf._in["quantization"]
    from edge_app.core.model import input_value
    q = input_value(np.full((SIZE, SIZE, 3), 200, np.uint8), clf._in)
    assert q.dtype == np.int8
    assert abs((float(q[0, 0, 0]) - zero) * scale - 200) <= scale


def test_labels_and_crop_settings_come_from_the_file(tmp_path):
    import tensorflow as tf
    labels = ["A_CLASS", "B_CLASS", "C_CLASS"]
    meta = tiny_metadata(labels, SIZE)
    meta["crop"]["crop_scale"] = 2.5
    data = tf.lite.TFLiteConverter.from_keras_model(build_tiny_keras(labels, SIZE)).convert()
    clf = Classifier(save(tmp_path, "abc", data, meta), threads=1)
    assert clf.labels == labels
    assert clf.crop_settings.crop_scale == 2.5 and clf.input_size == SIZE


def test_unusable_model_files_raise_a_clear_error(tmp_path, variants):
    import tensorflow as tf
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"this is not a model at all")
    with pytest.raises(ModelFileError, match="not a TFLite model"):
        Classifier(garbage)
    with pytest.raises(ModelFileError, match="not found"):
        Classifier(tmp_path / "missing.tflite")
    bare = tmp_path / "bare.tflite"
    bare.write_bytes(tf.lite.TFLiteConverter.from_keras_model(build_tiny_keras()).convert())
    with pytest.raises(ModelFileError, match="metadata"):
        Classifier(bare)
    data = variants["float32"].read_bytes()
    with pytest.raises(ModelFileError, match="labels"):
        Classifier(save(tmp_path, "three", data, tiny_metadata(LABELS[:3], SIZE)))
    with pytest.raises(ModelFileError, match="input shape"):
        Classifier(save(tmp_path, "size", data, tiny_metadata(LABELS, 64)))


# --- Colour order: OpenCV frames are BGR, the model is trained on RGB. ---

def colour_model(tmp: Path) -> Path:
    """Fixed weights: logit 0 = mean red, logit 1 = mean blue of the RGB input."""
    import keras
    import tensorflow as tf
    inputs = keras.Input((SIZE, SIZE, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    dense = keras.layers.Dense(2)
    outputs = dense(pooled)
    dense.set_weights([np.array([[1, 0], [0, 0], [0, 1]], np.float32) / 25.5, np.zeros(2, np.float32)])
    data = tf.lite.TFLiteConverter.from_keras_model(keras.Model(inputs, outputs)).convert()
    metadata = tiny_metadata(["REDDISH", "BLUISH"], SIZE)
    metadata["crop"]["crop_scale"] = 2.0  # the answer comes from the background around the nucleus
    return save(tmp, "colour", data, metadata)


def coloured_smear(background_bgr, nucleus_bgr) -> np.ndarray:
    frame = np.full((240, 320, 3), background_bgr, np.uint8)
    frame[100:140, 140:180] = nucleus_bgr  # a stained square "nucleus": blue well above green
    return frame


def test_pipeline_feeds_rgb_and_a_swapped_crop_flips_the_answer(tmp_path):
    clf = Classifier(colour_model(tmp_path), threads=1)
    red = coloured_smear((40, 40, 250), (200, 40, 100))     # BGR: red background
    blue = coloured_smear((200, 170, 60), (230, 40, 120))   # BGR: blue-ish background
    for frame, expected, other in ((red, "REDDISH", "BLUISH"), (blue, "BLUISH", "REDDISH")):
        result = classify_frame(clf, frame)
        assert len(result.cells) == 1
        assert result.cells[0].predicted == expected
        crop = crop_for_model(frame, result.cells[0].box, SIZE)
        assert clf.labels[int(np.argmax(clf.predict(crop)))] == expected
        swapped = crop[:, :, ::-1]  # what the model would see if BGR leaked through
        assert clf.labels[int(np.argmax(clf.predict(swapped)))] == other
