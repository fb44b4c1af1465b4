"""`hemato bench`: latency, size, memory and accuracy of TFLite models, and of the whole pipeline, on this machine.

Every (model, thread count) is measured in a fresh process (benchmarks.latency) so that its peak memory,
thread pool and caches are its own; models run in alternating order so that drifting machine load does
not favour one of them. Exit status: 0 done, 1 a measurement failed (the rest is reported), 2 bad arguments.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import benchmarks
from benchmarks import report
from benchmarks.latency import BenchError, run_isolated, summarise
from benchmarks.machine import cpu_temperature_c, describe_machine, load_average
from hemato.argtypes import output_file, output_folder, positive_int

REFERENCE_RUNS = 200
# The standard models (python -m benchmarks.reference_models) and XNNPACK's published latency of the
# float32 one on a Raspberry Pi 4 (4 threads): this machine's ratio to it gives a Pi estimate.
REFERENCE_DIR = Path(__file__).resolve().parent / "reference"
STANDARD_FLOAT32 = "mobilenetv2_224_float32.tflite"
PI4_STANDARD_FLOAT32_MS = 47.0
PI4_SOURCE = "XNNPACK's published figure for float32 MobileNetV2 on a Raspberry Pi 4, 4 threads"
VARIANT_ORDER = ("float32", "float16", "dynamic", "int8")
SUFFIX_VARIANTS = {"float32": "float32", "fp32": "float32", "f32": "float32", "float16": "float16",
                   "fp16": "float16", "f16": "float16", "dynamic": "dynamic", "drq": "dynamic",
                   "int8": "int8", "uint8": "int8", "quant": "int8"}
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `hemato bench`."""
    cores = os.cpu_count() or 1
    parser.add_argument("models", nargs="*", type=Path,
                        help="the .tflite models (default: every *.tflite in models/ here, else the installed ones)")
    parser.add_argument("--data", type=Path, help="labelled images, DATA/<CLASS>/*.jpg or DATA/<class>_*.jpg: real "
                                                  "crops for timing, top-1 accuracy, and the default "
                                                  "--pipeline-data (default: samples/, here or in the repository)")
    parser.add_argument("--no-data", action="store_true", help="no labelled images: synthetic crops for timing, "
                                                                "no accuracy, no pipeline table")
    parser.add_argument("--threads", type=positive_int, nargs="+", default=sorted({1, min(2, cores), cores}),
                        help=f"interpreter thread counts to measure (default: 1, 2 and all cores, here {cores})")
    parser.add_argument("--runs", type=positive_int, default=REFERENCE_RUNS,
                        help=f"timed invokes per model and thread count (default and reference: {REFERENCE_RUNS})")
    parser.add_argument("--warmup", type=int, default=20, help="untimed invokes before timing (default: 20)")
    parser.add_argument("--repeat", type=positive_int, default=1,
                        help="rounds per model and thread count, each a fresh process, order reversed "
                             "every round; samples are pooled (default: 1)")
    parser.add_argument("--max-images", type=positive_int, default=None,
                        help="use at most this many images (spread over the classes) for accuracy and the pipeline")
    parser.add_argument("--pipeline-data", type=Path, help="folder of images, searched recursively, for the "
                                                           "whole-pipeline table (default: --data)")
    parser.add_argument("--pipeline-model", type=Path,
                        help="model for the pipeline table (default: the int8 variant, else the first model)")
    parser.add_argument("--pipeline-threads", type=positive_int, default=None,
                        help="threads for the pipeline table (default: what `hemato run` uses, every core)")
    parser.add_argument("--no-pipeline", action="store_true", help="skip the whole-pipeline table")
    parser.add_argument("--reference", type=Path, default=REFERENCE_DIR,
                        help="folder of the standard MobileNetV2 models timed for the Raspberry Pi estimate "
                             "(default: benchmarks/reference; build them with python -m benchmarks.reference_models)")
    parser.add_argument("--no-reference", action="store_true", help="do not time the standard models")
    parser.add_argument("--out-dir", type=output_folder, help="write NAME.md, NAME.json and NAME.png here "
                                                     "(e.g. benchmarks/results)")
    parser.add_argument("--name", default="bench", help="file name stem for --out-dir (default: bench)")
    parser.add_argument("--json", type=output_file, help="write the full result as JSON here")
    parser.add_argument("--markdown", type=output_file, help="write the Markdown report here (it is always printed)")
    parser.add_argument("--plot", type=output_file, help="write the accuracy-vs-latency PNG here (default: beside "
                                                  "the JSON or Markdown file)")
    parser.add_argument("--no-plot", action="store_true", help="do not draw the PNG")


