"""Localisation and crop: the single definition of what the model sees."""
import numpy as np

from conftest import make_smear
from edge_app.core.vision import Box, CropSettings, crop_for_model, locate_cells


def test_one_cell_box_contains_nucleus():
    boxes = locate_cells(make_smear(cells=[(100, 120, 28)]), CropSettings(crop_scale=1.2))
    assert len(boxes) == 1
    b = boxes[0]
    assert b.x0 < 100 - 28 and b.x1 > 100 + 28 and b.y0 < 120 - 28 and b.y1 > 120 + 28


def test_default_box_is_the_nucleus_own_extent():
    b = locate_cells(make_smear(cells=[(100, 120, 28)]), CropSettings())[0]  # crop_scale 1.0
    assert abs(b.x0 - (100 - 28)) <= 2 and abs(b.x1 - (100 + 29)) <= 2 and abs(b.width - 57) <= 3


def test_no_cell_gives_no_box():
    assert locate_cells(make_smear(cells=[]), CropSettings()) == []


def test_several_cells_and_platelets_ignored():
    frame = make_smear(640, 480, cells=[(120, 120, 45), (480, 300, 50), (300, 400, 5)], seed=3)
    boxes = locate_cells(frame, CropSettings())
    assert len(boxes) == 2  # the 5-px "platelet" is not a cell
    centres = sorted(((b.x0 + b.x1) // 2, (b.y0 + b.y1) // 2) for b in boxes)
    assert abs(centres[0][0] - 120) < 10 and abs(centres[1][0] - 480) < 10


def test_clump_of_small_dots_is_not_a_cell_but_one_nucleus_of_same_area_is():
    settings = CropSettings()  # 320 x 240: a cell needs 845 stained px and one blob of 192 px
    dots = [(130 + 12 * i, 90 + 12 * j, 5) for i in range(4) for j in range(4)]  # 16 x ~80 px, one merged clump
    assert locate_cells(make_smear(cells=dots, red_cells=0), settings) == []
    boxes = locate_cells(make_smear(cells=[(160, 120, 20)], red_cells=0), settings)  # one ~1250 px nucleus
    assert len(boxes) == 1 and boxes[0].stained_area > 845


def test_crop_is_rgb_square_and_pads_outside_frame():
    frame = np.zeros((50, 50, 3), np.uint8)
    frame[:, :, 0] = 255  # pure blue in BGR
    crop = crop_for_model(frame, Box(-10, -10, 40, 40, 0), 32)
    assert crop.shape == (32, 32, 3) and crop.dtype == np.uint8
    assert crop[-1, -1].tolist() == [0, 0, 255]  # RGB: blue is the last channel
    assert crop[0, 0].tolist() == [0, 0, 0]      # outside the frame is black


def test_settings_round_trip_ignores_unknown_keys():
    s = CropSettings(input_size=160, crop_scale=2.0)
    assert CropSettings.from_dict({**s.to_dict(), "future_key": 1}) == s


def test_colour_guard_flags_crops_unlike_training():
    from edge_app.core.ood import ColourGuard
    from edge_app.core.vision import crop_statistics
    settings = CropSettings(input_size=32)
    usual = [crop_for_model(make_smear(seed=i), locate_cells(make_smear(seed=i), settings)[0], 32) for i in range(40)]
    stats = np.array([crop_statistics(c, settings) for c in usual])
    guard = ColourGuard.fit(stats[:30], stats[30:], quantile=1.0)
    restored = ColourGuard.from_dict(guard.to_dict())
    assert not restored.is_unusual(stats[35])
    green = np.zeros((32, 32, 3), np.uint8)
    green[:, :, 1] = 200
    assert restored.is_unusual(crop_statistics(green, settings))


def test_colour_guard_has_one_region_per_laboratory_and_reads_old_models():
    from edge_app.core.ood import ColourGuard
    rng = np.random.default_rng(0)
    lab_a = rng.normal(0.0, 1.0, (400, 3))
    lab_b = rng.normal(10.0, 1.0, (400, 3))
    guard = ColourGuard.from_dict(ColourGuard.fit_sources({"a": (lab_a[:300], lab_a[300:]),
                                                           "b": (lab_b[:300], lab_b[300:])}).to_dict())
    assert [r.source for r in guard.regions] == ["a", "b"]
    assert not guard.is_unusual(lab_a[0]) and not guard.is_unusual(lab_b[0])
    assert guard.is_unusual(np.full(3, 5.0))  # between the two laboratories: like neither
    old = {"kind": "colour-mahalanobis", "mean": [0, 0, 0], "inv_cov": np.eye(3).tolist(), "max_distance": 2.0}
    single = ColourGuard.from_dict(old)
    assert not single.is_unusual(np.zeros(3)) and single.is_unusual(np.full(3, 3.0))
