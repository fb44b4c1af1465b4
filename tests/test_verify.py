"""hemato verify: the int8 parity gate passes for a good conversion and fails for a badly calibrated one."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from conftest import build_tiny_keras, export_float_tflite, make_smear
from convert_helpers import INPUT_SIZE, assets, broken_int8, converted
from hemato.cli import main as hemato


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    a = assets(tmp_path_factory)
    return {"float32": converted(tmp_path_factory, "float32"), "int8": converted(tmp_path_factory, "int8"),
            "test": a["test"]}


def test_parity_gate_passes_for_int8_conversion(setup, tmp_path, capsys):
    """The CI parity check: a regression in int8 conversion makes this fail."""
    report_path, md_path = tmp_path / "verify.json", tmp_path / "verify.md"
    rc = hemato(["verify", str(setup["float32"]), str(setup["int8"]), "--data", str(setup["test"]),
                 "--json", str(report_path), "--markdown", str(md_path), "--threads", "1"])
    assert rc == 0
    report = json.loads(report_path.read_text())
    ref, int8 = report["models"]
    comparison = report["comparisons"][0]
    assert report["passed"] and report["images"] == 60
    assert comparison["agreement"] >= 0.99 and comparison["accuracy_drop_pp"] <= 0.5
    assert comparison["mean_abs_prob_diff"] < 0.01 and comparison["disagreements"] == []
    assert ref["accuracy"] >= 0.95 and set(ref["per_class"]) == set(int8["per_class"])
    assert int8["io"] == {"input": "uint8", "output": "float32"} and int8["size_bytes"] > 0
    assert ref["mean_invoke_ms"] > 0
    out = capsys.readouterr().out
    assert md_path.read_text() == out and "| tiny_int8" in out and "agreement" in out


def test_verify_fails_for_badly_calibrated_int8(setup, tmp_path_factory, tmp_path, capsys):
    broken = broken_int8(tmp_path_factory)
    report_path = tmp_path / "verify.json"
    rc = hemato(["verify", str(setup["float32"]), str(broken), "--data", str(setup["test"]),
                 "--json", str(report_path), "--threads", "1"])
    assert rc == 1
    comparison = json.loads(report_path.read_text())["comparisons"][0]
    assert not comparison["passed"] and comparison["agreement"] < 0.99
    disagreement = comparison["disagreements"][0]
    assert Path(disagreement["path"]).is_file()
    assert set(disagreement) == {"path", "label", "reference", "candidate"}
    captured = capsys.readouterr()
    assert "FAILED" in captured.err and disagreement["path"] in captured.out


def test_several_candidates_against_one_reference(setup, tmp_path_factory, tmp_path):
    candidates = [converted(tmp_path_factory, v) for v in ("float16", "dynamic")] + [setup["int8"]]
    report_path = tmp_path / "verify.json"
    rc = hemato(["verify", str(setup["float32"]), *map(str, candidates), "--data", str(setup["test"]),
                 "--json", str(report_path), "--threads", "1"])
    assert rc == 0
    report = json.loads(report_path.read_text())
    assert [c["candidate"] for c in report["comparisons"]] == [p.name for p in candidates]


def test_image_without_cell_counts_wrong_for_both(setup, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(setup["test"], data)
    cv2.imwrite(str(data / "MONOCYTE" / "empty.png"), make_smear(cells=[]))
    report_path = tmp_path / "verify.json"
    hemato(["verify", str(setup["float32"]), str(setup["int8"]), "--data", str(data),
            "--json", str(report_path), "--threads", "1"])
    report = json.loads(report_path.read_text())
    assert report["images"] == 61
    for model in report["models"]:
        assert model["no_cell"] == 1 and model["accuracy"] == model["correct"] / 61 and model["correct"] <= 60
    assert report["comparisons"][0]["compared"] == 60


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_a_file_that_is_not_tflite_is_an_error(setup, tmp_path, capsys):
    junk = tmp_path / "model.tflite"
    junk.write_bytes(b"PK\x03\x04 this is a zip, not a flatbuffer")
    assert hemato(["verify", str(setup["float32"]), str(junk), "--data", str(setup["test"])]) == 2
    err = _error(capsys)
    assert str(junk) in err and "not a TFLite model" in err


def test_label_sets_that_differ_are_an_error(setup, tmp_path, capsys):
    labels = ["BASOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"]
    other = export_float_tflite(build_tiny_keras(labels, INPUT_SIZE), tmp_path / "other.tflite", labels, INPUT_SIZE)
    assert hemato(["verify", str(setup["float32"]), str(other), "--data", str(setup["test"])]) == 2
    assert "label sets differ" in _error(capsys)


def test_data_class_unknown_to_the_models_is_an_error(setup, tmp_path, capsys):
    (tmp_path / "BASOPHIL").mkdir()
    cv2.imwrite(str(tmp_path / "BASOPHIL" / "a.png"), make_smear())
    assert hemato(["verify", str(setup["float32"]), str(setup["int8"]), "--data", str(tmp_path)]) == 2
    assert "BASOPHIL" in _error(capsys)


def test_verify_runs_without_tensorflow():
    code = "import sys, evaluation.verify; sys.exit('tensorflow' in sys.modules or 'keras' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0


def test_report_gives_calibration_before_and_after_the_stored_temperature(setup, tmp_path):
    """ECE at temperature 1 and at the stored one, and coverage/accuracy at the stored threshold."""
    from convert.metadata_writer import embed_metadata
    from edge_app.core.metadata import read_model_metadata

    meta = read_model_metadata(setup["float32"]) | {"temperature": 4.0, "min_confidence": 0.9}
    hot = tmp_path / "hot_float32.tflite"
    hot.write_bytes(embed_metadata(setup["float32"].read_bytes(), meta))
    report_path = tmp_path / "verify.json"
    hemato(["verify", str(setup["float32"]), str(hot), "--data", str(setup["test"]), "--json", str(report_path)])
    plain, scaled = (m["calibration"] for m in json.loads(report_path.read_text())["models"])
    assert plain["temperature"] == 1.0 and plain["ece_before"] == pytest.approx(plain["ece_after"])
    assert scaled["ece_before"] == pytest.approx(plain["ece_before"])  # same logits, same raw ECE
    assert scaled["ece_after"] != pytest.approx(scaled["ece_before"])  # a hotter softmax changes it
    assert 0 <= scaled["coverage"] < plain["coverage"] <= 1  # softer probabilities clear 0.9 less often


def _comparison(agreement: float, answered: float | None, floor: float | None, drop: float = 0.0) -> dict:
    return {"agreement": agreement, "agreement_answered": answered, "mirror_agreement": floor,
            "accuracy_drop_pp": drop}


@pytest.mark.parametrize("comparison, reason", [
    (_comparison(0.97, 0.985, 0.95), "answered cells"),   # flips a cell the reference is sure of
    (_comparison(0.94, 1.0, 0.95), "mirrored crops"),     # changes more than mirroring the cell does
    (_comparison(0.99, 1.0, 0.95, drop=0.6), "accuracy drop"),
])
def test_gate_fails_on_each_criterion(comparison, reason):
    from evaluation.verify import apply_gate
    apply_gate(comparison, max_drop_pp=0.5, min_agreement_pct=99.0)
    assert not comparison["passed"] and len(comparison["failures"]) == 1 and reason in comparison["failures"][0]


def test_gate_passes_near_tie_flips_within_the_mirror_floor():
    """A calibrated model's int8 copy may flip close calls, as a mirrored crop does, if sure answers hold."""
    from evaluation.verify import apply_gate
    comparison = _comparison(0.965, 1.0, 0.955)
    apply_gate(comparison, max_drop_pp=0.5, min_agreement_pct=99.0)
    assert comparison["passed"] and comparison["failures"] == []


