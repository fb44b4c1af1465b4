"""Measure one model at one thread count in a process of its own: load, warm-up, latency, memory, accuracy.

`python -m benchmarks.latency MODEL --threads 2 ...` prints one JSON line. bench.py starts a fresh
process per (model, threads), so the peak RSS and the interpreter's thread pool and caches belong to
that model alone.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

CROPS_FROM_DATA = 32  # distinct real crops cycled through the timed invokes
PROGRESS_EVERY_S = 5.0


class BenchError(RuntimeError):
    """A measurement could not be made; the message says why."""


def peak_rss_bytes() -> int:
    """This process's peak resident memory (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def current_rss_bytes() -> int | None:
    """Resident memory now (Linux /proc), or None where it cannot be read."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def summarise(samples_ms: list[float] | np.ndarray) -> dict[str, float]:
    """Percentiles, mean, spread and count of latency samples in milliseconds."""
    a = np.asarray(samples_ms, np.float64)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"n": int(a.size), "p50": float(p50), "p95": float(p95), "p99": float(p99), "mean": float(a.mean()),
            "std": float(a.std()), "min": float(a.min()), "max": float(a.max())}


def spread(items: list, count: int | None) -> list:
    """At most `count` items spaced evenly over the list (so a subset covers every class folder)."""
    if count is None or count >= len(items):
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, max(count, 1)).round().astype(int)]


def synthetic_crop(size: int) -> np.ndarray:
    """A deterministic RGB uint8 crop for timing when no images are given."""
    return np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)


def data_crops(data: Path, settings, limit: int = CROPS_FROM_DATA) -> list[np.ndarray]:
    """Real model inputs: the largest located cell of up to `limit` labelled images spread over the classes."""
    from edge_app.core.crops import file_cell_crop
    from edge_app.core.dataset import labelled_images
    crops = []
    for path, _ in spread(labelled_images(data), limit):
        crop, _ = file_cell_crop(path, settings)
        if crop is not None:
            crops.append(crop)
    return crops


def time_invokes(classifier, crops: list[np.ndarray], runs: int) -> list[float]:
    """Milliseconds of each set_tensor+invoke+get_tensor (Classifier.raw_outputs), GC paused."""
    samples = np.empty(runs, np.int64)
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(runs):
            crop = crops[i % len(crops)]
            start = time.perf_counter_ns()
            classifier.raw_outputs(crop)
            samples[i] = time.perf_counter_ns() - start
    finally:
        if was_enabled:
            gc.enable()
    return (samples / 1e6).tolist()


def accuracy(classifier, data: Path, max_images: int | None = None,
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Top-1 accuracy of the largest located cell per labelled image; no located cell counts as wrong."""
    from edge_app.core.crops import file_cell_crop
    from edge_app.core.dataset import labelled_images
    pairs = spread(labelled_images(data), max_images)
    per_class: dict[str, dict[str, int]] = {}
    located = correct = 0
    last = time.perf_counter()
    for k, (path, label) in enumerate(pairs, 1):
        counts = per_class.setdefault(label, {"n": 0, "located": 0, "correct": 0})
        counts["n"] += 1
        crop, _ = file_cell_crop(path, classifier.crop_settings)
        if crop is not None:
            located += 1
            counts["located"] += 1
            hit = classifier.labels[int(np.argmax(classifier.predict(crop)))] == label
            correct += hit
            counts["correct"] += hit
        if progress and time.perf_counter() - last > PROGRESS_EVERY_S:
            last = time.perf_counter()
            progress(f"accuracy {classifier.name}: {k}/{len(pairs)} images")
    n = len(pairs)
    return {"data": str(data), "n": n, "located": located, "correct": correct, "accuracy": correct / n,
            "per_class": per_class, "unknown_labels": sorted(set(per_class) - set(classifier.labels))}


def _load_and_time(load: Callable[[], Any], crops_for: Callable[[Any], list[np.ndarray]], runs: int,
                   warmup: int) -> tuple[Any, dict[str, Any]]:
    """Load a model (timed, with the memory it adds), warm it up on its crops and time `runs` invokes.

    load() returns a Classifier or a BareModel; crops_for(model) the crops it is timed on.
    """
    gc.collect()
    baseline = current_rss_bytes()
    if baseline is None:
        baseline = peak_rss_bytes()
    start = time.perf_counter_ns()
    model = load()
    load_ms = (time.perf_counter_ns() - start) / 1e6
    crops = crops_for(model)
    start = time.perf_counter_ns()
    model.raw_outputs(crops[0])
    first_ms = (time.perf_counter_ns() - start) / 1e6
    for i in range(max(warmup - 1, 0)):
        model.raw_outputs(crops[i % len(crops)])
    samples = time_invokes(model, crops, runs)
    peak = peak_rss_bytes()
    stats = summarise(samples)
    return model, {
        "runtime": model.runtime, "input_dtype": model.input_dtype, "output_dtype": model.output_dtype,
        "input_size": model.input_size, "load_ms": load_ms, "first_invoke_ms": first_ms, "warmup": warmup,
        "latency_ms": stats, "fps": 1000.0 / stats["mean"], "samples_ms": samples, "peak_rss_bytes": peak,
        "baseline_rss_bytes": baseline, "rss_delta_bytes": peak - baseline,
    }


