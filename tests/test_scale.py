"""The red-cell scale: the estimate on drawn smears, one crop at any resolution, the metadata and the CSV."""
from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

from conftest import BACKGROUND_BGR, LABELS, NUCLEUS_BGR, RED_CELL_BGR
from edge_app.core.model import Classifier
from edge_app.core.scale import estimate_rbc_diameter, training_rbc_diameter
from edge_app.core.vision import CropSettings, largest_cell_crop, scale_frame
from evaluation.red_cell_scale import resampled

DIAMETER = 30  # drawn red cells, at 1x
SCALES = (0.5, 1.0, 2.0, 3.0)
SCALED = CropSettings(input_size=64, rbc_diameter_px=DIAMETER, reference_short_side=240)


def drawn_smear(seed: int = 0, diameter: int = DIAMETER, nucleus: tuple[int, int, int] | None = (170, 110, 22),
                width: int = 320, height: int = 240) -> np.ndarray:
    """Red-cell discs on a jittered grid (not touching; none for diameter 0), a purple nucleus, mild noise."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width, 3), BACKGROUND_BGR, np.uint8)
    step = int(diameter * 1.3) or height
    for y in range(step // 2, height if diameter else 0, step):
        for x in range(step // 2, width, step):
            jitter = rng.integers(-2, 3, 2)
            cv2.circle(img, (int(x + jitter[0]), int(y + jitter[1])), diameter // 2, RED_CELL_BGR, -1, cv2.LINE_AA)
    if nucleus is not None:
        x, y, r = nucleus
        cv2.circle(img, (x, y), int(r * 1.5), (220, 190, 200), -1, cv2.LINE_AA)
        cv2.circle(img, (x, y), r, NUCLEUS_BGR, -1, cv2.LINE_AA)
    return np.clip(img + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(np.float64).ravel(), b.astype(np.float64).ravel())[0, 1])


@pytest.mark.parametrize("f", SCALES)
def test_estimate_follows_the_image_scale(f):
    d, n = estimate_rbc_diameter(resampled(drawn_smear(), f))
    assert n >= 10
    assert d == pytest.approx(DIAMETER * f, rel=0.08)


@pytest.mark.parametrize("frame", [np.full((240, 320, 3), 255, np.uint8), np.zeros((240, 320, 3), np.uint8),
                                   np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)],
                         ids=["white", "black", "noise"])
def test_no_red_cells_no_estimate(frame):
    assert estimate_rbc_diameter(frame)[0] is None


def test_a_frame_filled_by_a_white_cell_has_no_estimate():
    crop = drawn_smear()[60:180, 100:240]
    big = cv2.resize(crop, (320, 274))
    big[40:240, 60:260] = NUCLEUS_BGR
    assert estimate_rbc_diameter(big)[0] is None


def test_same_box_and_model_input_at_every_scale():
    base = drawn_smear()
    crop1, box1 = largest_cell_crop(base, SCALED)
    for f in SCALES:
        crop, box = largest_cell_crop(resampled(base, f), SCALED)
        centre = ((box.x0 + box.x1) / 2 / f, (box.y0 + box.y1) / 2 / f)
        assert centre == pytest.approx(((box1.x0 + box1.x1) / 2, (box1.y0 + box1.y1) / 2), abs=0.03 * box1.width)
        assert box.width / f == pytest.approx(box1.width, rel=0.05)
        assert correlation(crop, crop1) > 0.97, f


def test_localiser_reads_the_estimates_analysis_copy():
    """An enlarged canonical frame is located on the estimate's analysis copy, not shrunk a second time,
    and the boxes match those found by shrinking it."""
    from edge_app.core.vision import located_cells, locate_cells
    upscaled = SCALED.__class__(**{**SCALED.to_dict(), "rbc_diameter_px": 1.5 * DIAMETER})
    frame = scale_frame(drawn_smear(), upscaled)
    assert frame.factor == pytest.approx(1.5, rel=0.08) and frame.analysis is not None
    small, per_image_px = frame.analysis
    assert max(small.shape[:2]) == 320 and per_image_px == pytest.approx(1 / frame.factor)
    shared, = located_cells(frame, upscaled)
    shrunk, = locate_cells(frame.image, upscaled, canonical=True)
    assert np.allclose([shared.x0, shared.y0, shared.x1, shared.y1], [shrunk.x0, shrunk.y0, shrunk.x1, shrunk.y1],
                       atol=0.03 * shrunk.width)
    # a given diameter (a camera's calibration) equal to the estimate: the same copy, the same boxes
    given = scale_frame(drawn_smear(), upscaled, rbc_px=frame.rbc_px)
    assert given.analysis is not None and located_cells(given, upscaled) == [shared]
    assert scale_frame(drawn_smear(), SCALED, rbc_px=60.0).analysis is None  # halved: located as it is


def test_nucleus_relative_crop_without_a_scale_or_without_red_cells():
    base = drawn_smear()
    frame = scale_frame(base, CropSettings())
    assert frame.image is base and frame.rbc_px is None  # a model without a scale: today's crop
    lone = drawn_smear(nucleus=(160, 120, 24), diameter=0)  # no red cells to measure
    frame = scale_frame(lone, SCALED)
    assert frame.image is lone and frame.rbc_px is None
    assert largest_cell_crop(lone, SCALED)[1] == largest_cell_crop(lone, CropSettings(input_size=64))[1]


def test_a_given_diameter_overrides_the_estimate():
    frame = scale_frame(drawn_smear(), SCALED, rbc_px=60.0)
    assert frame.rbc_px == 60.0 and frame.image.shape[:2] == (120, 160) and frame.factor == 0.5


def test_wide_field_frame_gets_the_same_physical_crop():
    """A frame showing twice the smear (at the same scale) crops the cell as large as the narrow one."""
    narrow = drawn_smear()
    wide = drawn_smear(width=640, height=480)
    assert largest_cell_crop(wide, SCALED)[1].width == pytest.approx(largest_cell_crop(narrow, SCALED)[1].width, rel=0.05)


def test_training_diameter_is_the_median_over_images(tmp_path):
    paths = []
    for i, d in enumerate((24, 30, 36)):
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), drawn_smear(seed=i, diameter=d))
    seen = []
    assert training_rbc_diameter(paths, progress=lambda done, total: seen.append((done, total))) == \
        pytest.approx(30, rel=0.08)
    assert seen[-1] == (3, 3)


def test_scale_written_into_a_model_changes_only_its_metadata(tiny_tflite, tmp_path):
    from convert.set_rbc_scale import set_scale
    from edge_app.core.metadata import METADATA_NAME, metadata_spans
    model = tmp_path / "scaled.tflite"
    model.write_bytes(tiny_tflite.read_bytes())
    before = model.read_bytes()
    set_scale(model, 30.0, 240)
    after = model.read_bytes()
    start, length = metadata_spans(before)[METADATA_NAME]
    changed = np.flatnonzero(np.frombuffer(after[:len(before)], np.uint8) != np.frombuffer(before, np.uint8))
    outside = changed[(changed < start) | (changed >= start + length)]
    # the old document zeroed, the new one after the end, and the 4-byte offset that points at it
    assert after[start:start + length] == bytes(length) and len(outside) <= 4 and np.ptp(outside) < 4
    settings = Classifier(model).crop_settings
    assert (settings.rbc_diameter_px, settings.reference_short_side) == (30.0, 240)
    assert Classifier(tiny_tflite).crop_settings.rbc_diameter_px is None
    crop = np.random.default_rng(0).integers(0, 256, (settings.input_size,) * 2 + (3,), dtype=np.uint8)
    assert np.array_equal(Classifier(model).raw_outputs(crop), Classifier(tiny_tflite).raw_outputs(crop))


@pytest.fixture
def scaled_tiny(tiny_tflite, tmp_path):
    from convert.set_rbc_scale import set_scale
    model = tmp_path / "scaled.tflite"
    model.write_bytes(tiny_tflite.read_bytes())
    set_scale(model, DIAMETER, 240)
    return model


def test_run_writes_rbc_px_and_summarises_the_scale(scaled_tiny, tmp_path, capsys):
    from hemato.cli import main as hemato
    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), drawn_smear())
    cv2.imwrite(str(folder / "b.png"), resampled(drawn_smear(seed=1), 2.0))
    cv2.imwrite(str(folder / "c.png"), drawn_smear(seed=2, diameter=0))  # no red cells: falls back
    out, summary = tmp_path / "out.csv", tmp_path / "summary.json"
    assert hemato(["run", str(folder), "--model", str(scaled_tiny), "--csv", str(out), "--headless",
                   "--json-summary", str(summary)]) == 0
    printed = capsys.readouterr().out
    with open(out, newline="") as f:
        rows = {row["source"].rsplit("/", 1)[-1]: row for row in csv.DictReader(f)}
    assert float(rows["a.png"]["rbc_px"]) == pytest.approx(DIAMETER, rel=0.08)
    assert float(rows["b.png"]["rbc_px"]) == pytest.approx(2 * DIAMETER, rel=0.08)
    assert rows["c.png"]["rbc_px"] == ""
    assert "Red-cell diameter: median" in printed and "1 frames had too few red cells" in printed
    scale = json.loads(summary.read_text())["red_cell_scale"]
    assert scale["frames_scaled"] == 2 and scale["frames_unscaled"] == 1 and scale["model_px"] == DIAMETER
    assert {"rbc_estimate", "rescale"} <= set(json.loads(summary.read_text())["stage_mean_ms"])

    assert hemato(["run", str(folder), "--model", str(scaled_tiny), "--csv", str(out), "--headless",
                   "--overwrite", "--rbc-diameter", "45"]) == 0
    with open(out, newline="") as f:
        assert {row["rbc_px"] for row in csv.DictReader(f)} == {"45.0"}
    assert "given 45.0 px (--rbc-diameter)" in capsys.readouterr().out


def test_csv_from_before_the_column_is_refused_with_a_clear_message(tmp_path):
    from edge_app.core.records import csv_columns
    from edge_app.run.resume import CsvMismatch, resume_csv
    old = tmp_path / "old.csv"
    old.write_text(",".join(c for c in csv_columns(LABELS) if c != "rbc_px") + "\r\n")
    with pytest.raises(CsvMismatch, match="earlier version.*rbc_px.*--overwrite"):
        resume_csv(old, csv_columns(LABELS))


def test_web_rows_carry_rbc_px(scaled_tiny):
    from edge_app.web.app import create_app
    app = create_app(Classifier(scaled_tiny, threads=1), rbc_diameter=40.0)
    ok, png = cv2.imencode(".png", drawn_smear())
    body = app.test_client().post("/api/classify", data={"file": (__import__("io").BytesIO(png.tobytes()), "a.png")},
                                  content_type="multipart/form-data").get_json()
    assert body["rows"] and all(row["rbc_px"] == 40.0 for row in body["rows"])
    assert {"rbc_estimate", "rescale"} <= set(body["timings_ms"])


def test_frame_result_keeps_the_crops_the_model_classified(scaled_tiny):
    """The review page and --explain show FrameResult.crops: the inputs behind each cell's answer, cut from
    the frame at the model's scale (here enlarged 2x), not cut again from the original frame."""
    from edge_app.core.pipeline import classify_crop, classify_frame
    from edge_app.core.vision import crop_for_model
    classifier = Classifier(scaled_tiny, threads=1)
    frame = resampled(drawn_smear(), 0.5)
    result = classify_frame(classifier, frame)
    assert result.rbc_px and len(result.crops) == len(result.cells) >= 1
    for cell, crop in zip(result.cells, result.crops):
        assert crop.shape == (classifier.input_size, classifier.input_size, 3)
        assert np.array_equal(classify_crop(classifier, crop)[0], cell.probabilities)
    assert not np.array_equal(result.crops[0], crop_for_model(frame, result.cells[0].box, classifier.input_size))
