"""`hemato adapt`: a head refitted on a new laboratory's cells, without TensorFlow, and its refusals."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import LABELS, make_smear
from convert_helpers import STAINS, converted, make_labelled_folder
from test_no_tensorflow import python_without

# The new laboratory stains eosinophils as the first laboratory stained lymphocytes and the other way round:
# the base model swaps them, the features still tell them apart.
SHIFTED = {**STAINS, "EOSINOPHIL": STAINS["LYMPHOCYTE"], "LYMPHOCYTE": STAINS["EOSINOPHIL"]}


def lab_folder(root: Path, per_class: int, seed: int, stains: dict = SHIFTED) -> Path:
    return make_labelled_folder(root, per_class, seed, stains)


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    return converted(tmp_path_factory, "float32")


def accuracy(model: Path, folder: Path) -> float:
    from edge_app.core.crops import file_cell_crop
    from edge_app.core.dataset import labelled_images
    from edge_app.core.model import Classifier
    classifier = Classifier(model, threads=1)
    right = []
    for path, label in labelled_images(folder):
        crop, _ = file_cell_crop(path, classifier.crop_settings)
        right.append(classifier.labels[int(np.argmax(classifier.predict(crop)))] == label)
    return float(np.mean(right))


def test_adapt_round_trip_without_tensorflow(tmp_path, base_model):
    cells = lab_folder(tmp_path / "cells", per_class=8, seed=5)
    (cells / "MONOCYTE" / "broken.jpg").write_bytes(b"not a jpeg")  # listed, skipped
    cv2.imwrite(str(cells / "MONOCYTE" / "empty.png"), np.full((240, 320, 3), 220, np.uint8))  # no cell
    held_out = lab_folder(tmp_path / "held_out", per_class=10, seed=6)
    out = tmp_path / "models" / "adapted.tflite"
    result = python_without({"tensorflow", "keras"}, tmp_path, f"""
        import sys
        from hemato.cli import main
        status = main(["adapt", {str(cells)!r}, "--model", {str(base_model)!r}, "--out", {str(out)!r},
                       "--threads", "1"])
        print("LEAKED", sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")))
        sys.exit(status)
    """)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "LEAKED []" in result.stdout
    assert "skipped" in result.stderr and "broken.jpg" in result.stderr and "empty.png" in result.stderr
    assert "Cells: EOSINOPHIL 8, LYMPHOCYTE 8, MONOCYTE 8, NEUTROPHIL 8 (2 images skipped)" in result.stdout

    from edge_app.core.metadata import read_model_metadata
    from edge_app.core.tflite_file import read_dense_head
    meta = read_model_metadata(out)
    record = meta["adaptation"]
    assert record["base_file"] == base_model.name
    import hashlib
    assert record["base_sha256"] == hashlib.sha256(base_model.read_bytes()).hexdigest()
    assert record["cells_per_class"] == {label: 8 for label in LABELS}
    assert len(record["date"]) == 10 and 0 <= record["cv_accuracy"] <= 1
    assert meta["labels"] == LABELS and meta["crop"] == read_model_metadata(base_model)["crop"]
    assert meta["temperature"] > 0 and 0 <= meta["min_confidence"] <= 1
    # only the head changed: same size, the rest of the graph byte for byte up to the metadata
    w0, b0 = read_dense_head(base_model.read_bytes())
    w1, b1 = read_dense_head(out.read_bytes())
    assert w1.shape == w0.shape and not np.allclose(w1, w0)
    before, after = accuracy(base_model, held_out), accuracy(out, held_out)
    assert before < 0.8 and after >= before + 0.2, (before, after)
    assert record["cv_accuracy"] > record["base_accuracy_on_these_cells"]
    # the printed calibration says what the file holds
    assert ("was right when held out" in result.stdout) == record["calibration_kept_from_base"]
    assert f"answer threshold {meta['min_confidence']}" in result.stdout


@pytest.mark.parametrize("problem, expected", [
    ("unknown class", "BASOPHIL not a class of this model"),
    ("too few", "too few cells of MONOCYTE 2: give at least 3 of a class, or none"),
    ("one class", "at least two classes need 3 cells or more"),
    ("no images", "no images"),
    ("not reviewed", "no 'reviewed' column"),
    ("too few usable", "after skipping 1 image, too few cells of NEUTROPHIL 2"),
    ("none usable", "no usable cell of NEUTROPHIL is left after skipping 3 images"),
])
def test_refusals_come_before_any_work(problem, expected, tmp_path, base_model, capsys):
    from hemato.cli import main
    cells = tmp_path / "cells"
    if problem == "no images":
        for label in LABELS:
            (cells / label).mkdir(parents=True)
    else:
        lab_folder(cells, per_class=3, seed=1)
    if problem == "unknown class":
        (cells / "BASOPHIL").mkdir()
        cv2.imwrite(str(cells / "BASOPHIL" / "a.png"), make_smear())
    if problem == "too few":
        (cells / "MONOCYTE" / "monocyte_000.png").unlink()
    if problem == "one class":
        for label in LABELS[1:]:
            for path in (cells / label).iterdir():
                path.unlink()
    if problem == "too few usable":
        (cells / "NEUTROPHIL" / "neutrophil_000.png").write_bytes(b"garbage")
    if problem == "none usable":
        for path in (cells / "NEUTROPHIL").iterdir():
            path.write_bytes(b"garbage")
    if problem == "not reviewed":
        cells = tmp_path / "results.csv"
        cells.write_text("source,frame,cell,label,x0,y0,x1,y1\nx.png,0,0,MONOCYTE,0,0,10,10\n")
    out = tmp_path / "adapted.tflite"
    status = main(["adapt", str(cells), "--model", str(base_model), "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 2 and expected in err, err
    assert "features of" not in err  # refused before the backbone ran
    assert not out.exists()


def test_a_class_without_cells_keeps_its_base_row(tmp_path, base_model, capsys):
    """A laboratory with no cells of a class (a rare one) can adapt: that class's dense row stays the base's."""
    from hemato.cli import main
    from edge_app.core.tflite_file import read_dense_head
    cells = lab_folder(tmp_path / "cells", per_class=4, seed=3)
    for path in (cells / "MONOCYTE").iterdir():
        path.unlink()
    (cells / "MONOCYTE").rmdir()
    out = tmp_path / "adapted.tflite"
    assert main(["adapt", str(cells), "--model", str(base_model), "--out", str(out), "--copies", "0"]) == 0
    assert "No cells of MONOCYTE" in capsys.readouterr().out
    from edge_app.core.metadata import read_model_metadata
    from edge_app.core.model import adaptation_note
    meta = read_model_metadata(out)
    assert meta["adaptation"]["kept_from_base"] == ["MONOCYTE"]
    assert "MONOCYTE as in the base" in adaptation_note(meta) and "MONOCYTE 0" not in adaptation_note(meta)
    (w0, b0), (w1, b1) = read_dense_head(base_model.read_bytes()), read_dense_head(out.read_bytes())
    k = LABELS.index("MONOCYTE")
    assert np.array_equal(w1[k], w0[k]) and b1[k] == b0[k]
    assert not np.allclose(np.delete(w1, k, axis=0), np.delete(w0, k, axis=0))


def test_the_fit_does_not_crowd_out_a_class_without_cells():
    """Fitted on three of four classes, the head still gives the fourth class its own samples (the given
    classes are not raised against it)."""
    from edge_app.adapt.fit import fit_head
    rng = np.random.default_rng(0)
    centres = 3.0 * np.eye(4, 6)
    x = np.concatenate([c + rng.normal(0, 1.0, (60, 6)) for c in centres])
    y = np.repeat(np.arange(4), 60)
    w0, b0 = centres.copy(), -0.5 * (centres ** 2).sum(axis=1)  # the base: nearest centre
    given = y != 3
    w, b = fit_head(x[given], y[given], w0, b0, strength=0.1)
    assert np.array_equal(w[3], w0[3]) and b[3] == b0[3]
    base_recall = np.mean((x[~given] @ w0.T + b0).argmax(1) == 3)
    assert np.mean((x[~given] @ w.T + b).argmax(1) == 3) >= base_recall - 0.02


def test_cells_the_base_calls_a_class_given_no_cells_are_counted():
    """Cells of a new stain that the base calls a class given no cells cannot be taught otherwise: counted."""
    from edge_app.adapt.fit import adapt_head
    rng = np.random.default_rng(1)
    centres = 3.0 * np.eye(4, 6)
    w0, b0 = centres.copy(), -0.5 * (centres ** 2).sum(axis=1)
    looks = [centres[3], centres[1], centres[2]]  # class 0 of this laboratory looks like the base's class 3
    x = np.concatenate([c + rng.normal(0, 0.7, (10, 6)) for c in looks])
    y = np.repeat([0, 1, 2], 10)
    head = adapt_head(x, y, np.arange(30), np.ones(30, bool), w0, b0)
    assert np.array_equal(head.weights[3], w0[3])
    assert head.called_kept >= 5


def test_cells_all_right_out_of_fold_keep_the_base_calibration():
    """Perfectly separated cells bound no error rate: the fitted temperature would fall to ~0 and every
    probability round to 1, so the base's temperature and threshold are kept instead."""
    from edge_app.adapt.fit import adapt_head
    rng = np.random.default_rng(2)
    centres = 6.0 * np.eye(3, 5)
    w0, b0 = centres.copy(), -0.5 * (centres ** 2).sum(axis=1)
    x = np.concatenate([c + rng.normal(0, 0.3, (4, 5)) for c in centres])
    y = np.repeat([0, 1, 2], 4)
    head = adapt_head(x, y, np.arange(12), np.ones(12, bool), w0, b0, base_calibration=(0.8, 0.99))
    assert head.calibration_kept and (head.temperature, head.min_confidence) == (0.8, 0.99)
    x[0] = centres[1]  # one cell of class 0 that looks like class 1: an error out of fold
    head = adapt_head(x, y, np.arange(12), np.ones(12, bool), w0, b0, base_calibration=(0.8, 0.99))
    assert not head.calibration_kept and head.temperature != 0.8


def test_review_export_csv_is_read_with_its_boxes(tmp_path, base_model, capsys):
    from hemato.cli import main
    frames = lab_folder(tmp_path / "frames", per_class=4, seed=8)
    from edge_app.core.vision import CropSettings, locate_cells
    rows = []
    for label in LABELS:
        for i, path in enumerate(sorted((frames / label).iterdir())):
            box = locate_cells(cv2.imread(str(path)), CropSettings(input_size=32))[0]
            rows.append({"source": str(path.relative_to(tmp_path)), "frame": 0, "cell": 0, "label": label,
                         "x0": box.x0, "y0": box.y0, "x1": box.x1, "y1": box.y1, "error": "",
                         "reviewed": "yes" if i < 3 else ""})
    export = tmp_path / "reviewed.csv"
    with open(export, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "adapted.tflite"
    assert main(["adapt", str(export), "--model", str(base_model), "--out", str(out), "--copies", "0"]) == 0
    assert "Cells: EOSINOPHIL 3, LYMPHOCYTE 3, MONOCYTE 3, NEUTROPHIL 3" in capsys.readouterr().out
    from edge_app.core.metadata import read_model_metadata
    assert read_model_metadata(out)["adaptation"]["cells_per_class"]["MONOCYTE"] == 3


def test_metadata_rewrite_keeps_the_model_loadable(base_model):
    from edge_app.core.metadata import read_tflite_metadata
    from edge_app.core.tflite_file import with_metadata
    data = with_metadata(base_model.read_bytes(), {"labels": LABELS, "note": "x" * 10_000})
    assert json.loads(read_tflite_metadata(data)["hemato_edge"])["note"] == "x" * 10_000
    from ai_edge_litert.interpreter import Interpreter
    Interpreter(model_content=data).allocate_tensors()


def test_colour_guard_is_recentred_on_the_laboratory(tmp_path):
    from edge_app.adapt.adapt import lab_colour_guard
    from edge_app.core.ood import ColourGuard
    from edge_app.core.vision import CropSettings, crop_statistics
    settings = CropSettings(input_size=32)
    rng = np.random.default_rng(0)
    base_crops = [np.clip(rng.normal(120, 20, (32, 32, 3)), 0, 255).astype(np.uint8) for _ in range(40)]
    lab_crops = [np.clip(rng.normal(200, 10, (32, 32, 3)), 0, 255).astype(np.uint8) for _ in range(12)]
    stats = np.array([crop_statistics(c, settings) for c in base_crops])
    base = ColourGuard.fit(stats, stats)
    lab_stats = np.array([crop_statistics(c, settings) for c in lab_crops])
    assert all(base.is_unusual(s) for s in lab_stats)  # the base guard flags every cell of the new laboratory
    refitted = ColourGuard.from_dict(lab_colour_guard(base.to_dict(), lab_crops, settings))
    assert not any(refitted.is_unusual(s) for s in lab_stats)
    assert lab_colour_guard(None, lab_crops, settings) is None


def test_a_hand_edited_box_names_its_row(tmp_path, capsys):
    """A review export whose box was edited into text: adapt refuses naming the file and the image; the report
    counts the cell without its picture."""
    import csv as csv_module

    from edge_app.adapt.cells import CellsError, plan_csv
    from edge_app.report.cli import build
    export = tmp_path / "reviewed.csv"
    with open(export, "w", newline="") as f:
        writer = csv_module.writer(f)
        writer.writerow(["source", "frame", "label", "x0", "y0", "x1", "y1", "reviewed", "error"])
        for i, label in enumerate(LABELS * 3):
            writer.writerow([f"cell_{i}.jpg", 0, label, "abc" if i == 0 else 10, 10, 60, 60, "yes", ""])
    with pytest.raises(CellsError, match="reviewed.csv: cell_0.jpg: its box's x0 is 'abc'"):
        plan_csv(export, LABELS)
    report = build(export, "m.tflite", {"labels": LABELS}, None)
    assert len(report.cells) == 3 * len(LABELS)
    assert "no picture for cell_0.jpg" in capsys.readouterr().err
