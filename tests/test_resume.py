"""An existing CSV is resumed: sources in it are skipped, a row cut by a power cut is repaired, the last
source is classified again, other columns are refused, --overwrite starts afresh, cameras append."""
from __future__ import annotations

import csv
import functools

import cv2
import pytest

import edge_app.run.cli as run_module
from conftest import LABELS, make_smear
from edge_app.core.records import csv_columns
from edge_app.run.resume import CsvMismatch, resume_csv
from edge_app.run.sources import open_source
from hemato.cli import main as hemato
from test_sources import FakeCamera


def rows_of(path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def without_latency(rows: list[list[str]]) -> list[list[str]]:
    at = csv_columns(LABELS).index("latency_ms")
    return [row[:at] + row[at + 1:] for row in rows]


def rows_of_bytes(data: bytes) -> list[list[str]]:
    return list(csv.reader(data.decode("utf-8").splitlines()))


def add_images(folder, names, cells=2):
    for k, name in enumerate(names):
        cv2.imwrite(str(folder / name), make_smear(cells=[(90, 90, 26), (230, 150, 28)][:cells], seed=k))


def run(folder, model, out, *extra) -> int:
    return hemato(["run", str(folder), "--model", str(model), "--csv", str(out), *extra])


def first_run(tmp_path, model, names):
    """A folder of smears with `names`, classified once into r.csv; returns (folder, csv path)."""
    folder = tmp_path / "smears"
    folder.mkdir()
    add_images(folder, names)
    out = tmp_path / "r.csv"
    assert run(folder, model, out) == 0
    return folder, out


def test_a_second_run_skips_what_is_done_and_redoes_the_last(tmp_path, tiny_tflite, capsys):
    folder, out = first_run(tmp_path, tiny_tflite, ["a.jpg", "b.jpg", "c.jpg"])
    first = rows_of(out)
    capsys.readouterr()

    add_images(folder, ["d.jpg", "e.jpg"])
    assert run(folder, tiny_tflite, out) == 0
    captured = capsys.readouterr()
    assert "Images read: 3" in captured.out  # c (again), d, e
    assert f"resumed {out}: 4 rows kept, 2 sources already in it skipped; {folder / 'c.jpg'} is classified again" \
        in captured.err
    rows = rows_of(out)
    assert rows[:5] == first[:5]  # a and b untouched
    sources = [r[0].rsplit("/", 1)[-1] for r in rows[1:]]
    assert sources == ["a.jpg"] * 2 + ["b.jpg"] * 2 + ["c.jpg"] * 2 + ["d.jpg"] * 2 + ["e.jpg"] * 2
    assert without_latency(rows[5:7]) == without_latency(first[5:7])  # c.jpg: the same answers again


def test_a_row_cut_by_a_power_cut_is_repaired_and_its_image_redone(tmp_path, tiny_tflite, capsys):
    folder, out = first_run(tmp_path, tiny_tflite, ["a.jpg", "b.jpg", "c.jpg"])
    complete = out.read_bytes()
    out.write_bytes(complete[:-25])  # the power went while c.jpg's second row was being written
    before = rows_of(out)[:-1]
    capsys.readouterr()

    assert run(folder, tiny_tflite, out) == 0
    err = capsys.readouterr().err
    cut = len(complete.splitlines(keepends=True)[-1]) - 25
    assert f"removed a half-written last row ({cut} bytes)" in err
    assert f"{folder / 'c.jpg'} is classified again (its 1 rows may be incomplete)" in err
    assert out.read_bytes().endswith(b"\r\n")
    rows = rows_of(out)
    assert rows[:-2] == before[:-1]  # a and b untouched; c.jpg's surviving row was replaced ...
    assert without_latency(rows) == without_latency(rows_of_bytes(complete))  # ... by the same two rows


def test_a_tail_of_nul_bytes_after_a_crash_is_cut(tmp_path, tiny_tflite):
    folder, out = first_run(tmp_path, tiny_tflite, ["a.jpg", "b.jpg"])
    complete = out.read_bytes()
    with open(out, "ab") as f:  # ext4 after a crash: the size grew, the data did not arrive
        f.write(b"\0" * 300 + b"\r\n" + b"\0" * 40)
    resume = resume_csv(out, csv_columns(LABELS))
    assert resume.cut_bytes == 342 and resume.rows == 4 and resume.redo == ""
    assert out.read_bytes() == complete


def test_other_columns_are_refused_and_the_csv_left_alone(tmp_path, tiny_tflite, smear_folder, capsys):
    out = tmp_path / "r.csv"
    out.write_text(",".join(csv_columns(["A", "B"])) + "\r\nx.jpg,0,0,A,A,0.9,B,,0,0,1,1,1.0,,0.9,0.1\r\n")
    before = out.read_bytes()
    assert run(smear_folder, tiny_tflite, out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "other columns" in err and "--overwrite" in err
    assert out.read_bytes() == before
    with pytest.raises(CsvMismatch):
        resume_csv(out, csv_columns(LABELS))

    assert run(smear_folder, tiny_tflite, out, "--overwrite") == 0
    rows = rows_of(out)
    assert rows[0] == csv_columns(LABELS) and len(rows) == 1 + 3


def test_a_csv_without_a_complete_header_is_started_afresh(tmp_path, tiny_tflite, smear_folder):
    out = tmp_path / "r.csv"
    out.write_text("source,frame,ce")
    assert run(smear_folder, tiny_tflite, out) == 0
    assert rows_of(out)[0] == csv_columns(LABELS) and len(rows_of(out)) == 4


def test_a_file_that_is_not_a_results_csv_is_left_untouched(tmp_path, tiny_tflite, smear_folder, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("patient 123: call the ward")  # one line, no newline: not a header cut short
    assert run(smear_folder, tiny_tflite, notes) == 2
    assert notes.read_text() == "patient 123: call the ward"
    assert "not a results CSV" in capsys.readouterr().err


def test_the_folder_typed_another_way_is_the_same_folder(tmp_path, tiny_tflite, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    add_images(tmp_path / "in", ["a.jpg", "b.jpg"])
    assert run("in", tiny_tflite, "r.csv") == 0
    before = rows_of(tmp_path / "r.csv")
    assert run(tmp_path / "in", tiny_tflite, "r.csv") == 0  # absolute now: the last image redone, none doubled
    after = rows_of(tmp_path / "r.csv")
    assert len(after) == len(before)
    assert sorted(row[0].rsplit("/", 1)[-1] for row in after[1:]) == ["a.jpg", "a.jpg", "b.jpg", "b.jpg"]


def test_another_samples_rows_are_not_in_this_samples_differential(tmp_path, tiny_tflite, capsys):
    first, second = tmp_path / "patient_a", tmp_path / "patient_b"
    first.mkdir()
    second.mkdir()
    add_images(first, ["a1.jpg", "a2.jpg"], cells=2)
    add_images(second, ["b1.jpg"], cells=1)
    out = tmp_path / "r.csv"
    assert run(first, tiny_tflite, out) == 0
    capsys.readouterr()
    assert run(second, tiny_tflite, out) == 0
    printed = capsys.readouterr().out
    assert "4 of them of other images, which are not counted" in printed
    assert "Differential count of this source in the CSV (1 cells)" in printed
    assert len(rows_of(out)) == 1 + 4 + 1  # the rows themselves are all kept


def test_a_file_name_that_is_not_utf8_is_written_and_resumed(tmp_path, tiny_tflite):
    import os
    folder = tmp_path / "in"
    folder.mkdir()
    add_images(folder, ["ok.jpg"])
    latin = os.path.join(os.fsencode(folder), b"Zelle_\xe4.jpg")  # a Latin-1 name, as copied from an old system
    try:
        with open(latin, "wb") as f:
            f.write((folder / "ok.jpg").read_bytes())
    except OSError:
        pytest.skip("this filesystem refuses file names that are not UTF-8")
    out = tmp_path / "r.csv"
    assert run(folder, tiny_tflite, out) == 0
    names = {row[0].rsplit("/", 1)[-1] for row in rows_of(out)[1:]}
    assert names == {"ok.jpg", "Zelle_\\udce4.jpg"}
    before = len(rows_of(out))
    assert run(folder, tiny_tflite, out) == 0  # resumed: the Latin-1 file is recognised as done
    assert len(rows_of(out)) == before


def test_a_camera_run_appends(tmp_path, tiny_tflite, monkeypatch):
    out = tmp_path / "cam.csv"
    for plan in ([3], [2]):
        monkeypatch.setattr(run_module, "open_source", functools.partial(
            open_source, camera_opener=FakeCamera(plan), backoff_s=0, retry_wait_s=0))
        assert hemato(["run", "0", "--model", str(tiny_tflite), "--csv", str(out), "--headless"]) == 1
    rows = rows_of(out)
    assert [r[:2] for r in rows[1:]] == [["camera:0", str(i)] for i in (0, 1, 2, 0, 1)]


def test_resume_keeps_rows_of_sources_this_run_does_not_cover(tmp_path, tiny_tflite):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    add_images(one, ["a.jpg"])
    add_images(two, ["b.jpg"])
    out = tmp_path / "r.csv"
    assert run(one, tiny_tflite, out) == 0
    assert run(two, tiny_tflite, out) == 0  # one/a.jpg was last, but this run cannot redo it: kept
    sources = [r[0] for r in rows_of(out)[1:]]
    assert sources == [str(one / "a.jpg")] * 2 + [str(two / "b.jpg")] * 2
