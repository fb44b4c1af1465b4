"""Write a benchmark result as a Markdown deployment report, JSON, and a PNG of accuracy against latency."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edge_app.run.results import STAGES as PIPELINE_STAGES

MB = 1e6

MODEL_COLUMNS = ["model", "variant", "threads", "size MB", "accuracy", "load ms", "p50 ms", "p95 ms", "p99 ms",
                 "mean ms", "FPS", "speed-up vs float32", "peak RSS MB"]
PIPELINE_COLUMNS = ["model", "threads", "images", "cells", "start-up ms", *PIPELINE_STAGES,
                    "other", "total ms/image", "images/s", "bare model images/s", "pipeline / bare", "peak RSS MB"]
PI_COLUMNS = ["model", "variant", "threads", "p50 ms here", "× standard float32", "Pi 4 estimate ms",
              "Pi 4 estimate cells/s"]


def _ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if value >= 1 else f"{value:.3f}"


def _mb(size: int) -> str:
    return f"{size / MB:.2f}" if size >= MB else f"{size / MB:.3f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _table(columns: list[str], rows: list[list[str]], numeric_from: int) -> list[str]:
    align = ["---" if i < numeric_from else "---:" for i in range(len(columns))]
    return ["| " + " | ".join(columns) + " |", "|" + "|".join(align) + "|"] + ["| " + " | ".join(r) + " |" for r in rows]


def _machine_lines(m: dict[str, Any]) -> list[str]:
    board = f"{m['board']}, " if m.get("board") else ""
    lines = [f"- Machine: {board}{m['cpu_model']} ({m['arch']}, {m['cores']} cores), {m['os']}",
             f"- Python {m['python']}, {m['runtime']} {m['runtime_version']}; run {m['date']}"]
    state = []
    if m.get("load_average"):
        state.append("load average " + "/".join(f"{v:g}" for v in m["load_average"]) + " at start"
                     + (" and " + "/".join(f"{v:g}" for v in m["load_average_end"]) + " at end"
                        if m.get("load_average_end") else ""))
    if m.get("cpu_governor"):
        state.append(f"governor {m['cpu_governor']}")
    if m.get("cpu_temp_c") is not None:
        state.append(f"CPU {m['cpu_temp_c']} °C at start" + (f", {m['cpu_temp_c_end']} °C at end"
                                                              if m.get("cpu_temp_c_end") is not None else ""))
    return lines + ([f"- State: {'; '.join(state)}"] if state else [])


def model_rows(result: dict[str, Any]) -> list[list[str]]:
    """One Markdown row per (model, threads)."""
    rows = []
    for model in result["models"]:
        acc = model.get("accuracy")
        for run in model["results"]:
            lat = run["latency_ms"]
            speedup = run.get("speedup_vs_float32")
            rows.append([model["name"], model["variant"], str(run["threads"]), _mb(model["size_bytes"]),
                         _pct(acc["accuracy"]) if acc else "–", _ms(run["load_ms"]), _ms(lat["p50"]),
                         _ms(lat["p95"]), _ms(lat["p99"]), _ms(lat["mean"]), f"{run['fps']:.1f}",
                         f"{speedup:.2f}×" if speedup else "–", f"{run['peak_rss_bytes'] / MB:.1f} (+{run['rss_delta_bytes'] / MB:.1f})"])
    return rows


def pipeline_row(p: dict[str, Any]) -> list[str]:
    """The Markdown row of the whole-pipeline measurement."""
    s = p["stage_mean_ms"]
    ratio = p.get("pipeline_over_bare")
    return [Path(p["model"]).name, str(p["threads"]), str(p["images"]), str(p["cells"]), _ms(p.get("startup_ms"))] \
        + [_ms(s.get(k)) for k in PIPELINE_STAGES] \
        + [_ms(p["other_ms"]), _ms(p["total_ms"]["mean"]), f"{p['images_per_s']:.1f}",
           f"{p['bare_images_per_s']:.1f}" if p.get("bare_images_per_s") else "–",
           f"{ratio:.2f}" if ratio else "–", f"{p['peak_rss_bytes'] / MB:.1f}"]


def pi_rows(result: dict[str, Any]) -> list[list[str]]:
    """One row per (model, threads) with its ratio to the standard float32 model and the Pi 4 estimate."""
    rows = []
    for model in result["models"]:
        for run in model["results"]:
            if run.get("pi4_estimate_ms"):
                rows.append([model["name"], model["variant"], str(run["threads"]), _ms(run["latency_ms"]["p50"]),
                             f"{run['vs_standard_float32']:.3f}", _ms(run["pi4_estimate_ms"]),
                             f"{1000 / run['pi4_estimate_ms']:.1f}"])
    return rows


def to_markdown(result: dict[str, Any]) -> str:
    """The deployment report: machine, settings, the model table, accuracy details, the pipeline table, notes."""
    st = result["settings"]
    lines = ["# HematoVision Edge benchmark", ""] + _machine_lines(result["machine"])
    lines.append(f"- Per model and thread count, in a fresh process: load, {st['warmup']} warm-up invokes, "
                 f"{st['runs']} timed invokes x {st['repeat']} round(s) on {st['input']}"
                 + (f"; at most {st['max_images']} images for accuracy and the pipeline" if st.get("max_images") else ""))
    lines += ["", "## Models", ""]
    has_reference = any(r.get("speedup_vs_float32") for m in result["models"] for r in m["results"])
    columns = MODEL_COLUMNS if has_reference else [c for c in MODEL_COLUMNS if c != "speed-up vs float32"]
    rows = model_rows(result)
    if not has_reference:
        k = MODEL_COLUMNS.index("speed-up vs float32")
        rows = [r[:k] + r[k + 1:] for r in rows]
    lines += _table(columns, rows, numeric_from=2)
    lines += ["", "Latency is one set_tensor + invoke + get_tensor on one crop (FPS = 1000 / mean ms). "
              + ("Speed-up is float32 p50 / this p50 at the same thread count, within this run. "
                 if has_reference else "")
              + "Peak RSS is the whole process (Python, NumPy, OpenCV, runtime, model); in brackets its rise over "
              "the same process just before the model was loaded. MB = 10^6 bytes."]
    fastest = result.get("fastest_threads")
    if fastest:
        lines += ["", f"Threads: one cell at a time, {fastest['model']} is fastest here at {fastest['threads']} "
                      f"thread(s) (p50 {_ms(fastest['p50_ms'])} ms); `hemato run` uses {fastest['run_default']} by "
                      "default (`--threads`)."]
    if any(m.get("reference") for m in result["models"]):
        lines += ["", "mobilenetv2_224_*: the standard MobileNetV2 1.0 at 224 (whole backbone, one view; "
                      "`python -m benchmarks.reference_models`), timed on a synthetic crop."]
    accuracies = [(m["name"], m["accuracy"]) for m in result["models"] if m.get("accuracy")]
    if accuracies:
        lines += ["", f"Accuracy: top-1 of the largest located cell of each labelled image in "
                      f"`{accuracies[0][1]['data']}`; an image with no located cell counts as wrong.", ""]
        lines += [f"- {name}: {a['correct']}/{a['n']} correct, {a['located']} located ({_pct(a['accuracy'])})"
                  for name, a in accuracies]
    pi = result.get("pi_estimate")
    lines += ["", "## Raspberry Pi 4: an estimate, not a measurement", ""]
    if pi:
        lines += [f"Each model's p50 here as a multiple of the standard float32 MobileNetV2's ({pi['standard']}) at "
                  f"the same thread count, times {pi['pi4_standard_float32_ms']:g} ms ({pi['source']}). It assumes "
                  "the Pi's Cortex-A72 speeds up int8 against float32 as this CPU does; measure on the Pi to know.", ""]
        lines += _table(PI_COLUMNS, pi_rows(result), numeric_from=2)
    else:
        lines.append("Not estimated: the standard float32 MobileNetV2 was not measured (see the notes).")
    p = result.get("pipeline")
    lines += ["", "## Pipeline (`hemato run`)", ""]
    if p:
        lines += _table(PIPELINE_COLUMNS, [pipeline_row(p)], numeric_from=1)
        lines += ["", f"Mean ms per image and stage over `{p['folder']}` ({p['images_without_cell']} images without a "
                      f"cell, {p['failed']} unreadable). Invoke covers every cell of the image; other = loop overhead "
                      "outside the stages. images/s counts the start-up (model load and warm-up), as a folder run pays it; "
                      "pipeline / bare = that over the bare model's FPS at the same thread count. Peak RSS: the "
                      "whole process."]
    else:
        lines.append("Not measured: " + result.get("pipeline_skipped", "no image folder given"))
    if result.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def write_json(result: dict[str, Any], path: Path) -> None:
    """Everything measured, machine and settings included, as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def write_plot(result: dict[str, Any], path: Path) -> str | None:
    """PNG of accuracy (y) against p50 latency (x): one colour per model, a point per thread count; why not, or None."""
    measured = [m for m in result["models"] if m.get("accuracy") and m.get("results")]
    if not measured:
        return "plot skipped: accuracy needs --data"
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is not installed (pip install matplotlib)"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in measured:
        xs = [r["latency_ms"]["p50"] for r in m["results"]]
        y = 100 * m["accuracy"]["accuracy"]
        ax.plot(xs, [y] * len(xs), "-o", label=f"{m['variant']} ({m['name']})")
        for x, r in zip(xs, m["results"]):
            ax.annotate(f"{r['threads']}t", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    machine = result["machine"]
    ax.set_xlim(left=0)
    ax.set_xlabel("p50 latency per crop (ms); labels: interpreter threads")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"Accuracy vs latency: {machine['cpu_model']} ({machine['cores']} cores)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None
