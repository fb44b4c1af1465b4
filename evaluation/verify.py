"""`hemato verify REF CANDIDATE...`: compare TFLite models on labelled images, as a parity gate.

Every model sees the same images through edge_app's decoder, crop and Classifier. Imports only
numpy, OpenCV, edge_app and evaluation, so it runs on the device without TensorFlow.

The gate: a compared model may lose at most --max-drop points of accuracy; it must give the reference's
class on --min-agreement of the cells the reference answers (at or above its stored threshold); and
over all cells it may change no more classes than mirroring the crop changes the reference's own.
A mirrored cell is the same cell, so the reference's agreement with itself on mirrored crops is the
floor of what any perturbation must expect: near-ties flip either way. A fixed 99 % over all cells
rewarded overconfident models and failed calibrated ones on cells they already call UNCERTAIN.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_app.core.dataset import labelled_images, split_rows
from edge_app.core.frames import read_image
from edge_app.core.metadata import ModelFileError
from edge_app.core.model import Classifier
from edge_app.core.pipeline import decide, is_unusual_crop
from edge_app.core.vision import CropSettings, largest_cell_crop
from edge_app.core.wording import naming
from evaluation.calibration import coverage_of_answers, expected_calibration_error, reliability_bins, risk_coverage
from hemato.argtypes import output_file, output_folder, positive_int

PRINTED_DISAGREEMENTS = 20


class VerifyError(ValueError):
    """The models or the data cannot be compared; the message says what to fix."""


@dataclass
class Predictions:
    """One model's answers, image by image (None where no cell was found or the image is unreadable)."""

    classifier: Classifier
    top: list[str | None] = field(default_factory=list)
    probs: list[np.ndarray | None] = field(default_factory=list)
    raw_probs: list[np.ndarray | None] = field(default_factory=list)  # at temperature 1, for ECE before scaling
    answered: list[bool] = field(default_factory=list)  # not UNCERTAIN at the model's stored threshold
    mirror_top: list[str | None] = field(default_factory=list)  # the reference's class for the mirrored crop
    invoke_ms: list[float] = field(default_factory=list)


def load_models(paths: list[Path], threads: int | None) -> list[Classifier]:
    """Open every model; they must name the same classes as the first (the reference)."""
    models = []
    for path in paths:
        try:
            models.append(Classifier(path, threads=threads))
        except ModelFileError as exc:
            raise VerifyError(naming(path, exc)) from exc
    ref = models[0]
    for other in models[1:]:
        if set(other.labels) != set(ref.labels):
            raise VerifyError(f"label sets differ: {ref.name} has {ref.labels}, {other.name} has {other.labels}; "
                              "compare models converted from the same trained run")
        if other.crop_settings != ref.crop_settings:
            print(f"hemato verify: warning: {other.name} crops differently from {ref.name}; "
                  "each model gets its own crop", file=sys.stderr)
    return models


def load_data(data: Path, labels: list[str], split: str = "val") -> tuple[list[tuple[Path, str]], list[str]]:
    """Labelled images and their sources: DATA/<CLASS>/ or DATA/<class>_*.jpg (one source, the folder's
    name), or a run's splits.csv (its `split` rows, each with its own source); every class must be one
    the models know."""
    data = Path(data)
    try:
        if data.suffix.lower() == ".csv" and data.is_file():
            rows = split_rows(data, split)
            if not rows:
                raise VerifyError(f"{data} has no rows in split {split!r}")
            pairs = [(Path(row["filepath"]), row["label"]) for row in rows]
            sources = [row.get("source") or data.stem for row in rows]
        else:
            pairs = labelled_images(data)
            sources = [data.name] * len(pairs)
    except ValueError as exc:
        raise VerifyError(str(exc)) from exc
    unknown = sorted({label for _, label in pairs} - set(labels))
    if unknown:
        raise VerifyError(f"classes {unknown} in {data} are not among the model's labels {labels}")
    return pairs, sources