def default_models(folders: list[Path] | None = None) -> list[Path]:
    """Every *.tflite in ./models, else the installed models (hemato_models); ValueError when there are none."""
    from edge_app.core.model_path import installed_models_folder
    tried = list(dict.fromkeys(folders or [Path.cwd() / "models", installed_models_folder()]))
    for folder in tried:
        found = sorted(folder.glob("*.tflite")) if folder.is_dir() else []
        if found:
            return found
    raise ValueError(f"no .tflite models in {' or '.join(str(f) for f in tried)}: "
                     "pass model paths, or convert some with `hemato convert`")


def default_data(folders: list[Path] | None = None) -> Path | None:
    """The shipped samples/ (labelled by file name), here or in the repository; None when neither has images."""
    from edge_app.core.dataset import images_in
    for folder in folders or [Path.cwd() / "samples", Path(benchmarks.__file__).resolve().parents[1] / "samples"]:
        if folder.is_dir() and images_in(folder):
            return folder
    return None


def variant_of(path: Path, metadata: dict[str, Any]) -> str:
    """The quantisation variant: metadata "variant", else the file name suffix (model_int8.tflite), else unknown."""
    if metadata.get("variant"):
        return str(metadata["variant"])
    return SUFFIX_VARIANTS.get(path.stem.rsplit("_", 1)[-1].lower(), "unknown")


def base_name(path: Path) -> str:
    """The file stem without its variant suffix, to pair each model with its own float32."""
    stem, _, suffix = path.stem.rpartition("_")
    return stem if stem and suffix.lower() in SUFFIX_VARIANTS else path.stem


def job_order(n_models: int, threads: list[int], repeat: int) -> list[tuple[int, int, int]]:
    """(model index, threads, round): models of one thread count side by side, their order reversed each
    thread count and round (A B, B A, ...) so that drifting load does not favour one model."""
    jobs, flip = [], False
    for rnd in range(repeat):
        for t in threads:
            order = range(n_models - 1, -1, -1) if flip else range(n_models)
            jobs += [(i, t, rnd) for i in order]
            flip = not flip
    return jobs


