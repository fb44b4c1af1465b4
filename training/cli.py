"""`hemato train`: arguments and the printed summary; the work is in training.train."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hemato.argtypes import output_folder
from training.train import TrainConfig

DEFAULTS = TrainConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `hemato train`."""
    parser.add_argument("data", type=Path, nargs="+",
                        help="one or more datasets, one per laboratory: a folder of class folders (optionally TRAIN/ "
                             "and TEST/), or a CSV with filepath,label[,split][,group][,source]")
    parser.add_argument("--out", type=output_folder, default=Path("runs/wbc"), help="output folder (default runs/wbc)")
    parser.add_argument("--weights", default=DEFAULTS.weights,
                        help="backbone weights: imagenet (downloads), a local .h5 file, or none (default %(default)s)")
    parser.add_argument("--input-size", type=int, default=DEFAULTS.input_size, help="model input side in pixels (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help="(default %(default)s)")
    parser.add_argument("--head-epochs", type=int, default=DEFAULTS.head_epochs, help="max epochs, frozen backbone (default %(default)s)")
    parser.add_argument("--finetune-epochs", type=int, default=DEFAULTS.finetune_epochs,
                        help="max epochs fine-tuning the top of the backbone (default 0: none; needs --folds 1)")
    parser.add_argument("--finetune-from", default=DEFAULTS.finetune_from, help="first backbone layer to unfreeze (default %(default)s)")
    parser.add_argument("--finetune-lr", type=float, default=DEFAULTS.finetune_lr, help="(default %(default)s)")
    parser.add_argument("--dropout", type=float, default=DEFAULTS.dropout, help="head dropout (default %(default)s)")
    parser.add_argument("--val-fraction", type=float, default=DEFAULTS.val_fraction,
                        help="photographs held out for validation with --folds 1 and no split given "
                             "(default %(default)s)")
    parser.add_argument("--patience", type=int, default=DEFAULTS.patience, help="early-stopping patience in epochs (default %(default)s)")
    parser.add_argument("--views", type=int, choices=(1, 2, 4), default=DEFAULTS.views,
                        help="rotations averaged inside the deployed model (4: orientation-free, 4x compute; default "
                             "%(default)s)")
    parser.add_argument("--crop-scale", type=float, default=DEFAULTS.crop_scale,
                        help="crop side as a multiple of the stained nucleus's extent (default %(default)s)")
    parser.add_argument("--min-crop-frac", type=float, default=DEFAULTS.min_crop_frac,
                        help="least crop side as a fraction of the frame's short side (default %(default)s)")
    parser.add_argument("--feature-layers", nargs="+", default=list(DEFAULTS.feature_layers), metavar="LAYER",
                        help="backbone layers whose pooled outputs the head reads (default: "
                             + " ".join(DEFAULTS.feature_layers) + "; the classic head: out_relu)")
    parser.add_argument("--augmented-copies", type=int, default=DEFAULTS.augmented_copies,
                        help="augmented copies of each training crop whose features the head also learns from "
                             "(default %(default)s; 0: clean crops only)")
    parser.add_argument("--no-colour-statistics", dest="colour_statistics", action="store_false",
                        help="the head reads the pooled backbone features only, not the crop's colour statistics")
    parser.add_argument("--folds", type=int, default=DEFAULTS.folds,
                        help="K>1 (default %(default)s): no split, the head is the mean of K heads trained on K-1 "
                             "folds of whole photographs each, calibrated out of fold, the backbone not fine-tuned; "
                             "1: hold out a validation split")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help="(default %(default)s)")
    parser.add_argument("--cache", type=Path, default=None, help="crop/feature cache folder (default OUT/cache)")


def main(args: argparse.Namespace) -> int:
    """Run training and print the headline figures."""
    from training.data import DatasetError
    from network.model import WeightsError
    from training.train import run_training

    config = TrainConfig(input_size=args.input_size, weights=args.weights, batch_size=args.batch_size,
                         head_epochs=args.head_epochs, finetune_epochs=args.finetune_epochs,
                         finetune_from=args.finetune_from, finetune_lr=args.finetune_lr,
                         dropout=args.dropout, val_fraction=args.val_fraction, patience=args.patience, seed=args.seed,
                         views=args.views, crop_scale=args.crop_scale,
                         min_crop_frac=args.min_crop_frac, feature_layers=tuple(args.feature_layers),
                         augmented_copies=args.augmented_copies, folds=args.folds,
                         colour_statistics=args.colour_statistics)
    try:
        report = run_training(args.data, args.out, config, args.cache)
    except (DatasetError, WeightsError, ValueError) as exc:
        print(f"hemato train: {exc}", file=sys.stderr)
        return 2
    for name, part in report["splits"].items():
        print(f"{name}: accuracy {part['accuracy']:.4f} (located {part['n_located']}/{part['n']}), "
              f"macro F1 {part['macro_f1']:.4f}, ECE {part['calibration']['ece_before']:.3f} -> "
              f"{part['calibration']['ece_after']:.3f}")
    print(f"model and report in {args.out} ({report['wall_time_s']:.0f} s)")
    return 0
