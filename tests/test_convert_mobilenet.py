"""Conversion of the production layout (build_model's MobileNetV2, tiny): what stays float, what is folded."""
import json

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from conftest import LABELS, tiny_metadata  # noqa: E402
from convert_helpers import assets  # noqa: E402

SIZE = 32


def _run_folder(tmp_path_factory, colour_statistics: bool):
    import keras
    from network.model import build_model
    keras.utils.set_random_seed(0)
    run = tmp_path_factory.mktemp("mobilenet_run")
    build_model(len(LABELS), input_size=SIZE, weights=None, colour_statistics=colour_statistics).save(run / "model.keras")
    (run / "metadata.json").write_text(json.dumps(tiny_metadata(LABELS, SIZE)))
    return run


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    return _run_folder(tmp_path_factory, colour_statistics=True)


@pytest.fixture(scope="module")
def run_folder_backbone_only(tmp_path_factory):
    return _run_folder(tmp_path_factory, colour_statistics=False)


def convert(run, tmp_path_factory, *options) -> tuple[dict, list[tuple[str, str]]]:
    """Convert with `hemato convert`; returns the file's metadata and (op, output dtype) per op."""
    from edge_app.core.metadata import read_model_metadata
    from edge_app.core.model import interpreter_class
    from hemato.cli import main as hemato
    out = tmp_path_factory.mktemp("converted") / "model_int8.tflite"
    rc = hemato(["convert", str(run), "--quant", "int8", "--calib", str(assets(tmp_path_factory)["train"]),
                 "--calib-count", "16", "--out", str(out), *options])
    assert rc == 0
    interpreter = interpreter_class()[0](model_path=str(out))
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = [(op["op_name"], np.dtype(tensors[op["outputs"][0]]["dtype"]).name) for op in interpreter._get_ops_details()]
    return read_model_metadata(out), ops


def test_full_int8_reads_raw_pixels_without_a_quantised_rescaling(run_folder_backbone_only, tmp_path_factory):
    meta, ops = convert(run_folder_backbone_only, tmp_path_factory)
    assert meta["input_scaling"] == "folded into the first convolution"
    rotations = ("QUANTIZE", "TRANSPOSE", "REVERSE_V2", "CONCATENATION")
    first_compute = next(name for name, _ in ops if name not in rotations)
    assert first_compute.startswith("PAD"), ops[:8]
    assert not any(name in ("MUL", "ADD") for name, _ in ops[:10]), ops[:10]


def test_float_stem_keeps_the_stem_and_the_head_float(run_folder, tmp_path_factory):
    meta, ops = convert(run_folder, tmp_path_factory, "--float-stem")
    assert meta["float_ops"] == ["MEAN", "CONCATENATION", "FULLY_CONNECTED"]
    assert "input_scaling" not in meta
    head = [name for name, dtype in ops if name in meta["float_ops"] and dtype == "float32"]
    assert {"MEAN", "CONCATENATION", "FULLY_CONNECTED"} <= set(head)
    assert not [name for name, dtype in ops if name in meta["float_ops"] and dtype != "float32"]
    assert sum(1 for name, dtype in ops if name == "CONV_2D" and dtype == "int8") > 10
    assert ops[0][1] == "float32"  # the stem's first ops run in float
    colour = [(name, dtype) for name, dtype in ops if name in ("ABS", "SQRT")]  # only the colour statistics use them
    assert {name for name, _ in colour} == {"ABS", "SQRT"}
    assert all(dtype == "float32" for _, dtype in colour), colour  # the colour statistics stay float


def _logits(path, crops) -> np.ndarray:
    """The file's output for each crop."""
    from edge_app.core.model import interpreter_class
    interpreter = interpreter_class()[0](model_path=str(path))
    interpreter.allocate_tensors()
    rows = []
    for crop in crops:
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], crop[None].astype(np.float32))
        interpreter.invoke()
        rows.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0])
    return np.array(rows)


@pytest.mark.parametrize("variant", ["int8", "float16"])
def test_the_pooled_features_are_corrected_in_the_head(variant, run_folder, tmp_path_factory):
    """The per-channel correction brings int8's (float stem) logits closer to float32's; the backbone is
    unchanged. (This tiny random network's float16 logits are already within ~1e-5 of float32's, too close
    to improve on: there the correction must change the head without moving them away.)"""
    from convert.calibration import build_calibration_set
    from convert.feature_correction import head_inputs
    from edge_app.core.metadata import read_model_metadata
    from edge_app.core.vision import CropSettings
    from hemato.cli import main as hemato
    train = assets(tmp_path_factory)["train"]
    out = tmp_path_factory.mktemp("corrected")
    common = ["--quant", variant, "--calib", str(train), "--calib-count", "16",
              *(["--float-stem"] if variant == "int8" else [])]
    # float16 uses its calibration crops for nothing else: without the correction it takes none
    plain = [*common, "--no-feature-correction"] if variant == "int8" else ["--quant", variant]
    assert hemato(["convert", str(run_folder), "--quant", "float32", "--out", str(out / "f32.tflite")]) == 0
    assert hemato(["convert", str(run_folder), *plain, "--out", str(out / "plain.tflite")]) == 0
    assert hemato(["convert", str(run_folder), *common, "--out", str(out / "corrected.tflite")]) == 0
    corrected = read_model_metadata(out / "corrected.tflite")
    assert corrected["feature_correction"]["crops"] == 16
    assert corrected["feature_correction"]["fitted"].startswith(variant)
    assert corrected["calibration"]["count"] == 16  # which crops it was fitted on
    assert "feature_correction" not in read_model_metadata(out / "plain.tflite")
    crops = build_calibration_set(train, CropSettings(input_size=SIZE), 16, 0).crops
    reference = _logits(out / "f32.tflite", crops)
    logits = {name: _logits(out / f"{name}.tflite", crops) for name in ("plain", "corrected")}
    error = {name: np.abs(value - reference).mean() for name, value in logits.items()}
    if variant == "int8":
        assert error["corrected"] < error["plain"], error
    else:
        assert not np.array_equal(logits["corrected"], logits["plain"])
        assert error["corrected"] < 1.05 * error["plain"], error
    np.testing.assert_allclose(head_inputs((out / "corrected.tflite").read_bytes(), crops[:4]),
                               head_inputs((out / "plain.tflite").read_bytes(), crops[:4]), atol=1e-5)
