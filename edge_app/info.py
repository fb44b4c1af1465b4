"""`hemato info [MODEL]`: what a model is, read from the file alone (no interpreter needed).

Labels, input, crop and scale settings, answer threshold, calibration, colour guard, size and provenance
(training configuration, data source, hashes and dates where the metadata has them).
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Any

from edge_app.core.metadata import ModelFileError, read_model_metadata
from edge_app.core.model import stored_calibration
from edge_app.core.model_path import MODEL_HELP, find_model
from edge_app.core.ood import ColourGuard
from edge_app.core.wording import naming, threshold_text

# Training settings worth a line, in this order (the rest is in the metadata: hemato info --json).
TRAINING_KEYS = ("folds", "head_epochs", "finetune_epochs", "batch_size", "head_lr", "dropout", "augmented_copies",
                 "views", "feature_layers", "colour_statistics", "val_fraction", "seed", "weights")
SCALE_KEYS = ("rbc_diameter_px", "reference_short_side")
DATE_KEYS = ("created", "created_at", "date", "trained", "trained_at", "converted", "converted_at", "shipped")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `hemato info`."""
    parser.add_argument("model", nargs="?", help=MODEL_HELP)
    parser.add_argument("--json", action="store_true", help="print the model's whole metadata as JSON instead")


def _crop_line(crop: dict[str, Any]) -> str:
    short = (f"a {crop['reference_short_side']} px short side (the training frames', at the model's red-cell "
             "scale)" if crop.get("reference_short_side") and crop.get("rbc_diameter_px") else "the frame's short side")
    parts = [f"the stained nucleus located by colour (stain threshold {crop.get('stain_threshold', '?')}), "
             f"a square of {crop.get('crop_scale', 1.0)} x its extent, at least {crop.get('min_crop_frac', '?')} "
             f"of {short}"]
    if "analysis_max_side" in crop:
        parts.append(f"located on the frame reduced to at most {crop['analysis_max_side']} px")
    extra = {k: v for k, v in crop.items() if k not in ("stain_threshold", "crop_scale", "min_crop_frac",
                                                         "analysis_max_side", "input_size") + SCALE_KEYS}
    if extra:
        parts.append(", ".join(f"{k} {v}" for k, v in extra.items()))
    return "; ".join(parts)


def describe(path: Path, meta: dict[str, Any]) -> list[str]:
    """The lines `hemato info` prints for a model file and its metadata."""
    size = path.stat().st_size
    io = meta.get("io", {})
    lines = [f"Model: {path}",
             f"Size: {size / 1e6:.2f} MB ({size} bytes), sha256 {hashlib.sha256(path.read_bytes()).hexdigest()}",
             f"Name: {meta.get('model_name', path.stem)}" + (f", variant {meta['variant']}" if meta.get("variant") else ""),
             f"Classes ({len(meta['labels'])}): {', '.join(meta['labels'])}"]
    size_px = meta.get("input_size", meta.get("crop", {}).get("input_size", "?"))
    views = meta.get("views")
    lines.append(f"Input: one RGB crop of {size_px} x {size_px} px, pixels 0..255"
                 + (f", {io['input']}" if io.get("input") else "")
                 + (f"; output {meta.get('output', 'logits')}" + (f" ({io['output']})" if io.get("output") else ""))
                 + (f"; {views} rotations averaged in the graph" if views else ""))
    if meta.get("crop"):
        lines.append(f"Crop: {_crop_line(meta['crop'])}")
    crop = meta.get("crop", {})
    if crop.get("rbc_diameter_px"):
        lines.append(f"Scale: frames are resampled so that red cells are {crop['rbc_diameter_px']} px across, as in "
                     "training (measured per frame, or given with --rbc-diameter)"
                     + (f"; reference short side {crop['reference_short_side']} px"
                        if crop.get("reference_short_side") else ""))
    else:
        lines.append("Scale: none stored: crops are relative to the nucleus")
    _, threshold = stored_calibration(meta)
    lines.append(f"Threshold: {threshold_text(threshold)}: a cell whose calibrated confidence is below it is "
                 "answered UNCERTAIN" if threshold else "Threshold: none: every cell is answered")
    lines.append(f"Calibration: temperature {meta.get('temperature', 1.0)} (probabilities are softmax(logits / T))")
    ood = meta.get("ood")
    guard = ColourGuard.from_dict(ood)
    labs = ", ".join(r.source or "training" for r in guard.regions) if guard else ""
    lines.append(f"Colour guard: a crop whose colours are unlike every training laboratory's ({labs}) is answered "
                 "UNCERTAIN" if ood else "Colour guard: none")
    if meta.get("float_layers") or meta.get("bias_corrected_layers") or meta.get("feature_correction"):
        quant = []
        if meta.get("float_layers"):
            quant.append(f"kept in float: {', '.join(meta['float_layers'])}")
        if meta.get("bias_corrected_layers"):
            quant.append(f"{meta['bias_corrected_layers']} layers bias-corrected")
        if meta.get("feature_correction"):
            quant.append(f"feature correction: {meta['feature_correction'].get('fitted', 'yes')}")
        lines.append(f"Quantisation: {'; '.join(quant)}")
    calibration = meta.get("calibration")
    if isinstance(calibration, dict) and calibration.get("count"):
        folders = calibration.get("folders") or [calibration.get("folder", "?")]
        lines.append(f"Quantisation calibration: {calibration['count']} crops from {', '.join(map(str, folders))}")
    training = meta.get("training", {})
    config = training.get("config", {})
    if config:
        lines.append("Training: " + ", ".join(f"{k} {','.join(map(str, config[k])) if isinstance(config[k], list) else config[k]}"
                                              for k in TRAINING_KEYS if k in config))
    if training.get("source") or training.get("sources"):
        lines.append(f"Training data: {', '.join(training.get('sources') or [training['source']])}")
    if training.get("images_per_source"):
        lines.append("Training images per laboratory: "
                     + ", ".join(f"{k} {v}" for k, v in training["images_per_source"].items()))
    if meta.get("source_sha256"):
        lines.append(f"Converted from: a model with sha256 {meta['source_sha256']}")
    dates = [(k, v) for section in (meta, training) for k, v in section.items() if k in DATE_KEYS]
    lines += [f"{k.replace('_', ' ').capitalize()}: {v}" for k, v in dates]
    lines.append(f"Format: {meta.get('format', '?')}")
    return lines


def main(args: argparse.Namespace) -> int:
    """Print what the model is; 2 when it cannot be read."""
    path = None
    try:
        path = find_model(args.model)
        meta = read_model_metadata(path)
    except ModelFileError as exc:
        print(f"hemato info: error: {naming(path, exc)}", file=sys.stderr)
        return 2
    if args.json:
        import json
        print(json.dumps(meta, indent=2))
    else:
        print("\n".join(describe(path, meta)))
    return 0