def pool_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One result per (model, threads) from its rounds: samples pooled, load time the median, memory the max."""
    samples = [s for r in rounds for s in r["samples_ms"]]
    latency = summarise(samples)
    peak = max(rounds, key=lambda r: r["peak_rss_bytes"])
    return {"threads": rounds[0]["threads"], "load_ms": statistics.median(r["load_ms"] for r in rounds),
            "first_invoke_ms": statistics.median(r["first_invoke_ms"] for r in rounds),
            "latency_ms": latency, "fps": 1000.0 / latency["mean"],
            "peak_rss_bytes": peak["peak_rss_bytes"], "baseline_rss_bytes": peak["baseline_rss_bytes"],
            "rss_delta_bytes": peak["rss_delta_bytes"],
            "rounds": [{"p50": r["latency_ms"]["p50"], "mean": r["latency_ms"]["mean"], "load_ms": r["load_ms"],
                        "peak_rss_bytes": r["peak_rss_bytes"]} for r in rounds]}


def add_speedups(models: list[dict[str, Any]]) -> bool:
    """Set speedup_vs_float32 = float32 p50 / p50 at the same thread count; False when no float32 of ours is
    measured. A model pairs with the float32 of its own base name, else with our only float32; the standard
    MobileNetV2 files pair only with each other."""
    floats = [m for m in models if m["variant"] == "float32" and m["results"]]
    ours = [f for f in floats if not f.get("reference")]
    for m in models:
        own = [f for f in floats if f["base"] == m["base"]]
        ref = own[0] if own else (ours[0] if len(ours) == 1 and not m.get("reference") else None)
        ref_p50 = {r["threads"]: r["latency_ms"]["p50"] for r in ref["results"]} if ref else {}
        m["speedup_reference"] = ref["name"] if ref else None
        for r in m["results"]:
            base = ref_p50.get(r["threads"])
            r["speedup_vs_float32"] = base / r["latency_ms"]["p50"] if base else None
    return bool(ours)


def _note(notes: list[str], text: str) -> None:
    notes.append(text)
    print(f"hemato bench: {text}", file=sys.stderr)


def _check(args: argparse.Namespace, notes: list[str]) -> list[dict[str, Any]]:
    """Resolve and validate the models and folders (ValueError/ModelFileError say what is wrong)."""
    from edge_app.core.dataset import labelled_images
    from edge_app.core.metadata import read_model_metadata
    paths = list(dict.fromkeys(p.expanduser() for p in args.models)) or default_models()
    models = []
    for path in paths:
        meta = read_model_metadata(path)
        models.append({"name": path.name, "path": str(path), "variant": variant_of(path, meta),
                       "base": base_name(path), "size_bytes": path.stat().st_size,
                       "labels": meta["labels"], "input_size": meta.get("input_size")})
    rank = {v: k for k, v in enumerate(VARIANT_ORDER)}
    models.sort(key=lambda m: (m["base"], rank.get(m["variant"], len(rank)), m["name"]))
    if args.data is None and not args.no_data:
        args.data = default_data()
        if args.data is not None:
            _note(notes, f"no --data: accuracy and the pipeline table use the {len(labelled_images(args.data))} "
                         f"sample images in {args.data} (too few to compare models; give --data for that)")
    models += [] if args.no_reference else reference_models(args.reference, notes)
    if args.data:
        labelled_images(args.data)
    folder = args.pipeline_data or args.data
    if folder and not args.no_pipeline and not folder.is_dir():
        raise ValueError(f"--pipeline-data {folder} is not a folder")
    if args.pipeline_model:
        read_model_metadata(args.pipeline_model)
    if args.runs < REFERENCE_RUNS:
        _note(notes, f"--runs {args.runs} is below the reference {REFERENCE_RUNS}: p95/p99 are rough")
    cores = os.cpu_count() or 1
    if max(args.threads) > cores:
        _note(notes, f"{max(args.threads)} threads on {cores} cores: oversubscribed, those rows time contention")
    load = load_average()
    if load and load[0] > 0.5 * cores:
        _note(notes, f"1-minute load average {load[0]:g} on {cores} cores at start: other work shares the CPU, "
                     "timings are noisy")
    return models


def reference_models(folder: Path, notes: list[str]) -> list[dict[str, Any]]:
    """The standard MobileNetV2 files found in `folder` (no metadata: timed bare), with a note for those absent."""
    from benchmarks.reference_models import FILES
    found = []
    for variant, name in FILES.items():
        path = folder / name
        if path.is_file():
            found.append({"name": name, "path": str(path), "variant": variant, "base": base_name(path),
                          "size_bytes": path.stat().st_size, "reference": True})
        else:
            _note(notes, f"standard model {name} not in {folder}: build it with "
                         "`python -m benchmarks.reference_models` (needs TensorFlow)"
                  + ("; no Raspberry Pi estimate without it" if name == STANDARD_FLOAT32 else ""))
    return found


def add_pi_estimate(models: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Each (model, threads): p50 / the standard float32's p50 at the same thread count, and that ratio times
    the Pi 4's published 47 ms; None when the standard float32 was not measured."""
    standard = next((m for m in models if m["name"] == STANDARD_FLOAT32 and m.get("results")), None)
    if standard is None:
        return None
    base = {r["threads"]: r["latency_ms"]["p50"] for r in standard["results"]}
    for m in models:
        for r in m.get("results", []):
            if r["threads"] in base:
                r["vs_standard_float32"] = r["latency_ms"]["p50"] / base[r["threads"]]
                r["pi4_estimate_ms"] = r["vs_standard_float32"] * PI4_STANDARD_FLOAT32_MS
    return {"standard": STANDARD_FLOAT32, "pi4_standard_float32_ms": PI4_STANDARD_FLOAT32_MS, "source": PI4_SOURCE}


