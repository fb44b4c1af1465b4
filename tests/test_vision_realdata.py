"""Localisation on the real smear images in ../shared (skipped where absent)."""
import cv2
import numpy as np
import pytest

from conftest import SHARED_DATA, requires_real_data
from edge_app.core.dataset import images_in
from edge_app.core.vision import CropSettings, locate_cells, stain_mask

pytestmark = [requires_real_data, pytest.mark.realdata]


def _test_simple_images():
    return images_in(SHARED_DATA / "TEST_SIMPLE", recursive=True)


def _box_holds_stain(frame, box, settings) -> bool:
    """The stained nucleus sits in the box: most of the frame's stain near the box centre is inside it."""
    mask = stain_mask(frame, settings)
    inside = mask[max(box.y0, 0):box.y1, max(box.x0, 0):box.x1].sum()
    return inside >= 0.5 * box.stained_area


def test_every_test_simple_image_gets_one_box_around_its_cell():
    settings = CropSettings()
    images = _test_simple_images()
    assert len(images) == 71
    for path in images:
        frame = cv2.imread(str(path))
        boxes = locate_cells(frame, settings)
        assert len(boxes) == 1, path
        assert _box_holds_stain(frame, boxes[0], settings), path


def test_full_resolution_photograph_gives_the_same_cell():
    """The 320x240 images are 640x480 smear photographs halved: at full size the box scales with them."""
    settings = CropSettings()
    for path in _test_simple_images()[::7]:
        small = cv2.imread(str(path))
        large = cv2.resize(small, (640, 480), interpolation=cv2.INTER_CUBIC)
        (a,), (b,) = locate_cells(small, settings), locate_cells(large, settings)
        centre_small = np.array([a.x0 + a.x1, a.y0 + a.y1]) / 2
        centre_large = np.array([b.x0 + b.x1, b.y0 + b.y1]) / 4
        assert np.abs(centre_small - centre_large).max() <= 4, path
        assert abs(b.width / 2 - a.width) <= 4, path