def predict_all(models: list[Classifier], images: list[tuple[Path, str]]) -> tuple[list[Predictions], int]:
    """Run every model on every image; each image is decoded once and cropped once per crop setting."""
    runs = [Predictions(m) for m in models]
    unreadable = 0
    for n, (path, _) in enumerate(images, 1):
        bgr, _ = read_image(path)
        unreadable += bgr is None
        crops: dict[CropSettings, np.ndarray | None] = {}
        for run in runs:
            settings = run.classifier.crop_settings
            if settings not in crops:
                crops[settings] = None if bgr is None else largest_cell_crop(bgr, settings)[0]
            crop = crops[settings]
            if crop is None:
                run.mirror_top.append(None)
                run.top.append(None)
                run.probs.append(None)
                run.raw_probs.append(None)
                run.answered.append(False)
                continue
            clf = run.classifier
            start = time.perf_counter()
            raw = clf.raw_outputs(crop)
            run.invoke_ms.append((time.perf_counter() - start) * 1000)
            probs = clf.probabilities(raw)
            run.probs.append(probs)
            run.raw_probs.append(clf.probabilities(raw, temperature=1.0))
            run.top.append(clf.labels[int(np.argmax(probs))])
            answer, _ = decide(run.top[-1], float(probs.max()), clf.min_confidence, is_unusual_crop(clf, crop))
            run.answered.append(answer == run.top[-1])
            if run is runs[0]:  # the reference's noise floor: the same cell, mirrored
                mirrored = clf.raw_outputs(np.ascontiguousarray(crop[:, ::-1]))
                run.mirror_top.append(clf.labels[int(np.argmax(clf.probabilities(mirrored)))])
        if n % 100 == 0 or n == len(images):
            print(f"verify: {n}/{len(images)} images", file=sys.stderr, flush=True)
    return runs, unreadable


def subset(run: Predictions, keep: list[int]) -> Predictions:
    """The answers of one model for the images at the `keep` positions only."""
    part = Predictions(run.classifier, invoke_ms=run.invoke_ms)
    for name in ("top", "probs", "raw_probs", "answered", "mirror_top"):
        values = getattr(run, name)
        # mirror_top is the reference's alone: other models hold only its placeholders for cells not located
        setattr(part, name, [values[i] for i in keep] if len(values) == len(run.top) else [])
    return part


def gate_all(runs: list[Predictions], images: list[tuple[Path, str]], max_drop_pp: float,
             min_agreement_pct: float) -> tuple[list[dict], list[dict]]:
    """Each model's summary and each other model's gated comparison with the reference (the first)."""
    summaries = [model_summary(run, images) for run in runs]
    comparisons = []
    for run, summary in zip(runs[1:], summaries[1:]):
        comparison = compare(runs[0], run, images, (summaries[0], summary))
        apply_gate(comparison, max_drop_pp, min_agreement_pct)
        comparisons.append(comparison)
    return summaries, comparisons


def located_arrays(run: Predictions, images: list[tuple[Path, str]]) -> tuple[np.ndarray, ...]:
    """(probabilities at temperature 1, calibrated probabilities, true class, answered) of the located cells."""
    located = [i for i, p in enumerate(run.probs) if p is not None]
    y = np.array([run.classifier.labels.index(images[i][1]) for i in located])
    return (np.stack([run.raw_probs[i] for i in located]), np.stack([run.probs[i] for i in located]), y,
            np.array([run.answered[i] for i in located]))


def model_summary(run: Predictions, images: list[tuple[Path, str]]) -> dict[str, Any]:
    """Accuracy (an image without a located cell counts as wrong), per class, size and latency."""
    clf = run.classifier
    truth = [label for _, label in images]
    correct = [p == t for p, t in zip(run.top, truth)]
    per_class = {}
    for label in clf.labels:
        hits = [c for c, t in zip(correct, truth) if t == label]
        per_class[label] = {"images": len(hits), "accuracy": sum(hits) / len(hits) if hits else None}
    size = clf.path.stat().st_size
    calibration = None
    if any(p is not None for p in run.probs):
        raw, probs, y, answered = located_arrays(run, images)
        coverage, answered_accuracy = coverage_of_answers(probs, y, answered)
        calibration = {"temperature": clf.temperature, "min_confidence": clf.min_confidence,
                       "ece_before": expected_calibration_error(raw, y),
                       "ece_after": expected_calibration_error(probs, y),
                       "coverage": coverage, "answered_accuracy": answered_accuracy}
    return {"path": str(clf.path), "name": clf.name, "variant": clf.metadata.get("variant", "?"),
            "io": {"input": clf.input_dtype, "output": clf.output_dtype}, "size_bytes": size,
            "size_mb": size / 1e6, "images": len(images), "correct": int(sum(correct)),
            "accuracy": sum(correct) / len(images), "no_cell": sum(p is None for p in run.top),
            "per_class": per_class, "calibration": calibration,
            "mean_invoke_ms": float(np.mean(run.invoke_ms)) if run.invoke_ms else None}


