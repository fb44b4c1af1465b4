"""A lab technician's first hour: the models travel with the package, answers a person can read on the terminal,
no runtime noise, help that says what the tool does, `hemato info`, bench and verify on the shipped samples."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from importlib import metadata, resources
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import LABELS, make_smear
from edge_app.core.dataset import images_in, labelled_images
from edge_app.core.metadata import read_model_metadata
from edge_app.core.model import runtime_info_filtered
from edge_app.core.model_path import DEFAULT_MODEL_NAME, MODELS_PACKAGE, find_model
from edge_app.core.overlay import label_origin
from edge_app.core.pipeline import LOW_CONFIDENCE, UNCERTAIN, CellResult
from edge_app.core.vision import Box
from edge_app.core.wording import cell_answer, image_answer, overlay_label, percent
from hemato.cli import SUBCOMMANDS
from hemato.cli import main as hemato

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"
SAMPLE_COUNT = len(images_in(SAMPLES))
SHIPPED = REPO / "models" / DEFAULT_MODEL_NAME


# ---- the models travel with the package ----

def test_default_model_is_the_packaged_resource_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("HEMATO_MODEL", raising=False)
    monkeypatch.chdir(tmp_path)  # no models/ here
    packaged = Path(str(resources.files(MODELS_PACKAGE))) / DEFAULT_MODEL_NAME
    assert find_model(None) == packaged and packaged.is_file()
    monkeypatch.setenv("HEMATO_MODEL", str(tmp_path / "mine.tflite"))  # $HEMATO_MODEL still wins
    (tmp_path / "mine.tflite").write_bytes(b"x")
    assert find_model(None) == tmp_path / "mine.tflite"
    assert find_model(str(SHIPPED)) == SHIPPED  # and --model before it


def _setuptools_version() -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in metadata.version("setuptools").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return (0,)


@pytest.mark.skipif(_setuptools_version() < (68,), reason="building the wheel needs setuptools>=68 (the dev extra)")
def test_a_non_editable_install_finds_its_models_from_another_folder(tmp_path):
    """Build the wheel as `pip install .` does, install it into a bare folder, look the model up from elsewhere."""
    wheels, site, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(REPO)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("*.whl")
    assert f"{MODELS_PACKAGE}/{DEFAULT_MODEL_NAME}" in zipfile.ZipFile(wheel).namelist()
    subprocess.run(pip + ["install", "--no-deps", "--target", str(site), str(wheel)], check=True,
                   capture_output=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k != "HEMATO_MODEL"} | {"PYTHONPATH": str(site)}
    found = subprocess.run([sys.executable, "-c", "from edge_app.core.model_path import find_model; "
                            "print(find_model(None))"], cwd=elsewhere, env=env, capture_output=True, text=True,
                           timeout=120, check=True).stdout.strip()
    assert Path(found) == site / MODELS_PACKAGE / DEFAULT_MODEL_NAME and Path(found).is_file()


# ---- answers a person can read ----

def _cell(probs, label=None, flag=""):
    probs = np.array(probs, float)
    top = int(np.argmax(probs))
    return CellResult(Box(10, 10, 50, 50, 900), probs, LABELS[top], float(probs[top]),
                      label or LABELS[top], 1.0, flag)


def test_wording_of_answers():
    assert percent(0.99999) == "99.9 %" and percent(0.9856) == "98.5 %"  # rounded down: never above a threshold
    sure = _cell([0.996, 0.002, 0.001, 0.001])
    assert cell_answer(sure, LABELS) == "EOSINOPHIL 99.6 %"
    unsure = _cell([0.978, 0.02, 0.001, 0.001], UNCERTAIN, LOW_CONFIDENCE)
    assert cell_answer(unsure, LABELS, 0.9857) == ("UNCERTAIN (best guess EOSINOPHIL 97.8 %, runner-up LYMPHOCYTE "
                                                   "2.0 %; below the 98.57 % threshold)")
    assert image_answer([], LABELS) == "no cell found"
    assert image_answer([sure, unsure], LABELS, 0.9857) == (
        "2 cells: EOSINOPHIL 99.6 %; UNCERTAIN (best guess EOSINOPHIL 97.8 %, runner-up LYMPHOCYTE 2.0 %)")
    assert overlay_label(unsure) == "UNCERTAIN (EOSINOPHIL?)" and "%" not in overlay_label(unsure)


def test_overlay_label_sits_above_the_box_else_below():
    assert label_origin((100, 80, 160, 140), (90, 20), (320, 240), 2) == (100, 78)  # above: bottom at y0 - gap
    assert label_origin((100, 5, 160, 60), (90, 20), (320, 240), 2) == (100, 82)  # no room above: below
    assert label_origin((290, 80, 320, 140), (90, 20), (320, 240), 2)[0] == 230  # kept inside the frame


def _folder(tmp_path):
    folder = tmp_path / "smears"
    folder.mkdir()
    cv2.imwrite(str(folder / "a_one.jpg"), make_smear(seed=1))
    cv2.imwrite(str(folder / "b_two.png"), make_smear(640, 480, cells=[(120, 120, 45), (480, 300, 50)], seed=3))
    cv2.imwrite(str(folder / "c_empty.jpg"), make_smear(cells=[], seed=4))
    (folder / "d_broken.jpg").write_bytes(b"\xff\xd8 truncated")
    return folder


def test_a_line_per_image(tmp_path, tiny_tflite, capsys):
    folder = _folder(tmp_path)
    assert hemato(["run", str(folder), "--model", str(tiny_tflite), "--csv", str(tmp_path / "r.csv")]) == 0
    out = capsys.readouterr().out.splitlines()
    lines = {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in out if line.startswith(str(folder))}
    assert list(lines) == [str(folder / n) for n in ("a_one.jpg", "b_two.png", "c_empty.jpg", "d_broken.jpg")]
    label, conf = lines[str(folder / "a_one.jpg")].split(" ", 1)
    assert label in LABELS and conf.endswith(" %")
    assert lines[str(folder / "b_two.png")].startswith("2 cells: ")
    assert lines[str(folder / "c_empty.jpg")] == "no cell found"
    assert lines[str(folder / "d_broken.jpg")] == "error: corrupt JPEG header (bad marker)"

    assert hemato(["run", str(folder / "a_one.jpg"), "--model", str(tiny_tflite), "--csv", str(tmp_path / "u.csv"),
                   "--min-confidence", "0.999"]) == 0
    out = capsys.readouterr().out
    assert f"{folder / 'a_one.jpg'}: UNCERTAIN (best guess " in out and "below the 99.90 % threshold)" in out
    assert "UNCERTAIN means the model's confidence was below its threshold of 99.90 %" in out


def test_quiet_prints_no_line_per_image(tmp_path, tiny_tflite, capsys):
    folder = _folder(tmp_path)
    assert hemato(["run", str(folder), "--model", str(tiny_tflite), "--csv", str(tmp_path / "r.csv"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert str(folder) not in out.replace(f"Failed images (1):\n  {folder / 'd_broken.jpg'}", "")
    assert "Images read: 4" in out and "Differential count" in out


def test_a_resumed_csv_gives_the_whole_differential_and_each_note_once(tmp_path, tiny_tflite, capsys):
    folder = tmp_path / "smears"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"s{i}.jpg"), make_smear(seed=i))
    out = tmp_path / "r.csv"
    args = ["run", str(folder), "--model", str(tiny_tflite), "--csv", str(out)]
    assert hemato(args) == 0
    capsys.readouterr()
    cv2.imwrite(str(folder / "s3.jpg"), make_smear(seed=3))
    assert hemato(args + ["--json-summary", str(tmp_path / "s.json")]) == 0
    captured = capsys.readouterr()
    # s2 (the last source) is classified again, and s3 is new: 2 images in this run, 4 cells in the CSV
    assert "Images read: 2" in captured.out
    assert f"{out} was resumed: 2 of its rows are from earlier runs; the differential below is of the whole CSV " \
           "(4 cells)" in captured.out
    assert "Differential count of the whole CSV (4 cells):" in captured.out
    counted = sum(int(line.split()[1]) for line in captured.out.splitlines()
                  if line.startswith("  ") and line.split()[0] in LABELS)
    assert counted == 4
    assert captured.err.count(f"resumed {out}") == 1 and f"resumed {out}" not in captured.out
    whole = json.loads((tmp_path / "s.json").read_text())["whole_csv"]
    assert whole["cells_classified"] == 4 and whole["rows_from_earlier_runs"] == 2


def test_no_runtime_info_line_in_a_real_run(tmp_path):
    """The shipped model through the real runtime (XNNPACK announces itself on load): stderr stays clean."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "HEMATO_MODEL")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    image = SAMPLES / "neutrophil_0_1966.jpeg"
    done = subprocess.run([sys.executable, "-m", "hemato.cli", "run", str(image), "--model", str(SHIPPED),
                           "--csv", str(tmp_path / "r.csv")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "INFO" not in done.stderr and done.stderr == ""
    assert f"{image}: NEUTROPHIL " in done.stdout


def test_runtime_info_filter_keeps_other_lines(capfd):
    with runtime_info_filtered():
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\nERROR: something real\n")
    assert capfd.readouterr().err == "ERROR: something real\n"


def test_help_says_what_the_tool_does(capsys):
    with pytest.raises(SystemExit):
        hemato(["--help"])
    text = capsys.readouterr().out
    assert "white blood cells" in text and "Not a diagnostic device" in text
    assert "imported only when used" not in text
    listed = [line.split()[0] for line in text.splitlines() if line.startswith("    ") and line.split()[0] in SUBCOMMANDS]
    assert listed == list(SUBCOMMANDS) and "info" in listed  # one line each


def test_info_describes_the_shipped_model(capsys):
    assert hemato(["info", str(SHIPPED)]) == 0
    text = capsys.readouterr().out
    meta = read_model_metadata(SHIPPED)
    assert f"Classes ({len(meta['labels'])}): {', '.join(meta['labels'])}" in text
    assert "Input: one RGB crop of 224 x 224 px" in text and "Crop: " in text
    assert f"Scale: frames are resampled so that red cells are {meta['crop']['rbc_diameter_px']} px across" in text
    assert f"Threshold: {100 * meta['min_confidence']:.2f} %" in text and f"temperature {meta['temperature']}" in text
    assert "Colour guard: a crop whose colours are unlike every training laboratory's" in text
    assert "sha256 " in text and "Training: folds 5" in text and "Training data: " in text
    assert hemato(["info", "/nowhere/m.tflite"]) == 2
    assert "hemato info: error: model file not found" in capsys.readouterr().err


def test_info_defaults_to_the_installed_model(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HEMATO_MODEL", raising=False)
    monkeypatch.chdir(tmp_path)
    assert hemato(["info"]) == 0
    assert DEFAULT_MODEL_NAME in capsys.readouterr().out


# ---- bench and verify on the shipped samples ----

def test_labelled_images_takes_class_folders_or_file_name_prefixes(tmp_path):
    pairs = labelled_images(SAMPLES)
    assert len(pairs) == SAMPLE_COUNT and {label for _, label in pairs} >= set(LABELS)
    assert all(path.name.upper().startswith(label) for path, label in pairs)
    (tmp_path / "MONOCYTE").mkdir()
    cv2.imwrite(str(tmp_path / "MONOCYTE" / "x.png"), make_smear())
    assert labelled_images(tmp_path) == [(tmp_path / "MONOCYTE" / "x.png", "MONOCYTE")]
    loose = tmp_path / "loose"
    loose.mkdir()
    cv2.imwrite(str(loose / "nolabel.png"), make_smear())
    with pytest.raises(ValueError, match="cannot tell the class of nolabel.png"):
        labelled_images(loose)


def test_verify_runs_on_the_samples(capsys):
    assert hemato(["verify", str(REPO / "models" / "wbc_mobilenetv2_float32.tflite"), str(SHIPPED),
                   "--data", str(SAMPLES), "--threads", "2"]) == 0
    assert f"Verification on {SAMPLE_COUNT} images" in capsys.readouterr().out


def test_bench_uses_the_samples_without_data(tiny_tflite, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(REPO)
    status = hemato(["bench", str(tiny_tflite), "--threads", "1", "--runs", "3", "--warmup", "1", "--no-plot",
                     "--json", str(tmp_path / "b.json")])
    assert status == 0, capfd.readouterr().err
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["models"][0]["accuracy"]["n"] == SAMPLE_COUNT and result["pipeline"]["images"] == SAMPLE_COUNT
    assert any("sample images" in note for note in result["notes"])
