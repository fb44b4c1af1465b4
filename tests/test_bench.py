"""`hemato bench` runs end to end on tiny models and writes a well-formed report (no timing assertions)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import LABELS, build_tiny_keras, make_smear, tiny_metadata
from hemato.cli import main as hemato

SIZE = 32
STAINS = [(170, 60, 120), (205, 90, 40), (150, 40, 175), (115, 35, 70)]  # one nucleus colour per class


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """DATA/<CLASS>/*.png: two one-cell smears per class."""
    root = tmp_path_factory.mktemp("bench_data")
    for k, label in enumerate(LABELS):
        (root / label).mkdir()
        for i in range(2):
            image = make_smear(cells=[(150 + 20 * i, 120, 28)], seed=10 * k + i, nucleus_bgr=STAINS[k])
            cv2.imwrite(str(root / label / f"{i}.png"), image)
    return root


@pytest.fixture(scope="module")
def tiny_int8(tmp_path_factory) -> Path:
    """A full-integer (uint8 in, float32 out) tiny model whose metadata says variant int8."""
    import tensorflow as tf
    from convert.metadata_writer import embed_metadata
    converter = tf.lite.TFLiteConverter.from_keras_model(build_tiny_keras(LABELS, SIZE))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    rng = np.random.default_rng(0)
    converter.representative_dataset = lambda: ([rng.uniform(0, 255, (1, SIZE, SIZE, 3)).astype(np.float32)]
                                                for _ in range(8))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    path = tmp_path_factory.mktemp("bench_models") / "tiny_int8.tflite"
    path.write_bytes(embed_metadata(converter.convert(), {**tiny_metadata(LABELS, SIZE), "variant": "int8"}))
    return path


def test_bench_writes_markdown_json_and_plot(tiny_tflite, tiny_int8, labelled, tmp_path, capfd):
    import shutil
    out, reference = tmp_path / "results", tmp_path / "reference"
    reference.mkdir()  # stand-ins for the standard models: any .tflite is timed bare
    shutil.copy(tiny_tflite, reference / "mobilenetv2_224_float32.tflite")
    shutil.copy(tiny_int8, reference / "mobilenetv2_224_int8.tflite")
    status = hemato(["bench", str(tiny_tflite), str(tiny_int8), "--data", str(labelled), "--threads", "1", "2",
                     "--runs", "5", "--warmup", "2", "--out-dir", str(out), "--name", "tiny",
                     "--reference", str(reference)])
    captured = capfd.readouterr()
    assert status == 0, captured.err
    assert "below the reference 200" in captured.err

    result = json.loads((out / "tiny.json").read_text())
    assert result["schema"] == "hemato-bench/1"
    assert {"cpu_model", "cores", "arch", "python", "runtime", "runtime_version", "os", "date"} <= set(result["machine"])
    assert result["settings"]["runs"] == 5 and result["settings"]["threads"] == [1, 2]
    assert [(m["variant"], bool(m.get("reference"))) for m in result["models"]] == \
        [("float32", False), ("int8", False), ("float32", True), ("int8", True)]
    estimate = result["pi_estimate"]
    assert estimate["pi4_standard_float32_ms"] == 47.0
    standard = result["models"][2]["results"]
    assert [r["vs_standard_float32"] for r in standard] == [pytest.approx(1.0)] * 2
    assert all(r["pi4_estimate_ms"] > 0 for m in result["models"] for r in m["results"])
    assert result["fastest_threads"]["model"] == "tiny_int8.tflite"
    assert result["fastest_threads"]["threads"] in (1, 2)
    for model in result["models"][:2]:
        assert model["size_bytes"] > 0
        acc = model["accuracy"]
        assert acc["n"] == 8 and 0 <= acc["correct"] <= acc["located"] <= 8
        assert [r["threads"] for r in model["results"]] == [1, 2]
        for run in model["results"]:
            lat = run["latency_ms"]
            assert lat["n"] == 5 and 0 < lat["min"] <= lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
            assert run["load_ms"] > 0 and run["fps"] > 0 and run["peak_rss_bytes"] > run["rss_delta_bytes"] >= 0
            assert run["speedup_vs_float32"] > 0
    assert result["models"][0]["results"][0]["speedup_vs_float32"] == pytest.approx(1.0)

    pipeline = result["pipeline"]
    assert Path(pipeline["model"]).name == "tiny_int8.tflite" and pipeline["threads"] == 2
    assert pipeline["images"] == 8 and pipeline["cells"] >= 1
    assert set(pipeline["stage_mean_ms"]) == {"decode", "rbc_estimate", "rescale", "localise", "preprocess",
                                              "invoke", "write"}
    assert pipeline["images_per_s"] > 0 and pipeline["pipeline_over_bare"] > 0

    markdown = (out / "tiny.md").read_text()
    assert markdown in captured.out
    assert ("| model | variant | threads | size MB | accuracy | load ms | p50 ms | p95 ms | p99 ms | mean ms | FPS "
            "| speed-up vs float32 | peak RSS MB |") in markdown
    assert markdown.count("| tiny_float32.tflite | float32 |") == 4  # two thread counts, models and Pi tables
    assert markdown.count("| tiny_int8.tflite | int8 |") == 4
    assert "## Pipeline (`hemato run`)" in markdown and "| tiny_int8.tflite | 2 | 8 |" in markdown
    assert "## Raspberry Pi 4: an estimate, not a measurement" in markdown and "Threads: one cell at a time" in markdown
    assert pipeline["startup_ms"] > 0
    assert (out / "tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_float32_or_data_says_so(tiny_int8, tmp_path, capfd):
    status = hemato(["bench", str(tiny_int8), "--threads", "1", "--runs", "3", "--warmup", "1", "--no-data",
                     "--json", str(tmp_path / "b.json"), "--reference", str(tmp_path / "none")])
    captured = capfd.readouterr()
    assert status == 0, captured.err
    result = json.loads((tmp_path / "b.json").read_text())
    assert not result["models"][0].get("accuracy")
    assert result["models"][0]["results"][0]["speedup_vs_float32"] is None
    assert result["settings"]["input"] == "synthetic crop" and result["pipeline"] is None
    assert any("no float32 model" in n for n in result["notes"])
    assert any("plot skipped" in n for n in result["notes"]) and not (tmp_path / "b.png").exists()
    assert "speed-up vs float32" not in captured.out and "Not measured" in captured.out
    assert any("mobilenetv2_224_float32.tflite not in" in n for n in result["notes"])
    assert result["pi_estimate"] is None and "Not estimated" in captured.out


def test_bad_model_is_a_usage_error(tmp_path, capfd):
    (tmp_path / "junk.tflite").write_bytes(b"not a model")
    assert hemato(["bench", str(tmp_path / "junk.tflite")]) == 2
    assert "not a TFLite model" in capfd.readouterr().err


def test_default_models_come_from_a_models_folder(tmp_path):
    from benchmarks.bench import default_models
    with pytest.raises(ValueError, match="no .tflite models"):
        default_models([tmp_path / "here", tmp_path / "repo"])
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "m_int8.tflite").write_bytes(b"")
    assert default_models([tmp_path / "here", tmp_path / "repo"]) == [tmp_path / "repo" / "m_int8.tflite"]


def test_variant_pairing_and_alternating_order():
    from benchmarks.bench import base_name, job_order, variant_of
    assert variant_of(Path("wbc_fp16.tflite"), {}) == "float16"
    assert variant_of(Path("wbc_fp16.tflite"), {"variant": "dynamic"}) == "dynamic"
    assert variant_of(Path("model.tflite"), {}) == "unknown"
    assert base_name(Path("wbc_mobilenetv2_int8.tflite")) == "wbc_mobilenetv2"
    assert job_order(2, [1, 4], 1) == [(0, 1, 0), (1, 1, 0), (1, 4, 0), (0, 4, 0)]


def test_standard_models_are_not_our_float32_reference():
    """Without a float32 of ours, our int8 has no speed-up (not one against the standard MobileNetV2)."""
    from benchmarks.bench import add_speedups

    def model(name, variant, base, p50, reference=False):
        return {"name": name, "variant": variant, "base": base, "reference": reference,
                "results": [{"threads": 1, "latency_ms": {"p50": p50}}]}
    ours = model("wbc_int8.tflite", "int8", "wbc", 6.0)
    standard = [model("mobilenetv2_224_float32.tflite", "float32", "mobilenetv2_224", 3.0, True),
                model("mobilenetv2_224_int8.tflite", "int8", "mobilenetv2_224", 2.0, True)]
    assert add_speedups([ours, *standard]) is False
    assert ours["speedup_reference"] is None and ours["results"][0]["speedup_vs_float32"] is None
    assert standard[1]["results"][0]["speedup_vs_float32"] == 1.5
    ours_float = model("wbc_float32.tflite", "float32", "wbc", 12.0)
    assert add_speedups([ours_float, ours, *standard]) is True
    assert ours["results"][0]["speedup_vs_float32"] == 2.0


def test_plot_is_skipped_with_a_note_without_matplotlib(monkeypatch, tmp_path):
    from benchmarks.report import write_plot
    result = {"machine": {"cpu_model": "x", "cores": 1},
              "models": [{"variant": "int8", "accuracy": {"accuracy": 0.9},
                          "results": [{"threads": 1, "latency_ms": {"p50": 1.0}}]}]}
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert "matplotlib is not installed" in write_plot(result, tmp_path / "p.png")
    assert not (tmp_path / "p.png").exists()