def compare(ref: Predictions, other: Predictions, images: list[tuple[Path, str]],
            summaries: tuple[dict, dict]) -> dict[str, Any]:
    """Top-1 agreement, probability differences and disagreements of a compared model against the reference."""
    order = [other.classifier.labels.index(label) for label in ref.classifier.labels]
    compared = agree = answered = answered_agree = 0
    diffs, disagreements = [], []
    for (path, label), a, b, pa, pb, ref_answered in zip(images, ref.top, other.top, ref.probs, other.probs,
                                                          ref.answered):
        if a is None and b is None:
            continue
        compared += 1
        answered += ref_answered
        answered_agree += ref_answered and a == b
        if a == b:
            agree += 1
        else:
            disagreements.append({"path": str(path), "label": label, "reference": a, "candidate": b})
        if pa is not None and pb is not None:
            diffs.append(np.abs(pa - pb[order]))
    if not compared:
        raise VerifyError("no cell was located in any image: check --data and the models' crop settings")
    diffs_all = np.concatenate(diffs) if diffs else np.zeros(1)
    sa, sb = summaries
    located = [(top, mirror) for top, mirror in zip(ref.top, ref.mirror_top) if top is not None]
    return {"reference": sa["name"], "candidate": sb["name"], "compared": compared,
            "agreement": agree / compared, "reference_answered": answered,
            "agreement_answered": answered_agree / answered if answered else None,
            "mirror_agreement": sum(t == m for t, m in located) / len(located) if located else None,
            "accuracy_drop_pp": (sa["accuracy"] - sb["accuracy"]) * 100,
            "mean_abs_prob_diff": float(diffs_all.mean()), "max_abs_prob_diff": float(diffs_all.max()),
            "size_ratio": sb["size_bytes"] / sa["size_bytes"], "disagreements": disagreements}


