"""Build the standard MobileNetV2 models that `hemato bench` times beside ours, to estimate a Raspberry Pi.

    python -m benchmarks.reference_models --out benchmarks/reference/

The standard model is MobileNetV2 1.0 at 224 x 224: the whole backbone (to out_relu), global average
pooling, one view, from the shared ImageNet weights (network.model.local_imagenet_weights). Two files:
float32 (the model of XNNPACK's published Raspberry Pi figure) and full int8 with uint8 pixels in,
calibrated on real crops when --calib is given, else on random pixels (the ranges do not change the
speed). Needs TensorFlow; the bench only reads the files.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SIZE = 224
FILES = {"float32": "mobilenetv2_224_float32.tflite", "int8": "mobilenetv2_224_int8.tflite"}
CALIBRATION_IMAGES = 100


def standard_model(weights: Path):
    """MobileNetV2 1.0, 224, whole backbone, global average pooling, with the [0,255] -> [-1,1] scaling
    folded into Conv1 as ours is (convert.input_fold)."""
    import keras
    from convert.input_fold import fold_input_scaling
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    backbone = keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), include_top=False, weights=str(weights),
                                              pooling="avg")
    model = keras.Model(inputs, backbone(x), name="mobilenetv2_224")
    return fold_input_scaling(model) or model


def calibration_images(folder: Path | None, count: int = CALIBRATION_IMAGES) -> list[np.ndarray]:
    """RGB uint8 224 x 224 images: up to `count` from the folder (searched recursively), else random pixels."""
    if folder is not None:
        import cv2
        from edge_app.core.dataset import images_in
        paths = images_in(folder, recursive=True)
        step = max(len(paths) // count, 1)
        images = [cv2.imread(str(p)) for p in paths[::step][:count]]
        return [cv2.resize(im, (SIZE, SIZE))[..., ::-1].copy() for im in images if im is not None]
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(count)]


def build(out: Path, weights: Path, calib: Path | None = None) -> dict[str, Path]:
    """Write both files into `out`; returns their paths by variant."""
    import tensorflow as tf
    from network.tflite import run_converter, tflite_converter
    model = standard_model(weights)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for variant, name in FILES.items():
        converter = tflite_converter(model, SIZE)
        if variant == "int8":
            images = calibration_images(calib)
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([im[None].astype(np.float32)] for im in images)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.uint8
            converter.inference_output_type = tf.float32
        written[variant] = out / name
        written[variant].write_bytes(run_converter(converter))
        print(f"wrote {written[variant]} ({written[variant].stat().st_size / 1e6:.2f} MB)", file=sys.stderr)
    return written


def main(argv: list[str] | None = None) -> int:
    from network.model import IMAGENET_WEIGHTS_FILE, local_imagenet_weights
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reference_models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "reference")
    parser.add_argument("--weights", type=Path, default=None,
                        help=f"the ImageNet {IMAGENET_WEIGHTS_FILE} (default: the shared copy)")
    parser.add_argument("--calib", type=Path, default=None, help="folder of images to calibrate int8 on")
    args = parser.parse_args(argv)
    weights = args.weights or local_imagenet_weights()
    if weights is None or not Path(weights).is_file():
        print(f"error: no ImageNet weights: pass --weights PATH/{IMAGENET_WEIGHTS_FILE}", file=sys.stderr)
        return 2
    build(args.out, Path(weights), args.calib)
    return 0


if __name__ == "__main__":
    sys.exit(main())