def test_report_gives_answered_agreement_and_mirror_floor(setup, tmp_path):
    report_path = tmp_path / "verify.json"
    hemato(["verify", str(setup["float32"]), str(setup["int8"]), "--data", str(setup["test"]),
            "--json", str(report_path), "--threads", "1"])
    comparison = json.loads(report_path.read_text())["comparisons"][0]
    assert 0 < comparison["reference_answered"] <= comparison["compared"]
    assert 0.0 <= comparison["agreement_answered"] <= 1.0 and 0.0 <= comparison["mirror_agreement"] <= 1.0


def test_plots_show_each_models_reliability_and_risk_coverage(setup, tmp_path):
    folder = tmp_path / "plots"
    assert hemato(["verify", str(setup["float32"]), str(setup["int8"]), "--data", str(setup["test"]),
                   "--plots", str(folder), "--threads", "1"]) == 0
    for name in ("reliability.png", "risk_coverage.png"):
        image = cv2.imread(str(folder / name))
        assert image is not None and image.shape[0] > 100 and image.std() > 0


def test_cell_bootstrap_resamples_cells_not_images():
    """A class of one right cell with three images and one wrong cell with one: drawing two cells gives
    the wrong one twice a quarter of the time (accuracy 0), drawing four images almost never; a class
    never borrows another's cells; with every cell right the interval is a point."""
    import numpy as np

    from evaluation.cell_interval import cell_bootstrap
    uneven = cell_bootstrap(np.array([1, 1, 1, 0]), np.array(["A"] * 4), np.array([0, 0, 0, 1]), resamples=2000)
    assert uneven["cells"] == 2 and uneven["low"] == 0.0 and uneven["high"] == 1.0
    labels, cells = np.array(["A"] * 4 + ["B"] * 4), np.array([0, 0, 1, 1, 2, 2, 3, 3])
    lone_wrong = cell_bootstrap(np.array([1, 1, 1, 1, 0, 0, 0, 0]), labels, cells, resamples=500)
    assert lone_wrong["cells"] == 4 and lone_wrong["low"] == lone_wrong["high"] == 0.5
    assert cell_bootstrap(np.ones(8), labels, cells, resamples=200)["low"] == 1.0


