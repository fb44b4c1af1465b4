"""Turn a training run folder (model.keras + metadata.json) into a TFLite file that carries its metadata.

int8 I/O defaults to uint8 in (the crop's own type, exact) and float32 out: every I/O pair gives the same
dequantised logits (test_int8_io_types_change_only_the_boundary), float out needs no zero point.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np

from convert.bias_correction import correct_for_int8
from convert.feature_correction import fit_channel_lines, head_inputs
from convert.calibration import CalibrationSet
from convert.input_fold import fold_input_scaling
from convert.metadata_writer import embed_metadata
from convert.recalibrate import refit, validation_images
from edge_app.core.vision import CropSettings
from network.model import fold_affine_input, load_run_model, with_rotation_views
from network.tflite import run_converter, tflite_converter

VARIANTS = ("float32", "float16", "dynamic", "int8")
# Layers kept in float in the int8 variant ("float stem"): the pixel scaling, Conv1 and the first
# bottleneck. Quantising them is where this backbone loses its answer (chosen on validation, see docs/experiments/).
FLOAT_STEM_LAYERS = ("scale_to_pm1", "/Conv1", "expanded_conv_", "colour_statistics")
# With the float stem the head's ops stay float too: int8 pooled features and logits flip close calls,
# and these ops cost next to nothing.
FLOAT_HEAD_OPS = ("MEAN", "CONCATENATION", "FULLY_CONNECTED")
IO_TYPES = ("uint8", "int8", "float32")


class ConversionError(ValueError):
    """The run folder or the options cannot give a model; the message says what to fix."""


def read_run_metadata(run_dir: Path) -> dict[str, Any]:
    """metadata.json of a run folder (which must also hold model.keras), checked against the training contract."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConversionError(f"run folder not found: {run_dir}")
    meta_path = run_dir / "metadata.json"
    if not meta_path.is_file():
        raise ConversionError(f"{run_dir} has no metadata.json (labels, input size, crop settings)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{meta_path} is not valid JSON: {exc}") from exc
    labels = meta.get("labels")
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) and x for x in labels) \
            or len(set(labels)) != len(labels):
        raise ConversionError(f"{meta_path}: 'labels' must be a list of at least two unique names")
    if not isinstance(meta.get("input_size"), int) or meta["input_size"] < 8:
        raise ConversionError(f"{meta_path}: 'input_size' must be an integer (pixels)")
    if meta.get("output", "logits") not in ("logits", "probabilities"):
        raise ConversionError(f"{meta_path}: 'output' must be 'logits' or 'probabilities'")
    if not isinstance(meta.get("crop", {}), dict):
        raise ConversionError(f"{meta_path}: 'crop' must be a dict of CropSettings")
    if meta.get("temperature") is None:
        meta["temperature"] = 1.0
    if not isinstance(meta["temperature"], (int, float)) or meta["temperature"] <= 0:
        raise ConversionError(f"{meta_path}: 'temperature' must be a positive number")
    threshold = meta.get("min_confidence")
    if threshold is not None and (not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1):
        raise ConversionError(f"{meta_path}: 'min_confidence' must be null or a number in [0, 1]")
    if not (run_dir / "model.keras").is_file():
        raise ConversionError(f"{run_dir} has no model.keras")
    return meta


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_keras(run_dir: Path, meta: dict[str, Any]):
    """The run's model.keras (network.load_run_model), checked against its metadata."""
    return load_run_model(run_dir, meta["input_size"], len(meta["labels"]))


def _stem_tensor_names(tflite_bytes: bytes, layers: tuple[str, ...]) -> list[str]:
    """Output tensors of the stem's ops in a quantised model, named as the quantisation debugger wants."""
    import tensorflow as tf
    interpreter = tf.lite.Interpreter(model_content=tflite_bytes)
    names = [t["name"] for t in interpreter.get_tensor_details()]
    return [n for n in names if any(key in n.split(";")[0] for key in layers)]


def _int8_with_float_stem(converter, calibration: CalibrationSet, layers: tuple[str, ...]) -> bytes:
    """Full-integer model except the stem's ops and FLOAT_HEAD_OPS, which stay float (float32 I/O)."""
    import tensorflow as tf
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.representative_dataset = lambda: itertools.islice(calibration.batches(), 2)
    # a full-int8 model only to name the stem's tensors
    stem = _stem_tensor_names(bytes(converter.convert()), layers)
    converter.representative_dataset = calibration.batches
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=stem,
                                                            denylisted_ops=list(FLOAT_HEAD_OPS))
    debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=calibration.batches,
                                                        debug_options=options)
    return bytes(debugger.get_nondebug_quantized_model())


def convert_model(model, variant: str, input_size: int, calibration: CalibrationSet | None = None,
                  io_input: str = "uint8", io_output: str = "float32", float_stem: bool = False) -> bytes:
    """TFLite flatbuffer of a Keras model for one variant (int8 needs the calibration set).

    float_stem (int8 only) keeps FLOAT_STEM_LAYERS in float; the model then has float I/O.
    """
    import tensorflow as tf
    if variant not in VARIANTS:
        raise ConversionError(f"unknown variant {variant!r}: choose from {', '.join(VARIANTS)}")
    converter = tflite_converter(model, input_size)
    if variant != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if variant == "int8":
        if calibration is None:
            raise ConversionError("int8 needs calibration images: pass --calib FOLDER")
        for kind in (io_input, io_output):
            if kind not in IO_TYPES:
                raise ConversionError(f"unknown I/O type {kind!r}: choose from {', '.join(IO_TYPES)}")
        converter.representative_dataset = calibration.batches
        if float_stem:
            with contextlib.redirect_stdout(StringIO()):
                return _int8_with_float_stem(converter, calibration, FLOAT_STEM_LAYERS)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = getattr(tf, io_input)
        converter.inference_output_type = getattr(tf, io_output)
    return run_converter(converter)