def measure(model: Path, threads: int, runs: int, warmup: int, data: Path | None = None,
            max_images: int | None = None, with_accuracy: bool = False) -> dict[str, Any]:
    """Load the model, warm it up, time `runs` invokes, read peak memory, then (optionally) its accuracy."""
    from edge_app.core.metadata import read_model_metadata
    from edge_app.core.model import Classifier, interpreter_class
    from edge_app.core.vision import CropSettings

    interpreter_class()  # import the runtime before the baseline: its import is not the model's memory
    settings = CropSettings.from_metadata(read_model_metadata(model))
    crops = data_crops(data, settings) if data else []  # read before the baseline: not the model's memory
    source = f"{len(crops)} real crops" if crops else "synthetic crop"
    crops = crops or [synthetic_crop(settings.input_size)]
    classifier, figures = _load_and_time(lambda: Classifier(model, threads=threads), lambda _: crops, runs, warmup)
    result = {"model": str(model), "threads": threads, "input": source, **figures}
    if with_accuracy and data:
        result["accuracy"] = accuracy(classifier, data, max_images, lambda m: print(m, file=sys.stderr))
    return result


class BareModel:
    """A .tflite without HematoVision metadata (the standard reference models), timed like a Classifier."""

    def __init__(self, path: Path, threads: int):
        from edge_app.core.model import interpreter_class
        interpreter, self.runtime = interpreter_class()
        self.name = Path(path).name
        self._interp = interpreter(model_path=str(path), num_threads=threads)
        self._interp.allocate_tensors()
        self._in, self._out = self._interp.get_input_details()[0], self._interp.get_output_details()[0]
        self.input_size = int(self._in["shape"][1])
        self.input_dtype = np.dtype(self._in["dtype"]).name
        self.output_dtype = np.dtype(self._out["dtype"]).name

    def raw_outputs(self, rgb: np.ndarray) -> np.ndarray:
        self._interp.set_tensor(self._in["index"], rgb[None].astype(self._in["dtype"]))
        self._interp.invoke()
        return self._interp.get_tensor(self._out["index"])[0]


def measure_bare(model: Path, threads: int, runs: int, warmup: int) -> dict[str, Any]:
    """Load, warm-up and latency of a model without metadata, on a synthetic crop (no accuracy)."""
    from edge_app.core.model import interpreter_class
    interpreter_class()
    _, figures = _load_and_time(lambda: BareModel(model, threads), lambda bare: [synthetic_crop(bare.input_size)],
                                runs, warmup)
    return {"model": str(model), "threads": threads, "input": "synthetic crop", **figures}


def print_json_result(prog: str, compute: Callable[[], dict[str, Any]]) -> int:
    """A measuring process's end: compute() as one JSON line on stdout (exit 0), or its error on stderr (2)."""
    from edge_app.core.metadata import ModelFileError
    try:
        result = compute()
    except (ModelFileError, ValueError, RuntimeError, OSError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


def run_isolated(module: str, argv: list[str]) -> dict[str, Any]:
    """Run `python -m module argv` in a fresh interpreter and return the JSON it prints last on stdout."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run([sys.executable, "-m", module, *argv], stdout=subprocess.PIPE, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise BenchError(f"{module} {' '.join(argv)} failed (exit status {proc.returncode}); see the messages above")
    return json.loads(lines[-1])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=__doc__)
    parser.add_argument("model", type=Path)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--data", type=Path, help="labelled folder: real crops, and accuracy with --accuracy")
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--accuracy", action="store_true", help="also classify every labelled image in --data")
    parser.add_argument("--bare", action="store_true", help="a model without HematoVision metadata: latency only")
    return parser


def worker(argv: list[str] | None = None) -> int:
    """Entry point of the measuring process: one JSON line on stdout, errors on stderr."""
    args = _parser().parse_args(argv)
    if args.bare:
        return print_json_result("benchmarks.latency",
                                 lambda: measure_bare(args.model, args.threads, args.runs, args.warmup))
    return print_json_result("benchmarks.latency", lambda: measure(
        args.model, args.threads, args.runs, args.warmup, args.data, args.max_images, args.accuracy))


if __name__ == "__main__":
    sys.exit(worker())
