"""Bias correction before int8: weights land on the int8 grid and the float output barely moves."""
import numpy as np
import pytest

from convert.bias_correction import correct_for_int8

pytest.importorskip("tensorflow")


def cancelling_model(seed: int = 0):
    """Rescaling, then a nested block whose depthwise taps nearly cancel at high gain (like MobileNetV2's stem)."""
    import keras
    keras.utils.set_random_seed(seed)
    inner_in = keras.Input((16, 16, 3))
    x = keras.layers.DepthwiseConv2D(3, use_bias=False, name="dw")(inner_in)
    x = keras.layers.BatchNormalization(name="dw_BN")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.Conv2D(4, 1, use_bias=False, name="pw")(x)
    x = keras.layers.BatchNormalization(name="pw_BN")(x)
    inner = keras.Model(inner_in, x, name="inner")
    inputs = keras.Input((16, 16, 3))
    y = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    y = keras.layers.GlobalAveragePooling2D()(inner(y))
    model = keras.Model(inputs, keras.layers.Dense(2, name="logits")(y))
    rng = np.random.default_rng(seed)
    kernel = rng.normal(0, 1, (3, 3, 3, 1))
    kernel[1, 1] -= kernel.sum(axis=(0, 1))  # taps sum to ~0: an edge detector
    kernel[0, 0, 0, 0] = 40.0               # one huge tap sets a coarse int8 grid for the others
    kernel[2, 2, 0, 0] = -40.0
    inner.get_layer("dw").set_weights([kernel.astype(np.float32)])
    return model, inner


def test_weights_snap_to_the_int8_grid_and_the_bias_absorbs_the_error():
    model, inner = cancelling_model()
    crops = np.random.default_rng(1).integers(150, 200, (32, 16, 16, 3)).astype(np.uint8)  # flat, bright
    before = np.asarray(model(crops.astype(np.float32)))
    beta_before = inner.get_layer("dw_BN").get_weights()[1].copy()

    assert correct_for_int8(model, crops) == 2

    kernel = inner.get_layer("dw").get_weights()[0]
    gamma, _, _, var = inner.get_layer("dw_BN").get_weights()
    folded = kernel[..., 0] * gamma / np.sqrt(var + 1e-3)
    steps = folded / (np.abs(folded).max(axis=(0, 1)) / 127)
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)  # on the grid the converter will use
    assert not np.allclose(inner.get_layer("dw_BN").get_weights()[1], beta_before)  # bias moved
    after = np.asarray(model(crops.astype(np.float32)))
    assert np.abs(after - before).max() < 0.05 * np.abs(before).max()


def test_without_the_bias_shift_snapping_alone_moves_the_output_more():
    """The correction is what keeps the output: snapping alone shifts the cancelling channel."""
    model, inner = cancelling_model()
    crops = np.random.default_rng(1).integers(150, 200, (32, 16, 16, 3)).astype(np.uint8)
    before = np.asarray(model(crops.astype(np.float32)))
    bn = inner.get_layer("dw_BN")
    saved = bn.get_weights()
    correct_for_int8(model, crops)
    corrected = np.asarray(model(crops.astype(np.float32)))
    bn.set_weights(saved)  # undo only the bias shift
    snapped_only = np.asarray(model(crops.astype(np.float32)))
    assert np.abs(snapped_only - before).mean() > 3 * np.abs(corrected - before).mean()


def test_layers_meant_to_stay_float_are_left_alone():
    model, inner = cancelling_model()
    crops = np.random.default_rng(1).integers(0, 255, (8, 16, 16, 3)).astype(np.uint8)
    kernel = inner.get_layer("dw").get_weights()[0].copy()
    assert correct_for_int8(model, crops, keep_float=lambda name: name == "dw") == 1
    np.testing.assert_array_equal(inner.get_layer("dw").get_weights()[0], kernel)


def test_the_float_stem_names_the_backbone_layers_it_keeps():
    from convert.converter import stays_float
    for kept in ("Conv1", "expanded_conv_depthwise", "expanded_conv_project"):
        assert stays_float(kept), kept
    for quantised in ("block_1_expand", "block_2_project", "Conv_1", "block_12_expand", "block_16_project",
                      "logits"):
        assert not stays_float(quantised), quantised
