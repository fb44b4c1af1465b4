"""Review page API, exports, the printable report and class activation maps (Flask test client, no browser)."""
from __future__ import annotations

import csv
import io
import zipfile

import cv2
import numpy as np
import pytest

from conftest import LABELS, make_smear, smears_run

flask = pytest.importorskip("flask")

from edge_app.core.model import Classifier  # noqa: E402
from edge_app.web import app as web  # noqa: E402


@pytest.fixture(scope="module")
def classifier(tiny_tflite) -> Classifier:
    return Classifier(tiny_tflite, threads=1)


@pytest.fixture
def client(classifier, tmp_path, tiny_tflite):
    app = web.create_app(classifier, review=str(smears_run(tmp_path, tiny_tflite)))
    yield app.test_client()
    app.extensions["hemato"].close()


def test_review_reclassify_export_and_adapt_reads_it(client, tmp_path):
    assert client.get("/review").status_code == 200
    body = client.get("/api/review").get_json()
    assert len(body["cells"]) == 3 and body["counts"]["total"] == 3 and body["counts"]["reviewed"] == 0
    upload = client.post("/api/classify", data={"file": (io.BytesIO(cv2.imencode(".png", make_smear(seed=9))[1]
                                                                      .tobytes()), "up.png")},
                         content_type="multipart/form-data")
    assert upload.status_code == 200
    cells = client.get("/api/review").get_json()["cells"]
    assert len(cells) == 4  # the CSV's cells and this session's upload
    first = cells[0]
    target = next(label for label in LABELS if label != first["label"])
    r = client.post(f"/api/review/{first['id']}", json={"label": target})
    assert r.status_code == 200
    counts = r.get_json()["counts"]
    assert counts["reviewed"] == 1 and counts["reclassified"] == 1
    assert client.post(f"/api/review/{first['id']}", json={"label": "NOT_A_CLASS"}).status_code == 400
    assert client.post("/api/review/99999", json={"label": LABELS[0]}).status_code == 404
    assert client.post(f"/api/review/{first['id']}", json=[1]).status_code == 400  # not an object
    crop = client.get(f"/review/crop/{first['id']}.jpg")
    assert crop.status_code == 200 and crop.data[:2] == b"\xff\xd8"

    exported = list(csv.DictReader(io.StringIO(client.get("/review.csv").get_data(as_text=True))))
    row = next(r for r in exported if r["reviewed"] == "yes")
    assert row["label"] == target and row["model_label"] == first["label"]
    assert sum(r["reviewed"] == "yes" for r in exported) == 1 and len(exported) == 4

    archive = zipfile.ZipFile(io.BytesIO(client.get("/review.zip").data))
    names = archive.namelist()
    assert len(names) == 1 and names[0].startswith(f"cells/{target}/") and names[0].endswith(".crop.jpg")

    from edge_app.adapt.cells import load_cells, plan_csv
    from edge_app.core.vision import CropSettings
    export = tmp_path / "reviewed.csv"
    export.write_text(client.get("/review.csv").get_data(as_text=True))
    with pytest.raises(ValueError, match="at least 3"):
        plan_csv(export, LABELS)  # one reviewed cell: refused, naming the classes short of cells
    archive.extractall(tmp_path / "unzipped")
    from edge_app.adapt.cells import CellPlan
    crop_file = next((tmp_path / "unzipped" / "cells" / target).iterdir())
    other = next(label for label in LABELS if label != target)
    cellset = load_cells([CellPlan(crop_file, target)] * 3 + [CellPlan(crop_file, other)] * 3, [target, other],
                         CropSettings(input_size=32))
    assert cellset.crops[0].shape == (32, 32, 3)


def test_export_of_a_loaded_csv_keeps_its_values(client, tmp_path):
    """The review export writes a loaded `hemato run` CSV's numbers as run wrote them (same formats)."""
    with open(tmp_path / "results.csv", newline="", encoding="utf-8") as f:
        original = list(csv.DictReader(f))
    exported = list(csv.DictReader(io.StringIO(client.get("/review.csv").get_data(as_text=True))))
    assert len(exported) == len(original) == 3
    for before, after in zip(original, exported):
        assert after["source"].endswith(before["source"]) and after["reviewed"] == ""
        assert {k: after[k] for k in before if k != "source"} == {k: v for k, v in before.items() if k != "source"}


