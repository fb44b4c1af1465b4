"""`hemato convert RUN --quant VARIANT --out FILE`: one trained run folder to one .tflite file."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from convert.calibration import CalibrationError, build_calibration_set
from convert.converter import IO_TYPES, VARIANTS, ConversionError, convert_run, read_run_metadata
from convert.recalibrate import RecalibrationError
from edge_app.core.metadata import ModelFileError
from edge_app.core.vision import CropSettings
from hemato.argtypes import output_file
from network.model import ModelLoadError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow is imported later; keep its INFO lines out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="training run folder holding model.keras and metadata.json")
    parser.add_argument("--quant", choices=VARIANTS, default="float32", help="variant to write (default float32)")
    parser.add_argument("--out", type=output_file, help="output .tflite (default models/<run>_<quant>.tflite)")
    parser.add_argument("--calib", type=Path, nargs="+",
                        help="one or more folders of real images (class folders or flat; one per laboratory): "
                             "int8's representative dataset, stratified by folder and class, for int8 and "
                             "dynamic the crops that measure bias correction (convert.bias_correction), and for "
                             "float16 the crops its pooled features are corrected on (convert.feature_correction)")
    parser.add_argument("--calib-count", type=int, default=300,
                        help="number of calibration crops, stratified by folder and class (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration sample (default 0)")
    parser.add_argument("--io", choices=IO_TYPES, default=None,
                        help="int8: input tensor type (default uint8, the pipeline's pixel type)")
    parser.add_argument("--io-out", choices=IO_TYPES, default=None,
                        help="int8: output (logits) tensor type (default float32)")
    parser.add_argument("--float-stem", action="store_true",
                        help="int8: keep the stem (pixel scaling, Conv1, first bottleneck) in float; float I/O. "
                             "Needed by the shipped MobileNetV2: full int8 loses its answer there")
    parser.add_argument("--keep-calibration", action="store_true",
                        help="keep the run's temperature and threshold; by default, when the run's splits.csv has "
                             "validation rows, they are refitted on this file's own outputs for them")
    parser.add_argument("--no-feature-correction", dest="feature_correction", action="store_false",
                        help="int8 with --float-stem, and float16 with --calib: do not correct the backbone's "
                             "per-channel error on the pooled features in the float head (fitted on the "
                             "calibration crops)")


def run(args: argparse.Namespace) -> int:
    """Convert one run folder as the arguments say; returns the exit status."""
    out = args.out or Path("models") / f"{args.run.name}_{args.quant}.tflite"
    if args.calib and args.quant not in ("int8", "dynamic", "float16"):
        raise ConversionError("--calib applies only to --quant int8 (calibration and bias correction), "
                              "dynamic (bias correction) and float16 (feature correction)")
    if args.calib and args.quant == "float16" and not args.feature_correction:
        raise ConversionError("float16 uses --calib only for its feature correction: drop --calib or "
                              "--no-feature-correction")
    if args.quant != "int8" and (args.io or args.io_out or args.float_stem):
        raise ConversionError("--io, --io-out and --float-stem apply only to --quant int8")
    if args.float_stem and (args.io or args.io_out):
        raise ConversionError("--float-stem gives float input and output: drop --io/--io-out")
    meta = read_run_metadata(args.run)  # fail on a bad run folder before any slow step
    calibration = None
    if args.quant == "int8" and args.calib is None:
        raise ConversionError("--quant int8 needs --calib FOLDER of real images (e.g. the TRAIN split)")
    if args.calib is not None:
        calibration = build_calibration_set(args.calib, CropSettings.from_metadata(meta), args.calib_count, args.seed)
    print(f"converting {args.run} to {args.quant} ...", file=sys.stderr, flush=True)
    written = convert_run(args.run, args.quant, out, calibration, args.io or "uint8", args.io_out or "float32",
                          args.float_stem, refit_calibration=not args.keep_calibration,
                          feature_correction=args.feature_correction)
    from edge_app.core.model import Classifier
    classifier = Classifier(out, threads=1)  # proves the device runtime can load it
    print(f"wrote {out}: {args.quant}, {os.path.getsize(out) / 1e6:.2f} MB, "
          f"input {classifier.input_dtype} output {classifier.output_dtype}, "
          f"{len(written['labels'])} labels, input {written['input_size']} px")
    fit = written.get("confidence_calibration")
    if fit:
        before = written["training_calibration"]
        print(f"calibration refitted on this file's outputs for {fit['cells']} validation cells: temperature "
              f"{before['temperature']} -> {fit['temperature']}, threshold {before['min_confidence']} -> "
              f"{fit['min_confidence']}")
    elif not args.keep_calibration:
        cross_validated = int(meta.get("training", {}).get("config", {}).get("folds", 1)) > 1
        print(f"the run has no validation images in splits.csv{' (a cross-validated run)' if cross_validated else ''}"
              f": the file keeps the run's temperature {written['temperature']} and threshold "
              f"{written.get('min_confidence')}")
    warn_if_input_clipped(out)
    return 0


def warn_if_input_clipped(path: Path) -> None:
    """Integer input is exact only when calibration spanned pixels 0..255 (scale 1); say so otherwise."""
    import numpy as np
    from edge_app.core.model import interpreter_class
    details = interpreter_class()[0](model_path=str(path)).get_input_details()[0]
    scale, zero = details["quantization"]
    if np.issubdtype(details["dtype"], np.integer) and scale and abs(scale - 1.0) > 1e-3:
        info = np.iinfo(details["dtype"])
        low, high = (info.min - zero) * scale, (info.max - zero) * scale
        print(f"hemato convert: warning: calibration crops span pixels {low:.0f}..{high:.0f}, not 0..255; "
              "pixels outside that range are clipped", file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    """Convert; a problem the user can fix is one line on stderr and exit status 2."""
    try:
        return run(args)
    except (ConversionError, CalibrationError, RecalibrationError, ModelFileError, ModelLoadError) as exc:
        print(f"hemato convert: error: {exc}", file=sys.stderr)
        return 2
