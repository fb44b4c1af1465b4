"""What the commands say when given a wrong path, port or file: output paths and ports are checked when the
command starts (a one-line usage error, status 2, not a traceback after the work is done), and a file given in
the wrong place is named."""
from __future__ import annotations

import pytest

from hemato.cli import main as hemato


def usage_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as ended:
        hemato(argv)
    assert ended.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_verify_outputs_are_checked_before_any_model_runs(tmp_path, capsys):
    afile = tmp_path / "a.jpg"
    afile.write_bytes(b"x")
    models = ["no-such-model.tflite", "--data", str(tmp_path)]
    assert "is a file, not a folder" in usage_error(["verify", *models, "--json", str(afile / "r.json")], capsys)
    assert "is a folder" in usage_error(["verify", *models, "--markdown", str(tmp_path)], capsys)
    assert "is a file, not a folder" in usage_error(["verify", *models, "--plots", str(afile)], capsys)


def test_report_run_and_adapt_outputs_are_checked(tmp_path, capsys):
    assert "is a folder" in usage_error(["report", "r.csv", "--out", str(tmp_path)], capsys)
    assert "is a folder" in usage_error(["run", str(tmp_path), "--json-summary", str(tmp_path)], capsys)
    assert "is a folder" in usage_error(["adapt", str(tmp_path), "--out", str(tmp_path)], capsys)


def test_a_file_in_a_new_folder_is_fine(tmp_path):
    from hemato.argtypes import output_file, output_folder
    assert output_file(str(tmp_path / "new" / "deeper" / "r.json")) == tmp_path / "new" / "deeper" / "r.json"
    assert output_folder(str(tmp_path / "plots")) == tmp_path / "plots"


# a missing --model: should the check regress, serve stops there instead of serving forever
NO_SERVER = ["--model", "no-such-model.tflite"]


@pytest.mark.parametrize("port", ["0", "-1", "99999"])
def test_serve_refuses_a_port_that_cannot_exist(port, capsys):
    pytest.importorskip("flask")
    assert "between 1 and 65535" in usage_error(["serve", *NO_SERVER, "--port", port], capsys)


def test_serve_takes_the_threshold_as_a_fraction_like_run(capsys):
    pytest.importorskip("flask")
    assert "between 0 and 1" in usage_error(["serve", *NO_SERVER, "--min-confidence", "95"], capsys)


def test_report_names_a_csv_it_cannot_read(tmp_path, capsys):
    assert hemato(["report", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "r.html")]) == 2
    assert f"{tmp_path / 'missing.csv'}: No such file" in capsys.readouterr().err
    binary = tmp_path / "model.csv"
    binary.write_bytes(bytes(range(256)))
    assert hemato(["report", str(binary), "--out", str(tmp_path / "r.html")]) == 2
    assert f"{binary} is not a text CSV" in capsys.readouterr().err


def test_report_says_when_the_images_behind_its_cells_cannot_be_read(tmp_path, capsys):
    results = tmp_path / "r.csv"
    results.write_text("source,frame,cell,label,predicted,confidence,x0,y0,x1,y1,error,p_A,p_B\r\n"
                       "gone/a.jpg,0,0,A,A,0.99,1,1,20,20,,0.99,0.01\r\n")
    assert hemato(["report", str(results), "--out", str(tmp_path / "r.html")]) == 0
    assert "1 of 1 images could not be read" in capsys.readouterr().err


def test_a_file_given_where_a_csv_or_model_belongs_is_named(tmp_path, capsys):
    image = tmp_path / "cell.jpg"
    image.write_bytes(bytes([0xFF, 0xD8, 0xFF, 0xE0]) + bytes(range(256)))
    assert hemato(["adapt", str(image), "--out", str(tmp_path / "a.tflite")]) == 2
    assert f"{image} is not a text CSV" in capsys.readouterr().err
    assert hemato(["info", str(image)]) == 2
    assert f"{image}: not a TFLite model" in capsys.readouterr().err


def test_serve_refuses_a_camera_file_that_does_not_exist(tmp_path, capsys):
    pytest.importorskip("flask")
    assert hemato(["serve", *NO_SERVER, "--camera", str(tmp_path / "missing.mp4")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_the_long_measurements_check_their_outputs_first(tmp_path, capsys):
    afile = tmp_path / "a.txt"
    afile.write_text("x")
    assert "is a folder" in usage_error(["bench", "--no-data", "--json", str(tmp_path)], capsys)
    assert "is a file, not a folder" in usage_error(["bench", "--no-data", "--out-dir", str(afile)], capsys)
    from evaluation import adaptation_curve, red_cell_scale
    with pytest.raises(SystemExit) as ended:
        red_cell_scale.main([str(tmp_path), "--json", str(tmp_path)])
    assert ended.value.code == 2 and "is a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as ended:
        adaptation_curve.main(["--model", "m.tflite", "--split", "s.csv", "--out", str(afile / "c.json")])
    assert ended.value.code == 2 and "is a file, not a folder" in capsys.readouterr().err