def test_verify_cells_reports_an_interval_per_model(setup, tmp_path):
    report_path = tmp_path / "verify.json"
    hemato(["verify", str(setup["float32"]), str(setup["int8"]), "--data", str(setup["test"]),
            "--json", str(report_path), "--threads", "1", "--cells"])
    for model in json.loads(report_path.read_text())["models"]:
        interval = model["cell_interval"]
        assert interval["cells"] >= 1 and interval["low"] <= model["accuracy"] <= interval["high"]


def test_a_runs_splits_csv_is_gated_per_source(setup, tmp_path, capsys):
    """--data splits.csv: only its val rows, and each source must pass on its own as well as pooled."""
    import numpy as np
    from edge_app.core.dataset import labelled_images
    empty = tmp_path / "empty.png"  # no cell: the candidates hold no mirrored answer for it
    cv2.imwrite(str(empty), np.full((240, 320, 3), 220, np.uint8))
    rows = ["filepath,label,split,group,source", f"{empty},MONOCYTE,val,g-empty,lab-a"]
    for i, (path, label) in enumerate(labelled_images(setup["test"])):
        split = "train" if i % 5 == 0 else "val"
        rows.append(f"{path},{label},{split},g{i},{'lab-a' if i % 2 else 'lab-b'}")
    splits = tmp_path / "splits.csv"
    splits.write_text("\n".join(rows) + "\n")
    report_path = tmp_path / "verify.json"
    rc = hemato(["verify", str(setup["float32"]), str(setup["int8"]), "--data", str(splits),
                 "--json", str(report_path), "--threads", "1"])
    assert rc == 0
    report = json.loads(report_path.read_text())
    assert report["images"] == 49 and set(report["by_source"]) == {"lab-a", "lab-b"}
    assert sum(part["images"] for part in report["by_source"].values()) == 49
    assert all(c["passed"] for part in report["by_source"].values() for c in part["comparisons"])
    assert "| lab-a | 25 |" in capsys.readouterr().out


def test_a_splits_csv_with_missing_images_is_a_usage_error(setup, tmp_path, capsys):
    splits = tmp_path / "splits.csv"
    splits.write_text("filepath,label,split\nnowhere/cell.png,MONOCYTE,val\n")
    assert hemato(["verify", str(setup["float32"]), str(setup["int8"]), "--data", str(splits)]) == 2
    assert "nowhere/cell.png" in capsys.readouterr().err
