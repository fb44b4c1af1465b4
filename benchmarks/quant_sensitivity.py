"""Why the int8 model loses parity: how far the pooled features move under tiny perturbations.

    python -m benchmarks.quant_sensitivity runs/wbc --data ../shared/data/blood-cells/TRAIN

Needs the `train` extra. For a sample of real crops (edge_app's crop path) it prints the median cosine
similarity between the clean pooled features of a trained run and the features after: input noise of
half a grey level; one int8 rounding step (uniform noise 6/255 wide) after one ReLU6 layer; and the
full-int8 and float-stem int8 conversions, without and with bias correction (convert.bias_correction).
A layer where one rounding step already moves the features far is where post-training quantisation
cannot keep parity, and quantisation-aware training must.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from convert.bias_correction import correct_for_int8
from convert.calibration import build_calibration_set
from convert.converter import convert_model, crop_settings, load_keras, read_run_metadata
from training.model import backbone_of

INT8_RELU6_STEP = 6 / 255
PROBED_LAYERS = ("Conv1_relu", "expanded_conv_depthwise_relu", "block_1_expand_relu", "block_3_expand_relu",
                 "block_8_expand_relu", "block_14_expand_relu")


def median_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Median over rows of the cosine similarity between matching rows of a and b."""
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return float(np.median(cos))


def features_with_rounding_noise(backbone, x: np.ndarray, layer: str, seed: int = 0) -> np.ndarray:
    """Pooled backbone features with uniform noise of one int8 step added to `layer`'s output."""
    import keras
    hooked = backbone.get_layer(layer)
    call = hooked.call
    generator = keras.random.SeedGenerator(seed)

    def noisy(*args, **kwargs):
        out = call(*args, **kwargs)
        noise = keras.random.uniform(keras.ops.shape(out), -0.5, 0.5, seed=generator) * INT8_RELU6_STEP
        return out + noise

    hooked.call = noisy
    try:
        return np.asarray(keras.Model(backbone.input, backbone.output)(x)).mean(axis=(1, 2))
    finally:
        hooked.call = call


def tflite_features(model_bytes: bytes, crops: np.ndarray) -> np.ndarray:
    """Outputs of a converted feature extractor, one crop at a time."""
    from edge_app.model import interpreter_class
    interpreter = interpreter_class()[0](model_content=model_bytes, num_threads=2)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    rows = []
    for crop in crops:
        interpreter.set_tensor(inp["index"], crop[None].astype(inp["dtype"]))
        interpreter.invoke()
        rows.append(interpreter.get_tensor(out["index"])[0].copy())
    return np.array(rows)


def main(argv: list[str] | None = None) -> None:
    import keras
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="training output folder (model.keras, metadata.json)")
    parser.add_argument("--data", type=Path, required=True, help="class folders of real images")
    parser.add_argument("--count", type=int, default=64, help="crops measured (default 64)")
    args = parser.parse_args(argv)

    meta = read_run_metadata(args.run)
    model = load_keras(args.run, meta)
    calibration = build_calibration_set(args.data, crop_settings(meta), count=2 * args.count, seed=0)
    crops = np.stack(calibration.crops[args.count:])
    calibration.crops = calibration.crops[:args.count]  # calibrate and measure on different crops
    features = keras.Model(model.input, model.get_layer("pool").output)
    backbone = backbone_of(model)
    x = crops.astype(np.float32) / 127.5 - 1.0
    clean = np.asarray(backbone(x)).mean(axis=(1, 2))
    print(f"median cosine(clean, perturbed) of pooled features over {len(crops)} crops from {args.data}")
    noise = np.random.default_rng(0).normal(0, 0.5 / 127.5, x.shape).astype(np.float32)
    print(f"  input noise, 0.5 grey level rms        {median_cosine(clean, np.asarray(backbone(x + noise)).mean(axis=(1, 2))):.4f}")
    for layer in PROBED_LAYERS:
        print(f"  one int8 step after {layer:28s} {median_cosine(clean, features_with_rounding_noise(backbone, x, layer)):.4f}")
    reference = np.asarray(features(crops.astype(np.float32)))
    for corrected in (False, True):
        if corrected:  # changes the weights in place, so after the uncorrected conversions
            correct_for_int8(model, np.stack(calibration.crops))
        for name, float_stem in (("full int8", False), ("int8, float stem", True)):
            quantised = tflite_features(convert_model(features, "int8", meta["input_size"], calibration,
                                                      io_input="float32", float_stem=float_stem), crops)
            label = f"{name}{', bias-corrected' if corrected else ''}"
            print(f"  conversion: {label:31s} {median_cosine(reference, quantised):.4f}")


if __name__ == "__main__":
    main()