def apply_gate(comparison: dict[str, Any], max_drop_pp: float, min_agreement_pct: float) -> None:
    """Mark a comparison passed or failed, with the reasons."""
    failures = []
    if comparison["accuracy_drop_pp"] > max_drop_pp:
        failures.append(f"accuracy drop {comparison['accuracy_drop_pp']:.2f} pp > {max_drop_pp} pp")
    answered = comparison["agreement_answered"]
    if answered is not None and answered * 100 < min_agreement_pct:
        failures.append(f"agreement on the reference's answered cells {answered * 100:.2f}% < {min_agreement_pct}%")
    floor = comparison["mirror_agreement"]
    if floor is not None and comparison["agreement"] < floor:
        failures.append(f"agreement {comparison['agreement'] * 100:.2f}% < the reference's own on mirrored crops "
                        f"({floor * 100:.2f}%)")
    comparison["failures"] = failures
    comparison["passed"] = not failures


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: one row per model, per-class accuracy, then the disagreements."""
    models, comps = report["models"], report["comparisons"]
    lines = [f"Verification on {report['images']} images from `{report['data']}` "
             f"(no located cell counts as wrong; {report['unreadable']} unreadable)", "",
             "| model | variant | io (in/out) | size MB | size ratio | top-1 acc | no cell | drop pp | agreement "
             "| on answered | mirror floor | mean abs dp | invoke ms | gate |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for i, m in enumerate(models):
        c = comps[i - 1] if i else None
        ms = "-" if m["mean_invoke_ms"] is None else f"{m['mean_invoke_ms']:.2f}"
        cells = [m["name"], m["variant"], f"{m['io']['input']}/{m['io']['output']}", f"{m['size_mb']:.3f}",
                 f"{c['size_ratio']:.3f}" if c else "1", _pct(m["accuracy"]), str(m["no_cell"]),
                 f"{c['accuracy_drop_pp']:+.2f}" if c else "ref", _pct(c["agreement"]) if c else "ref",
                 _pct(c["agreement_answered"]) if c else "ref", _pct(c["mirror_agreement"]) if c else "ref",
                 f"{c['mean_abs_prob_diff']:.4f}" if c else "ref", ms,
                 ("pass" if c["passed"] else "FAIL: " + "; ".join(c["failures"])) if c else "ref"]
        lines.append("| " + " | ".join(cells) + " |")
    if report.get("by_source"):
        lines += ["", "Per source (each must pass the gate on its own):", "",
                  "| source | images | model | top-1 acc | drop pp | agreement | on answered | mirror floor | gate |",
                  "|---|---:|---|---:|---:|---:|---:|---:|---|"]
        for source, part in report["by_source"].items():
            for m, c in zip(part["models"], [None, *part["comparisons"]]):
                lines.append(f"| {source} | {part['images']} | {m['name']} | {_pct(m['accuracy'])} | "
                             + (f"{c['accuracy_drop_pp']:+.2f} | {_pct(c['agreement'])} | {_pct(c['agreement_answered'])} | "
                                f"{_pct(c['mirror_agreement'])} | {'pass' if c['passed'] else 'FAIL: ' + '; '.join(c['failures'])} |"
                                if c else "ref | ref | ref | ref | ref |"))
    intervals = [(m, m["cell_interval"]) for m in models if m.get("cell_interval")]
    if intervals:
        lines += ["", "Accuracy over the cells behind the images (copies of one photograph are one cell; "
                  "bootstrap of the cells within each class):", ""]
        lines += [f"- {m['name']}: top-1 {_pct(m['accuracy'])}, {iv['level']:.0%} interval {_pct(iv['low'])} to "
                  f"{_pct(iv['high'])} over {iv['cells']} recovered cells" for m, iv in intervals]
    lines += ["", "Calibration on located cells (ECE, 15 bins, before/after the stored temperature) and answers at "
              "the stored threshold (UNCERTAIN below it or for an unusual crop):", "",
              "| model | temperature | ECE before | ECE after | threshold | coverage | accuracy answered |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for m in models:
        cal = m["calibration"]
        if cal:
            lines.append(f"| {m['name']} | {cal['temperature']:.4f} | {cal['ece_before']:.4f} | {cal['ece_after']:.4f} "
                         f"| {cal['min_confidence']:.4f} | {_pct(cal['coverage'])} | {_pct(cal['answered_accuracy'])} |")
    lines += ["", "| class | images | " + " | ".join(m["name"] for m in models) + " |",
              "|---|---:|" + "---:|" * len(models)]
    for label, stats in models[0]["per_class"].items():
        accs = [_pct(m["per_class"][label]["accuracy"]) for m in models]
        lines.append(f"| {label} | {stats['images']} | " + " | ".join(accs) + " |")
    for c in comps:
        dis = c["disagreements"]
        lines += ["", f"{len(dis)} disagreement(s) {c['reference']} vs {c['candidate']}"
                  + (f" (first {PRINTED_DISAGREEMENTS}; all in the JSON)" if len(dis) > PRINTED_DISAGREEMENTS else "")]
        if dis:
            lines += ["", "| image | label | reference | compared |", "|---|---|---|---|"]
            lines += [f"| {d['path']} | {d['label']} | {d['reference']} | {d['candidate']} |"
                      for d in dis[:PRINTED_DISAGREEMENTS]]
    return "\n".join(lines) + "\n"


def require_matplotlib() -> None:
    """--plots needs matplotlib (the train extra); say so before any model runs."""
    try:
        import matplotlib  # noqa: F401  (evaluation.plots imports it lazily)
    except ImportError as exc:
        raise VerifyError(f"--plots needs matplotlib ({exc}): pip install 'hemato-edge[train]'") from exc


def write_plots(runs: list[Predictions], images: list[tuple[Path, str]], folder: Path) -> list[Path]:
    """reliability.png (before/after each model's temperature) and risk_coverage.png (threshold marked)."""
    from evaluation import plots
    reliability, curves, points = {}, {}, {}
    for run in runs:
        name, clf = run.classifier.name, run.classifier
        if not any(p is not None for p in run.probs):
            continue
        raw, probs, y, answered = located_arrays(run, images)
        reliability[f"{name} T=1 (ECE {expected_calibration_error(raw, y):.3f})"] = reliability_bins(raw, y)
        reliability[f"{name} T={clf.temperature:.3f} (ECE {expected_calibration_error(probs, y):.3f})"] = \
            reliability_bins(probs, y)
        _, coverage, accuracy = risk_coverage(probs, y)
        curves[name] = (coverage, accuracy)
        share, right = coverage_of_answers(probs, y, answered)
        if right is not None:
            points[name] = (share, right)
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "reliability.png", folder / "risk_coverage.png"]
    plots.reliability_png(reliability, written[0], "Reliability of each model (located cells)")
    plots.risk_coverage_png(curves, points, written[1], "Risk-coverage of each model")
    return written


def add_cell_intervals(runs: list[Predictions], images: list[tuple[Path, str]], summaries: list[dict]) -> None:
    """Add each model's accuracy interval over the recovered cells to its summary ("cell_interval")."""
    from evaluation.cell_interval import cell_bootstrap, recover_cells
    cell_ids = recover_cells(images, runs[0].classifier.crop_settings)
    labels = np.array([label for _, label in images])
    for run, summary in zip(runs, summaries):
        correct = np.array([p == t for p, t in zip(run.top, labels)])
        summary["cell_interval"] = cell_bootstrap(correct, labels, cell_ids)


