"""Folding the pixel scaling into Conv1 keeps the model's function and leaves other layouts alone."""
import numpy as np
import pytest

pytest.importorskip("tensorflow")

from conftest import build_tiny_keras  # noqa: E402
from convert.input_fold import fold_input_scaling  # noqa: E402
from network.model import build_model  # noqa: E402


@pytest.mark.parametrize("size", [32, 33])  # even and odd sizes pad differently under 'same'
def test_the_folded_model_computes_the_same_logits(size):
    import keras
    keras.utils.set_random_seed(0)
    model = build_model(4, input_size=size, weights=None)
    folded = fold_input_scaling(model)
    assert folded is not None
    assert [layer.name for layer in folded.layers][1] == "pad_to_scaled_zero"
    assert not any(isinstance(layer, keras.layers.Rescaling) for layer in folded.layers)
    pixels = np.random.default_rng(1).integers(0, 256, (3, size, size, 3)).astype(np.float32)
    pixels[0] = 255.0  # a saturated image weighs the border padding most
    np.testing.assert_allclose(np.asarray(folded(pixels)), np.asarray(model(pixels)), atol=1e-4, rtol=1e-4)


def test_a_model_without_the_backbone_layout_is_not_folded():
    assert fold_input_scaling(build_tiny_keras()) is None
