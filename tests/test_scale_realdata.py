"""The red-cell scale on real smears in ../shared (skipped where absent): one crop at any resolution.

Four blood-cells and four PBC images are resampled to 0.5x, 1x, 2x and 3x their size (INTER_AREA down,
INTER_CUBIC up). At every size the located box, in the image's pixels divided by the factor, stays within
8 % of the 1x box's side (centre and side), and the 224 x 224 model inputs correlate above 0.97 with the 1x
input. The shipped model's class probabilities (largest absolute change of any class against 1x) move by
less than 0.2 on each enlarged image; a 0.5x image has lost detail, not only pixels, so there the mean
change over the eight images must stay under 0.15.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import SHARED_DATA, requires_real_data
from edge_app.core.model import Classifier
from edge_app.core.scale import estimate_rbc_diameter
from edge_app.core.vision import largest_cell_crop
from evaluation.red_cell_scale import resampled

PBC = SHARED_DATA.parent / "pbc"
SHIPPED = Path(__file__).resolve().parents[1] / "models" / "wbc_mobilenetv2_int8.tflite"
SCALES = (0.5, 1.0, 2.0, 3.0)
BOX_TOLERANCE = 0.08          # of the 1x box's side
MIN_CORRELATION = 0.97        # of the model inputs with the 1x input
MAX_PROB_CHANGE = 0.2         # largest change of a class probability against 1x, each enlarged image
MAX_MEAN_PROB_CHANGE_HALF = 0.15  # the same at 0.5x, averaged over the images

pytestmark = [requires_real_data, pytest.mark.realdata,
              pytest.mark.skipif(not PBC.is_dir(), reason=f"PBC images not found at {PBC} (../shared is absent)")]


def _images() -> list[Path]:
    blood = sorted((SHARED_DATA / "TEST").glob("*/*.jpeg"))[::620][:4]
    pbc = sorted(PBC.glob("*/*.jpg"))[::1500][:4]
    return blood + pbc


@pytest.fixture(scope="module")
def shipped() -> Classifier:
    classifier = Classifier(SHIPPED, threads=1)
    assert classifier.crop_settings.rbc_diameter_px, "the shipped model carries its red-cell scale"
    return classifier


def _at_size(classifier: Classifier, base: np.ndarray, f: float):
    crop, box = largest_cell_crop(resampled(base, f), classifier.crop_settings)
    assert box is not None, f
    return crop, box, classifier.predict(crop)


@pytest.mark.parametrize("path", _images(), ids=lambda p: f"{p.parent.parent.name}-{p.name}")
def test_same_cell_same_input_same_answer_at_every_size(path, shipped):
    base = cv2.imread(str(path))
    assert estimate_rbc_diameter(base)[0] is not None, "a measurable image"
    crop1, box1, probs1 = _at_size(shipped, base, 1.0)
    side = box1.width
    for f in SCALES:
        crop, box, probs = _at_size(shipped, base, f)
        assert (box.x0 + box.x1) / 2 / f == pytest.approx((box1.x0 + box1.x1) / 2, abs=BOX_TOLERANCE * side), f
        assert (box.y0 + box.y1) / 2 / f == pytest.approx((box1.y0 + box1.y1) / 2, abs=BOX_TOLERANCE * side), f
        assert box.width / f == pytest.approx(side, rel=BOX_TOLERANCE), f
        corr = np.corrcoef(crop.astype(np.float64).ravel(), crop1.astype(np.float64).ravel())[0, 1]
        assert corr > MIN_CORRELATION, (f, corr)
        if f > 1:
            assert np.abs(probs - probs1).max() < MAX_PROB_CHANGE, f


def test_half_size_answers_stay_close_on_average(shipped):
    changes = []
    for path in _images():
        base = cv2.imread(str(path))
        changes.append(np.abs(_at_size(shipped, base, 0.5)[2] - _at_size(shipped, base, 1.0)[2]).max())
    assert np.mean(changes) < MAX_MEAN_PROB_CHANGE_HALF, changes


@pytest.mark.parametrize("folder, low, high", [("blood-cells", 36, 48), ("pbc", 60, 76)])
def test_estimate_on_each_source_is_its_known_scale(folder, low, high):
    """blood-cells red cells span ~42 px, PBC's ~68 px (PBC is at a higher magnification)."""
    paths = sorted((SHARED_DATA / "TEST").glob("*/*.jpeg"))[::50] if folder == "blood-cells" \
        else sorted(PBC.glob("*/*.jpg"))[::120]
    found = [d for d, _ in (estimate_rbc_diameter(cv2.imread(str(p))) for p in paths) if d is not None]
    assert len(found) >= 0.85 * len(paths)
    assert low < np.median(found) < high