def verify(paths: list[Path], data: Path, max_drop_pp: float = 0.5, min_agreement_pct: float = 99.0,
           threads: int | None = None, plots: Path | None = None, cells: bool = False,
           split: str = "val") -> dict[str, Any]:
    """Compare each other model with the reference (the first path) and return the full report.

    data: class folders, or a run's splits.csv (its `split` rows); with several sources in it, the gate
    also applies to each source's images on its own ("by_source").

    With cells, each model's accuracy also gets a bootstrap interval over the cells behind the images
    (evaluation.cell_interval).
    """
    if len(paths) < 2:
        raise VerifyError("give a reference model and at least one model to compare with it")
    if plots is not None:
        require_matplotlib()
    models = load_models(paths, threads)
    images, sources = load_data(data, models[0].labels, split)
    runs, unreadable = predict_all(models, images)
    summaries, comparisons = gate_all(runs, images, max_drop_pp, min_agreement_pct)
    if cells:
        add_cell_intervals(runs, images, summaries)
    by_source = {}
    if len(set(sources)) > 1:  # each laboratory must pass on its own, not only on the pooled images
        for source in sorted(set(sources)):
            keep = [i for i, s in enumerate(sources) if s == source]
            part = [images[i] for i in keep]
            parts, gated = gate_all([subset(run, keep) for run in runs], part, max_drop_pp, min_agreement_pct)
            by_source[source] = {"images": len(part), "models": parts, "comparisons": gated}
    if plots is not None:
        for path in write_plots(runs, images, plots):
            print(f"verify: wrote {path}", file=sys.stderr)
    return {"data": str(data), "images": len(images), "unreadable": unreadable,
            "gate": {"max_drop_pp": max_drop_pp, "min_agreement_pct": min_agreement_pct},
            "models": summaries, "comparisons": comparisons, "by_source": by_source,
            "passed": all(c["passed"] for c in comparisons)
            and all(c["passed"] for part in by_source.values() for c in part["comparisons"])}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", type=Path, nargs="+", metavar="MODEL",
                        help="reference .tflite (e.g. float32) then one or more models to compare with it (e.g. int8)")
    parser.add_argument("--data", type=Path, required=True,
                        help="labelled images: DATA/<CLASS>/*.jpg, DATA/<class>_*.jpg as in samples/, or a run's "
                             "splits.csv (filepath,label,split[,source]): its --split rows, gated per source too")
    parser.add_argument("--split", default="val", help="with a splits.csv as --data: the rows to use (default val)")
    parser.add_argument("--json", type=output_file, help="write the full report (all disagreements) as JSON")
    parser.add_argument("--markdown", type=output_file, help="also write the Markdown report to this file")
    parser.add_argument("--max-drop", type=float, default=0.5,
                        help="fail when a compared model's top-1 accuracy is lower by more than this (pp, default 0.5)")
    parser.add_argument("--min-agreement", type=float, default=99.0,
                        help="fail when top-1 agreement on the cells the reference answers is below this "
                             "(%%, default 99); over all cells, agreement must reach the reference's own on "
                             "mirrored crops")
    parser.add_argument("--threads", type=positive_int, default=None, help="interpreter threads (default: all cores)")
    parser.add_argument("--plots", type=output_folder, metavar="DIR",
                        help="also write DIR/reliability.png and DIR/risk_coverage.png (needs matplotlib)")
    parser.add_argument("--cells", action="store_true",
                        help="also give each accuracy's 95%% interval over the cells behind the images (the "
                             "copies of one photograph are one cell; recovering them takes minutes)")


def main(args: argparse.Namespace) -> int:
    """0 when every compared model passes the gate, 1 when one fails, 2 on an error the user can fix."""
    try:
        report = verify(args.models, args.data, args.max_drop, args.min_agreement, args.threads, args.plots,
                        args.cells, args.split)
    except (VerifyError, ModelFileError) as exc:
        print(f"hemato verify: error: {exc}", file=sys.stderr)
        return 2
    text = markdown(report)
    print(text, end="")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text, encoding="utf-8")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    gated = [("", c) for c in report["comparisons"]] + [(f" on {source}", c) for source, part in
                                                        report["by_source"].items() for c in part["comparisons"]]
    for where, c in gated:
        if not c["passed"]:
            print(f"hemato verify: FAILED {c['candidate']} vs {c['reference']}{where}: {'; '.join(c['failures'])}",
                  file=sys.stderr)
    return 0 if report["passed"] else 1