def tflite_metadata(run_meta: dict[str, Any], variant: str, io_dtypes: dict[str, str], source_sha256: str,
                    calibration: CalibrationSet | None) -> dict[str, Any]:
    """The run's metadata.json plus what conversion adds (variant, I/O types, source, calibration)."""
    meta = {**run_meta, "crop": CropSettings.from_metadata(run_meta).to_dict(), "variant": variant, "io": io_dtypes,
            "source_sha256": source_sha256}
    meta.setdefault("output", "logits")
    if calibration is not None:
        meta["calibration"] = calibration.info()
    return meta


def io_types(variant: str, io_input: str, io_output: str) -> dict[str, str]:
    """The I/O dtypes a variant ends up with (only int8 can have integer I/O)."""
    return {"input": io_input, "output": io_output} if variant == "int8" else \
        {"input": "float32", "output": "float32"}


def _dense_head(model):
    """The model's last Dense layer (build_model's "logits"), or None: where the feature correction folds in."""
    import keras
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    return dense[-1] if dense else None


def stays_float(layer_name: str, layers: tuple[str, ...] = FLOAT_STEM_LAYERS) -> bool:
    """Whether a Keras layer of the backbone is one of `layers` (kept float by --float-stem)."""
    return any(layer_name.startswith(key.lstrip("/")) for key in layers)


def convert_run(run_dir: Path, variant: str, out: Path, calibration: CalibrationSet | None = None,
                io_input: str = "uint8", io_output: str = "float32", float_stem: bool = False,
                refit_calibration: bool = True, feature_correction: bool = True) -> dict[str, Any]:
    """Convert a run folder to `out` and return the metadata written into the file.

    int8 with a float stem, and float16 given calibration crops, also correct the backbone's per-channel
    error on the pooled features in the float head (convert.feature_correction), unless
    feature_correction is False: float16's rounding moves whole channels as int8's does, if less.

    With refit_calibration and a run whose splits.csv has validation rows, the file's temperature and
    threshold are refitted on its own outputs (convert.recalibrate); the run's stay in the metadata.
    A cross-validated run (training.ensemble) has no validation rows: its files keep the run's values.
    """
    run_dir, out = Path(run_dir), Path(out)
    meta = read_run_metadata(run_dir)
    model = load_keras(run_dir, meta)
    float_stem = float_stem and variant == "int8"
    corrected = 0
    if variant in ("int8", "dynamic") and calibration is not None:
        corrected = correct_for_int8(model, np.stack(calibration.crops),
                                     keep_float=stays_float if float_stem
                                     else lambda name: False)
    folded = fold_input_scaling(model) if variant == "int8" and not float_stem else None
    if folded is not None:
        model = folded
    head = _dense_head(model)
    views = int(meta.get("views", 1))
    model = with_rotation_views(model, views)
    data = convert_model(model, variant, meta["input_size"], calibration, io_input, io_output, float_stem)
    corrected_channels = 0
    corrects_features = float_stem or variant == "float16"
    if corrects_features and feature_correction and calibration is not None and head is not None:
        # the float32 reference from a fresh copy: correct_for_int8 may have changed this model's backbone
        reference = convert_model(with_rotation_views(load_keras(run_dir, meta), views), "float32", meta["input_size"])
        gain, offset = fit_channel_lines(head_inputs(data, calibration.crops), head_inputs(reference, calibration.crops))
        head.set_weights(list(fold_affine_input(*head.get_weights(), gain, offset)))
        # the same backbone: only the float head changed
        data = convert_model(model, variant, meta["input_size"], calibration, io_input, io_output, float_stem)
        corrected_channels = len(gain)
    io = {"input": "float32", "output": "float32"} if float_stem else io_types(variant, io_input, io_output)
    written = tflite_metadata(meta, variant, io, file_sha256(run_dir / "model.keras"),
                              calibration if variant == "int8" or corrected_channels else None)
    if float_stem:
        written["float_layers"] = list(FLOAT_STEM_LAYERS)
        written["float_ops"] = list(FLOAT_HEAD_OPS)
    if corrected:
        written["bias_corrected_layers"] = corrected
    if corrected_channels:
        written["feature_correction"] = {"channels": corrected_channels, "crops": len(calibration.crops),
                                         "fitted": f"{variant} -> float32 pooled features, per channel"}
    if folded is not None:
        written["input_scaling"] = "folded into the first convolution"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(embed_metadata(data, written))
    images = validation_images(run_dir) if refit_calibration else []
    if images:
        fit = refit(out, images)
        written["training_calibration"] = {"temperature": meta["temperature"],
                                           "min_confidence": meta.get("min_confidence")}
        written.update(temperature=fit["temperature"], min_confidence=fit["min_confidence"],
                       confidence_calibration=fit)
        out.write_bytes(embed_metadata(data, written))
    return written
