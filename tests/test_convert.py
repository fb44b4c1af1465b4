"""hemato convert: the four variants of a trained run load in edge_app, keep their metadata, and int8 agrees."""
import hashlib
import json

import numpy as np
import pytest

from conftest import LABELS, make_smear
from convert.calibration import stratified_order
from convert_helpers import INPUT_SIZE, STAINS, assets, converted, crops_of
from edge_app.core.metadata import read_model_metadata
from edge_app.core.model import Classifier
from edge_app.core.pipeline import classify_frame
from hemato.cli import main as hemato

VARIANTS = ["float32", "float16", "dynamic", "int8"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return {v: converted(tmp_path_factory, v) for v in VARIANTS}


def test_every_variant_classifies_a_frame_through_edge_app(models):
    frame = make_smear(cells=[(160, 120, 28)], seed=7, nucleus_bgr=STAINS["MONOCYTE"])
    for variant, path in models.items():
        clf = Classifier(path, threads=1)
        expected_io = ("uint8", "float32") if variant == "int8" else ("float32", "float32")
        assert (clf.input_dtype, clf.output_dtype) == expected_io, variant
        cells = classify_frame(clf, frame).cells
        assert len(cells) == 1, variant
        assert cells[0].probabilities.sum() == pytest.approx(1.0)
        assert cells[0].predicted == "MONOCYTE", variant


def test_metadata_survives_conversion(models, tmp_path_factory):
    run = assets(tmp_path_factory)["run"]
    run_meta = json.loads((run / "metadata.json").read_text())
    sha = hashlib.sha256((run / "model.keras").read_bytes()).hexdigest()
    for variant, path in models.items():
        meta = read_model_metadata(path)  # pure Python, no TensorFlow
        assert {k: meta[k] for k in run_meta} == run_meta, variant
        assert meta["variant"] == variant and meta["source_sha256"] == sha
        assert meta["io"] == ({"input": "uint8", "output": "float32"} if variant == "int8"
                              else {"input": "float32", "output": "float32"})
        assert ("calibration" in meta) == (variant == "int8")
    calib = read_model_metadata(models["int8"])["calibration"]
    assert calib["count"] == 60 and calib["folders"] == [str(assets(tmp_path_factory)["train"])]
    assert calib["per_class"] == {label: 15 for label in LABELS}  # stratified


def test_int8_agrees_with_float_on_generated_images(models, tmp_path_factory):
    crops, truth = crops_of(assets(tmp_path_factory)["test"])
    ref, int8 = Classifier(models["float32"], threads=1), Classifier(models["int8"], threads=1)
    p_ref = np.array([ref.predict(c) for c in crops.astype(np.uint8)])
    p_int8 = np.array([int8.predict(c) for c in crops.astype(np.uint8)])
    assert (p_ref.argmax(1) == truth).mean() >= 0.95  # the tiny model did learn the stains
    assert (p_int8.argmax(1) == p_ref.argmax(1)).all()
    assert np.abs(p_int8 - p_ref).mean() < 0.01


def test_int8_io_types_change_only_the_boundary(models, tmp_path_factory):
    crops, _ = crops_of(assets(tmp_path_factory)["test"])
    default = Classifier(models["int8"], threads=1)
    other = Classifier(converted(tmp_path_factory, "int8", "int8", "uint8"), threads=1)
    assert (other.input_dtype, other.output_dtype) == ("int8", "uint8")
    for crop in crops[:10].astype(np.uint8):
        np.testing.assert_allclose(other.raw_outputs(crop), default.raw_outputs(crop), atol=1e-6)


def test_cli_int8_with_small_stratified_calibration(tmp_path, tmp_path_factory):
    a = assets(tmp_path_factory)
    out = tmp_path / "wbc_int8.tflite"
    rc = hemato(["convert", str(a["run"]), "--quant", "int8", "--calib", str(a["train"]),
                 "--calib-count", "8", "--out", str(out)])
    assert rc == 0
    meta = read_model_metadata(out)
    assert meta["calibration"]["count"] == 8
    assert meta["calibration"]["per_class"] == {label: 2 for label in LABELS}
    assert meta["input_size"] == INPUT_SIZE
    assert meta["bias_corrected_layers"] == 1  # the tiny model's one convolution


def test_dynamic_with_calib_is_bias_corrected_and_without_is_not(tmp_path, tmp_path_factory):
    a = assets(tmp_path_factory)
    for calib in ([], ["--calib", str(a["train"]), "--calib-count", "8"]):
        out = tmp_path / f"wbc_dynamic_{len(calib)}.tflite"
        assert hemato(["convert", str(a["run"]), "--quant", "dynamic", *calib, "--out", str(out)]) == 0
        assert read_model_metadata(out).get("bias_corrected_layers") == (1 if calib else None)
        assert "calibration" not in read_model_metadata(out)  # dynamic range has no activation calibration


def test_stratified_order_interleaves_classes_reproducibly(tmp_path):
    pairs = [(tmp_path / f"{c}{i}.png", c) for c in "ABC" for i in range(4 if c != "C" else 1)]
    order = stratified_order(pairs, seed=0)
    assert [label for _, label in order[:3]] == ["A", "B", "C"]
    assert sorted(order) == sorted(pairs) and order == stratified_order(pairs, seed=0)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_calibration_folder_without_images_is_an_error(tmp_path, tmp_path_factory, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc = hemato(["convert", str(assets(tmp_path_factory)["run"]), "--quant", "int8", "--calib", str(empty),
                 "--out", str(tmp_path / "m.tflite")])
    assert rc == 2
    assert "no images in calibration folder" in _one_line_error(capsys)


def test_calibration_folder_without_cells_is_an_error(tmp_path, tmp_path_factory, capsys):
    import cv2
    blank = tmp_path / "blank"
    blank.mkdir()
    cv2.imwrite(str(blank / "x.png"), make_smear(cells=[]))
    rc = hemato(["convert", str(assets(tmp_path_factory)["run"]), "--quant", "int8", "--calib", str(blank),
                 "--out", str(tmp_path / "m.tflite")])
    assert rc == 2
    err = _one_line_error(capsys)
    assert "no usable calibration image" in err and str(blank) in err


@pytest.mark.parametrize("problem", ["no model.keras", "int8 without --calib", "--io on float32",
                                     "float16 --calib without its correction"])
def test_run_folder_and_option_errors(problem, tmp_path, tmp_path_factory, capsys):
    run = assets(tmp_path_factory)["run"]
    args = {"no model.keras": [str(tmp_path), "--quant", "float32"],
            "int8 without --calib": [str(run), "--quant", "int8"],
            "--io on float32": [str(run), "--quant", "float32", "--io", "int8"],
            "float16 --calib without its correction": [str(run), "--quant", "float16", "--calib", str(tmp_path),
                                                       "--no-feature-correction"]}[problem]
    if problem == "no model.keras":
        (tmp_path / "metadata.json").write_text((run / "metadata.json").read_text())
    assert hemato(["convert", *args, "--out", str(tmp_path / "m.tflite")]) == 2
    assert "error" in _one_line_error(capsys)


def _run_with_validation(tmp_path, tmp_path_factory, temperature: float) -> tuple:
    """A copy of the tiny run whose metadata has `temperature` and whose splits.csv lists validation images."""
    import csv
    import shutil
    from edge_app.core.dataset import labelled_images
    a = assets(tmp_path_factory)
    run = tmp_path / "run"
    shutil.copytree(a["run"], run)
    meta = json.loads((run / "metadata.json").read_text())
    (run / "metadata.json").write_text(json.dumps({**meta, "temperature": temperature, "min_confidence": 0.5}))
    images = labelled_images(a["test"])
    with open(run / "splits.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filepath", "label", "split", "group"])
        writer.writerows([str(path), label, "val", f"g{i % 7}"] for i, (path, label) in enumerate(images))
    return run, images


def test_conversion_refits_temperature_and_threshold_on_the_files_own_validation_outputs(tmp_path, tmp_path_factory):
    from evaluation.calibration import fit_calibration
    run, images = _run_with_validation(tmp_path, tmp_path_factory, temperature=5.0)
    out = tmp_path / "refit.tflite"
    assert hemato(["convert", str(run), "--quant", "float32", "--out", str(out)]) == 0
    meta = read_model_metadata(out)
    clf = Classifier(out, threads=1)
    crops, y = crops_of(assets(tmp_path_factory)["test"])  # the same images, in the same order
    logits = np.stack([clf.raw_outputs(crop) for crop in crops.astype(np.uint8)])
    groups = np.array([f"g{i % 7}" for i in range(len(images))])
    temperature, threshold = fit_calibration(logits, y, groups)
    assert meta["temperature"] == pytest.approx(temperature, abs=1e-4) and meta["temperature"] != 5.0
    assert meta["min_confidence"] == pytest.approx(threshold, abs=1e-4)
    assert meta["training_calibration"] == {"temperature": 5.0, "min_confidence": 0.5}
    assert meta["confidence_calibration"]["cells"] == len(images)


def test_keep_calibration_leaves_the_runs_temperature(tmp_path, tmp_path_factory):
    run, _ = _run_with_validation(tmp_path, tmp_path_factory, temperature=5.0)
    out = tmp_path / "kept.tflite"
    assert hemato(["convert", str(run), "--quant", "float32", "--out", str(out), "--keep-calibration"]) == 0
    meta = read_model_metadata(out)
    assert meta["temperature"] == 5.0 and "confidence_calibration" not in meta


def test_missing_validation_images_are_a_clear_error(tmp_path, tmp_path_factory, capsys):
    run, _ = _run_with_validation(tmp_path, tmp_path_factory, temperature=1.0)
    (run / "splits.csv").write_text("filepath,label,split,group\nnowhere/cell.png,MONOCYTE,val,g0\n")
    assert hemato(["convert", str(run), "--quant", "float32", "--out", str(tmp_path / "x.tflite")]) == 2
    err = capsys.readouterr().err
    assert "validation images" in err and "nowhere/cell.png" in err and "--keep-calibration" in err


def test_calibration_covers_every_laboratory_and_class(tmp_path):
    import cv2

    from conftest import make_smear
    from convert.calibration import build_calibration_set
    from edge_app.core.vision import CropSettings
    folders = []
    for lab, classes in (("lab-a", ["A", "B"]), ("lab-b", ["A", "B", "C"])):
        for c in classes:
            (tmp_path / lab / c).mkdir(parents=True)
            for i in range(6):
                cv2.imwrite(str(tmp_path / lab / c / f"{i}.png"), make_smear(seed=i + 10 * len(c)))
        folders.append(tmp_path / lab)
    calib = build_calibration_set(folders, CropSettings(input_size=32), count=10, progress=lambda _: None)
    assert calib.per_class == {"lab-a/A": 2, "lab-a/B": 2, "lab-b/A": 2, "lab-b/B": 2, "lab-b/C": 2}
    assert calib.info()["folders"] == [str(f) for f in folders]
