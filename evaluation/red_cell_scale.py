"""The red-cell estimate over folders of images: how often it finds no scale, its median and spread, and whether
it follows the image when the image is resampled.

    python -m evaluation.red_cell_scale ../shared/data/blood-cells/TEST ../shared/data/pbc

Every image (searched recursively) is estimated as `hemato run` does (edge_app.core.scale). Every Nth image with an
estimate (--copies-every) is also resampled by each --factors (INTER_AREA down, INTER_CUBIC up) and estimated
again; a copy's ratio is its estimate / factor / the original's, 1.0 when the estimate scales with the image.
Prints a Markdown table, one row per folder (--json: the same figures as JSON).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_app.core.dataset import images_in
from edge_app.core.scale import estimate_rbc_diameter, image_diameters
from hemato.argtypes import output_file

FACTORS = (0.5, 2.0, 3.0)


def resampled(bgr: np.ndarray, factor: float) -> np.ndarray:
    """The image resampled by `factor` (INTER_AREA when shrinking, INTER_CUBIC when enlarging); itself at 1."""
    if factor == 1.0:
        return bgr
    size = (max(1, round(bgr.shape[1] * factor)), max(1, round(bgr.shape[0] * factor)))
    return cv2.resize(bgr, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC)


def folder_scale(paths: Sequence[Path], factors: Sequence[float] = FACTORS, copies_every: int = 10,
                 progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """The estimate's figures over `paths`: counts, share without an estimate, median and quartiles (pixels),
    and per factor the ratio of the resampled copies' estimates (median, 10th and 90th percentiles)."""
    diameters, unreadable, with_estimate = [], 0, 0
    ratios: dict[float, list[float]] = {f: [] for f in factors}
    for bgr, diameter in image_diameters(paths, progress):
        if bgr is None:
            unreadable += 1
            continue
        diameters.append(diameter)
        if diameter is None:
            continue
        if copies_every and with_estimate % copies_every == 0:
            for f in factors:
                copy, _ = estimate_rbc_diameter(resampled(bgr, f))
                if copy is not None:
                    ratios[f].append(copy / f / diameter)
        with_estimate += 1
    found = np.array([d for d in diameters if d is not None], np.float64)
    result: dict[str, Any] = {"images": len(paths), "unreadable": unreadable,
                              "no_estimate_share": 1 - len(found) / len(diameters) if diameters else None}
    if len(found):
        q1, median, q3 = np.percentile(found, [25, 50, 75])
        result.update(median_px=float(median), q1_px=float(q1), q3_px=float(q3))
    result["copies"] = {str(f): {"frames": len(r), "median": float(np.median(r)),
                                 "p10": float(np.percentile(r, 10)), "p90": float(np.percentile(r, 90))}
                        for f, r in ratios.items() if r}
    return result


def markdown_table(results: dict[str, dict[str, Any]], factors: Sequence[float]) -> str:
    """One row per folder: images (and how many could not be read), share of the readable ones without an
    estimate, median and IQR, each factor's ratio."""
    head = "| folder | images | no estimate | median px | IQR px |" + "".join(f" {f:g}x ratio (p10-p90) |" for f in factors)
    lines = [head, "|---|---:|---:|---:|---:|" + "---:|" * len(factors)]
    for folder, r in results.items():
        share = "-" if r["no_estimate_share"] is None else f"{100 * r['no_estimate_share']:.1f} %"
        images = f"{r['images']} ({r['unreadable']} unreadable)" if r["unreadable"] else str(r["images"])
        cells = [folder, images, share]
        cells += [f"{r['median_px']:.1f}", f"{r['q1_px']:.1f}-{r['q3_px']:.1f}"] if "median_px" in r else ["-", "-"]
        for f in factors:
            c = r["copies"].get(str(f))
            cells.append(f"{c['median']:.3f} ({c['p10']:.3f}-{c['p90']:.3f}), {c['frames']} frames" if c else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluation.red_cell_scale", description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="folders of images (searched recursively)")
    parser.add_argument("--factors", nargs="*", type=float, default=list(FACTORS),
                        help="resampling factors of the copies (default: 0.5 2 3; none: no copies)")
    parser.add_argument("--copies-every", type=int, default=10, metavar="N",
                        help="resample every Nth image with an estimate (default 10)")
    parser.add_argument("--json", type=output_file, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    results = {}
    for folder in args.folders:
        if not folder.is_dir():
            print(f"error: {folder} is not a folder", file=sys.stderr)
            return 2
        paths = images_in(folder, recursive=True)
        if not paths:
            print(f"error: no images in {folder}", file=sys.stderr)
            return 2
        results[str(folder)] = folder_scale(
            paths, args.factors, args.copies_every,
            lambda done, total, name=folder.name: print(f"{name}: {done}/{total} images", file=sys.stderr, flush=True))
    print(markdown_table(results, args.factors))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
