"""Store a model's red-cell scale in .tflite files already converted, without converting them again.

(for a model converted before models carried their scale; training now stores it itself)
`python -m convert.set_rbc_scale MODEL... --split TRAINING_SPLIT.csv` measures the median
red-cell diameter over the training images (rows with split train or val; a relative path is read from
the folder training ran in, else from the CSV's folder; a missing image is an error)
and writes it, with the reference short side, into each model's crop settings. Only the metadata
changes (edge_app.core.tflite_file.with_metadata). `--diameter PX` skips the measurement.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge_app.core.dataset import split_rows
from edge_app.core.metadata import ModelFileError, read_model_metadata
from edge_app.core.tflite_file import with_metadata, write_model


def training_paths(split_csv: Path) -> list[Path]:
    """The train and val images of a training run's split CSV."""
    return [Path(row["filepath"]) for split in ("train", "val") for row in split_rows(split_csv, split)]


def set_scale(model: Path, diameter: float, short_side: int) -> None:
    """Rewrite the model's crop settings with rbc_diameter_px and reference_short_side, in place."""
    meta = read_model_metadata(model)
    meta.pop("format", None)
    meta["crop"] = {**meta.get("crop", {}), "rbc_diameter_px": round(diameter, 2),
                    "reference_short_side": short_side}
    write_model(model, with_metadata(model.read_bytes(), meta))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m convert.set_rbc_scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path, nargs="+", metavar="MODEL")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--split", type=Path, help="the training report's split.csv")
    source.add_argument("--diameter", type=float, metavar="PX", help="the training red-cell diameter, if known")
    parser.add_argument("--short-side", type=int, default=240,
                        help="the training frames' short side (pixels) at that scale (default 240)")
    args = parser.parse_args(argv)
    diameter = args.diameter
    try:
        if diameter is None:
            from edge_app.core.scale import training_rbc_diameter
            paths = training_paths(args.split)
            diameter = training_rbc_diameter(paths)
            print(f"median red-cell diameter over {len(paths)} training images: {diameter:.2f} px")
        for model in args.models:
            set_scale(model, diameter, args.short_side)
            print(f"{model}: rbc_diameter_px {diameter:.2f}, reference_short_side {args.short_side}")
    except (ModelFileError, ValueError, OSError) as exc:
        print(f"convert.set_rbc_scale: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