def fastest_threads(models: list[dict[str, Any]], path: Path | None) -> dict[str, Any] | None:
    """The thread count with the lowest p50 for one cell at a time on this machine, for the pipeline's model."""
    model = next((m for m in models if path is not None and Path(m["path"]).resolve() == path.resolve()), None)
    if model is None or not model.get("results"):
        return None
    best = min(model["results"], key=lambda r: r["latency_ms"]["p50"])
    from edge_app.core.model import default_threads
    return {"model": model["name"], "threads": best["threads"], "p50_ms": best["latency_ms"]["p50"],
            "run_default": default_threads()}


def _measure_models(models: list[dict[str, Any]], args: argparse.Namespace, notes: list[str]) -> bool:
    """Run every (model, threads, round) job in its own process; fill models[i]["results"]; False on a failure."""
    threads = sorted(set(args.threads))
    rounds: dict[tuple[int, int], list[dict[str, Any]]] = {}
    jobs = job_order(len(models), threads, args.repeat)
    ok = True
    for k, (i, t, rnd) in enumerate(jobs, 1):
        m = models[i]
        if m.get("error"):
            continue
        argv = [m["path"], "--threads", str(t), "--runs", str(args.runs), "--warmup", str(args.warmup)]
        if m.get("reference"):
            argv.append("--bare")
        elif args.data:
            argv += ["--data", str(args.data)]
            if t == threads[-1] and rnd == 0:
                argv += ["--accuracy"] + (["--max-images", str(args.max_images)] if args.max_images else [])
        print(f"[{k}/{len(jobs)}] {m['name']}, {t} thread(s)" + (f", round {rnd + 1}" if args.repeat > 1 else "")
              + (" + accuracy" if "--accuracy" in argv else ""), file=sys.stderr)
        try:
            out = run_isolated("benchmarks.latency", argv)
        except BenchError as exc:
            m["error"], ok = str(exc), False
            _note(notes, f"{m['name']}: {exc}")
            continue
        print(f"    p50 {out['latency_ms']['p50']:.3f} ms, {out['fps']:.1f} FPS, load {out['load_ms']:.1f} ms",
              file=sys.stderr)
        rounds.setdefault((i, t), []).append(out)
        if "accuracy" in out:
            m["accuracy"] = out["accuracy"]
            if out["accuracy"]["unknown_labels"]:
                _note(notes, f"{m['name']}: class folders not among its labels: {out['accuracy']['unknown_labels']}")
        m.update(runtime=out["runtime"], input_dtype=out["input_dtype"], output_dtype=out["output_dtype"])
        m["input"] = out["input"]
    for i, m in enumerate(models):
        m["results"] = [pool_rounds(rounds[(i, t)]) for t in threads if (i, t) in rounds]
    return ok


def pipeline_model(models: list[dict[str, Any]], args: argparse.Namespace) -> Path:
    """--pipeline-model, else our int8 file, else the first model."""
    ours = [m for m in models if not m.get("reference")]
    return args.pipeline_model or Path(next((m for m in ours if m["variant"] == "int8"), ours[0])["path"])


