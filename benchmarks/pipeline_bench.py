"""Time the whole `hemato run` pipeline per image, stage by stage (edge_app.run.results.STAGES), on a folder.

`python -m benchmarks.pipeline_bench MODEL FOLDER --threads N` prints one JSON line; bench.py runs it
in a fresh process and sets its images/s beside the bare model's, so the overhead around invoke shows.
It uses the app's own pieces: edge_app.core.sources.read_image, edge_app.core.pipeline.classify_frame and
edge_app.run.results.CsvWriter (header once, a flush per row).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.latency import PROGRESS_EVERY_S, peak_rss_bytes, print_json_result, spread, summarise
from edge_app.run.results import STAGES

WARMUP_IMAGES = 0  # images run untimed before the timed ones: none, `hemato run` warms up only as below


def _one_image(path: Path, classifier, writer) -> tuple[dict[str, float], int] | None:
    """Process one image as `hemato run` does; (stage ms, cells), or None when it cannot be decoded."""
    from edge_app.core.pipeline import classify_frame
    from edge_app.core.sources import read_image
    start = time.perf_counter()
    image, error = read_image(path)
    decode_ms = (time.perf_counter() - start) * 1000
    if image is None:
        writer.write_error(str(path), 0, error)
        return None
    result = classify_frame(classifier, image)
    timings = {"decode": decode_ms, **result.timings_ms}
    latency = sum(timings.values())
    start = time.perf_counter()
    for index, cell in enumerate(result.cells):
        writer.write_cell(str(path), 0, index, cell, latency, result.rbc_px)
    timings["write"] = (time.perf_counter() - start) * 1000
    return timings, len(result.cells)


def pipeline_timings(model: Path, folder: Path, threads: int, max_images: int | None = None,
                     warmup_images: int = WARMUP_IMAGES) -> dict[str, Any]:
    """Mean ms per stage, total ms per image and images/s over the folder's images (searched recursively).

    images/s counts the start-up (loading the model and its runtime, and `hemato run`'s warm-up on a
    made-up frame) and any warm-up images, as a folder run pays them: images / (start-up + warm-up + every
    image)."""
    from edge_app.core.dataset import images_in
    from edge_app.core.model import Classifier
    from edge_app.run.cli import warm_up
    from edge_app.run.results import CsvWriter

    paths = spread(images_in(folder, recursive=True), max_images)
    if not paths:
        raise ValueError(f"no images under {folder}")
    begin = time.perf_counter()
    classifier = Classifier(model, threads=threads)
    warm_up(classifier)  # as `hemato run` does before its first image
    startup_ms = (time.perf_counter() - begin) * 1000
    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    wall_ms: list[float] = []
    cells = no_cell = failed = 0
    with tempfile.TemporaryDirectory(prefix="hemato-bench-") as tmp:
        writer = CsvWriter(Path(tmp) / "bench.csv", classifier.labels)
        for path in paths[:warmup_images]:  # first frames pay one-off costs (caches, lazy inits)
            _one_image(path, classifier, writer)
        start = last = time.perf_counter()
        for k, path in enumerate(paths, 1):
            t0 = time.perf_counter()
            done = _one_image(path, classifier, writer)
            wall_ms.append((time.perf_counter() - t0) * 1000)
            if done is None:
                failed += 1
            else:
                for stage, ms in done[0].items():
                    stages[stage].append(ms)
                cells += done[1]
                no_cell += done[1] == 0
            if time.perf_counter() - last > PROGRESS_EVERY_S:
                last = time.perf_counter()
                print(f"pipeline {classifier.name}: {k}/{len(paths)} images", file=sys.stderr)
        elapsed = time.perf_counter() - start
        writer.close()
    with_startup = time.perf_counter() - begin
    decoded = len(paths) - failed
    stage_mean = {s: float(np.mean(v)) if v else 0.0 for s, v in stages.items()}
    return {
        "model": str(model), "threads": threads, "folder": str(folder), "warmup_images": warmup_images,
        "images": len(paths), "decoded": decoded, "failed": failed, "images_without_cell": no_cell,
        "cells": cells, "cells_per_image": cells / decoded if decoded else 0.0,
        "stage_mean_ms": stage_mean,
        "other_ms": float(np.mean(wall_ms)) - sum(stage_mean.values()) if decoded else 0.0,
        "total_ms": summarise(wall_ms), "startup_ms": startup_ms,
        "images_per_s": len(paths) / with_startup if with_startup else 0.0,
        "images_per_s_after_startup": len(paths) / elapsed if elapsed else 0.0,
        "elapsed_s": with_startup, "peak_rss_bytes": peak_rss_bytes(),
    }


def worker(argv: list[str] | None = None) -> int:
    """Entry point of the measuring process: one JSON line on stdout, errors on stderr."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pipeline_bench", description=__doc__)
    parser.add_argument("model", type=Path)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--warmup-images", type=int, default=WARMUP_IMAGES)
    args = parser.parse_args(argv)
    return print_json_result("benchmarks.pipeline_bench", lambda: pipeline_timings(
        args.model, args.folder, args.threads, args.max_images, args.warmup_images))


if __name__ == "__main__":
    sys.exit(worker())