def test_a_reviewed_csv_reloads_with_the_values_hemato_adapt_accepts(classifier, tmp_path, tiny_tflite):
    """A review export edited by hand ('Y', ' reviewed') loads as reviewed, as hemato adapt and report read it."""
    results = smears_run(tmp_path, tiny_tflite)
    with open(results, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    target = next(label for label in LABELS if label != rows[0]["label"])
    marks = ["Y", " reviewed", "no"]
    edited = tmp_path / "edited.csv"
    with open(edited, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, [*rows[0], "model_label", "reviewed"])
        writer.writeheader()
        for row, mark in zip(rows, marks):
            writer.writerow({**row, "label": target, "model_label": row["label"], "reviewed": mark})
    app = web.create_app(classifier, review=str(edited))
    try:
        counts = app.test_client().get("/api/review").get_json()["counts"]
    finally:
        app.extensions["hemato"].close()
    assert counts["total"] == 3 and counts["reviewed"] == 2 and counts["reclassified"] == 2


def test_report_of_the_session_is_self_contained(client):
    cells = client.get("/api/review").get_json()["cells"]
    client.post(f"/api/review/{cells[0]['id']}", json={"label": LABELS[2]})
    r = client.get("/report.html")
    assert r.status_code == 200 and "attachment" in r.headers["Content-Disposition"]
    page = r.get_data(as_text=True)
    assert "Not a diagnostic device: a qualified person must confirm every result." in page
    assert page.count("data:image/jpeg;base64,") == 3 and "src=\"http" not in page and "<script" not in page
    assert "Reviewed by a person</th><td>1 of 3" in page and "results.csv" in page
    assert "style-src 'unsafe-inline'" in r.headers["Content-Security-Policy"]


def test_hemato_report_cli(tmp_path, tiny_tflite):
    from hemato.cli import main
    from edge_app.core.tflite_file import with_metadata
    from edge_app.core.metadata import read_model_metadata
    results = smears_run(tmp_path, tiny_tflite)
    adapted = tmp_path / "adapted.tflite"
    meta = read_model_metadata(tiny_tflite)
    meta["adaptation"] = {"date": "2026-12-05", "base_file": "base.tflite", "cv_accuracy": 0.9,
                          "cells_per_class": {label: 5 for label in LABELS}}
    adapted.write_bytes(with_metadata(tiny_tflite.read_bytes(), meta))
    out = tmp_path / "report.html"
    assert main(["report", str(results), "--out", str(out), "--model", str(adapted), "--sample", "slide 7"]) == 0
    page = out.read_text()
    assert "slide 7" in page and "adapted.tflite" in page
    assert "adapted 2026-12-05 from base.tflite on 20 reviewed cells" in page
    rows = list(csv.DictReader(open(results)))
    for label in LABELS + ["UNCERTAIN"]:
        count = sum(r["label"] == label for r in rows)
        assert f'data-label="{label}"' in page
        if count and label != "UNCERTAIN":
            assert f'<td class="num">{count}</td><td class="num">{100 * count / sum(r["label"] != "UNCERTAIN" for r in rows):.1f} %' in page
    assert f"<th>Total cells</th><td>{len(rows)}</td>" in page
    assert page.count("data:image/jpeg;base64,") == len(rows)
    assert "Not a diagnostic device" in page


def test_heat_map_shape_and_class_dependence(tiny_tflite):
    from edge_app.core.explain import Explainer, heat_overlay
    from edge_app.core.vision import CropSettings, largest_cell_crop
    crop, _ = largest_cell_crop(make_smear(seed=3), CropSettings(input_size=32))
    explainer = Explainer(tiny_tflite, threads=1)
    maps = [explainer.activation_map(crop, k) for k in range(len(LABELS))]
    assert all(m.shape == (32, 32) and m.min() >= 0 and m.max() <= 1 for m in maps)
    assert max(float(np.abs(maps[0] - m).max()) for m in maps[1:]) > 0.05  # another class, another map
    assert heat_overlay(crop, maps[0]).shape == (32, 32, 3)


def test_explain_on_the_web_and_in_run(client, tmp_path, tiny_tflite):
    state = client.application.extensions["hemato"]
    assert state.explainer is None  # nothing opened until asked
    cells = client.get("/api/review").get_json()["cells"]
    r = client.get(f"/review/explain/{cells[0]['id']}.png")
    assert r.status_code == 200 and r.data[:4] == b"\x89PNG" and state.explainer is not None
    from hemato.cli import main
    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "two.png"), make_smear(640, 480, cells=[(170, 160, 45), (470, 320, 50)], seed=4))
    heat = tmp_path / "heat"
    assert main(["run", str(folder), "--model", str(tiny_tflite), "--csv", str(tmp_path / "r.csv"),
                 "--explain", str(heat), "--threads", "1"]) == 0
    pngs = sorted(heat.glob("*.png"))
    assert len(pngs) == 2 and cv2.imread(str(pngs[0])).shape == (32, 64, 3)


def test_heat_maps_of_same_named_images_do_not_overwrite_and_stay_out_of_the_source(tmp_path, tiny_tflite, capsys):
    from hemato.cli import main
    folder = tmp_path / "frames"
    for sub in ("s1", "s2"):
        (folder / sub).mkdir(parents=True)
        cv2.imwrite(str(folder / sub / "img.png"), make_smear(seed=len(sub)))
    heat = tmp_path / "heat"
    assert main(["run", str(folder), "--model", str(tiny_tflite), "--csv", str(tmp_path / "r.csv"),
                 "--explain", str(heat), "--threads", "1", "--quiet"]) == 0
    assert len(list(heat.glob("img_*.png"))) == 2
    assert main(["run", str(folder), "--model", str(tiny_tflite), "--csv", str(tmp_path / "r2.csv"),
                 "--explain", str(folder / "heat")]) == 2
    assert "inside the folder being classified" in capsys.readouterr().err
    assert not (tmp_path / "r2.csv").exists() and not (folder / "heat").exists()


def test_run_without_explain_opens_no_second_interpreter(tmp_path, tiny_tflite, monkeypatch):
    import edge_app.core.head_probe as head_probe
    from hemato.cli import main
    monkeypatch.setattr(head_probe.HeadProbe, "__init__", lambda *a, **k: pytest.fail("probe opened"))
    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "one.png"), make_smear(seed=1))
    assert main(["run", str(folder), "--model", str(tiny_tflite), "--csv", str(tmp_path / "r.csv")]) == 0