def _measure_pipeline(models: list[dict[str, Any]], args: argparse.Namespace) -> tuple[dict | None, str]:
    """The whole-pipeline measurement in its own process, with its ratio to the bare model; (result, why not)."""
    from edge_app.core.model import default_threads
    folder = args.pipeline_data or args.data
    if args.no_pipeline:
        return None, "--no-pipeline"
    if not folder:
        return None, "give --data or --pipeline-data (a folder of images)"
    model = pipeline_model(models, args)
    threads = args.pipeline_threads or default_threads()
    argv = [str(model), str(folder), "--threads", str(threads)]
    argv += ["--max-images", str(args.max_images)] if args.max_images else []
    print(f"[pipeline] {model.name}, {threads} thread(s) over {folder}", file=sys.stderr)
    result = run_isolated("benchmarks.pipeline_bench", argv)
    bare = next((r["fps"] for m in models if Path(m["path"]).resolve() == model.resolve()
                 for r in m["results"] if r["threads"] == threads), None)
    result["bare_images_per_s"] = bare
    result["pipeline_over_bare"] = result["images_per_s"] / bare if bare else None
    return result, ""


def _outputs(args: argparse.Namespace) -> tuple[Path | None, Path | None, Path | None]:
    """Where the JSON, Markdown and PNG go (--out-dir, then the explicit paths; the PNG beside the others)."""
    out = args.out_dir
    json_path = args.json or (out / f"{args.name}.json" if out else None)
    md_path = args.markdown or (out / f"{args.name}.md" if out else None)
    plot = args.plot or (out / f"{args.name}.png" if out else None)
    if plot is None and (json_path or md_path):
        plot = (json_path or md_path).with_suffix(".png")
    return json_path, md_path, None if args.no_plot else plot


def main(args: argparse.Namespace) -> int:
    """Validate, measure every model and thread count, time the pipeline, then print and write the report."""
    from edge_app.core.metadata import ModelFileError
    from edge_app.core.model import interpreter_class, runtime_version
    notes: list[str] = []
    try:
        models = _check(args, notes)
        runtime = interpreter_class()[1]
    except (ValueError, ModelFileError, RuntimeError) as exc:
        print(f"hemato bench: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    machine = describe_machine(runtime, runtime_version(runtime))
    ok = _measure_models(models, args, notes)
    if not add_speedups(models):
        _note(notes, "no float32 model in the set: no speed-up column")
    try:
        pipeline, skipped = _measure_pipeline(models, args) if any(m["results"] for m in models) else (None, "no model was measured")
    except BenchError as exc:
        pipeline, skipped, ok = None, str(exc), False
    machine.update(load_average_end=load_average(), cpu_temp_c_end=cpu_temperature_c())
    inputs = sorted({m["input"] for m in models if m.get("input")})
    result = {
        "schema": "hemato-bench/1", "machine": machine,
        "settings": {"threads": sorted(set(args.threads)), "runs": args.runs, "warmup": args.warmup,
                     "repeat": args.repeat, "data": str(args.data) if args.data else None,
                     "max_images": args.max_images, "input": ", ".join(inputs) or "–",
                     "isolation": "one process per model, thread count and round"},
        "models": models, "pipeline": pipeline, "pipeline_skipped": skipped, "notes": notes,
        "pi_estimate": add_pi_estimate(models),
        "fastest_threads": fastest_threads(models, pipeline_model(models, args)),
    }
    json_path, md_path, plot_path = _outputs(args)
    why = report.write_plot(result, plot_path) if plot_path else "no plot file asked for"
    if plot_path and why:
        _note(notes, why)
    markdown = report.to_markdown(result)
    print(markdown)
    if md_path:
        md_path.parent.mkdir(parents=True, exist_ok=True)
        md_path.write_text(markdown, encoding="utf-8")
    if json_path:
        report.write_json(result, json_path)
    written = [str(p) for p in (md_path, json_path) if p] + ([str(plot_path)] if not why else [])
    if written:
        print(f"hemato bench: wrote {', '.join(written)}", file=sys.stderr)
    return EXIT_OK if ok else EXIT_FAILED
