"""evaluation.red_cell_scale: the red-cell estimate's figures over a folder, on drawn smears."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import make_smear
from edge_app.core.dataset import images_in
from evaluation.red_cell_scale import folder_scale, main

RED_CELL_DIAMETER = 2 * int(240 * 0.08)  # make_smear's red cells at 320 x 240


@pytest.fixture()
def smears(tmp_path):
    folder = tmp_path / "smears"
    (folder / "A").mkdir(parents=True)
    for seed in range(3):
        cv2.imwrite(str(folder / "A" / f"smear_{seed}.png"), make_smear(seed=seed, red_cells=20))
    cv2.imwrite(str(folder / "white.png"), np.full((240, 320, 3), 255, np.uint8))  # no red cells: no estimate
    (folder / "broken.jpg").write_bytes(b"not an image")
    return folder


def test_folder_figures_count_images_without_an_estimate_and_follow_resampling(smears):
    r = folder_scale(images_in(smears, recursive=True), factors=(0.5, 2.0), copies_every=1)
    assert (r["images"], r["unreadable"]) == (5, 1)
    assert r["no_estimate_share"] == pytest.approx(1 / 4)  # the white frame, of the four readable
    assert r["median_px"] == pytest.approx(RED_CELL_DIAMETER, rel=0.1)
    for factor in ("0.5", "2.0"):
        assert r["copies"][factor]["frames"] == 3
        assert r["copies"][factor]["median"] == pytest.approx(1.0, abs=0.08)


def test_cli_prints_a_row_per_folder_and_refuses_a_missing_one(smears, tmp_path, capsys):
    assert main([str(smears), "--factors", "2", "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "| 2x ratio (p10-p90) |" in out and f"| {smears} | 5 (1 unreadable) | 25.0 % |" in out
    assert (tmp_path / "r.json").exists()
    assert main([str(tmp_path / "absent")]) == 2
    assert "is not a folder" in capsys.readouterr().err
