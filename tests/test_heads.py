"""Facts about the MoCo v3 projector / predictor (official _build_mlp)."""

import math

import keras
import numpy as np
import pytest

from tf_mocov3.models import heads


def _np(x):
    """Variables and tensors to numpy (Variable.numpy avoids a numpy-2 warning)."""
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


def _layer_kinds(model):
    return [type(layer).__name__ for layer in model.layers[1:]]


def test_projector_structure_and_param_count():
    proj = heads.build_projector(384)  # paper sizes: 384 -> 4096 -> 4096 -> 256
    assert proj.name == "projector"
    assert _layer_kinds(proj) == ["Dense", "BatchNormalization", "ReLU"] * 2 + [
        "Dense", "BatchNormalization"]
    assert [proj.get_layer(f"linear_{i}").units for i in range(3)] == [4096, 4096, 256]
    dense = 384 * 4096 + 4096 * 4096 + 4096 * 256
    trainable = sum(int(np.prod(v.shape)) for v in proj.trainable_variables)
    assert trainable == dense + 2 * 2 * 4096  # gamma/beta on hidden BNs only
    assert proj.output_shape == (None, 256)


def test_predictor_structure():
    pred = heads.build_predictor(256, 4096)
    assert pred.name == "predictor"
    assert _layer_kinds(pred) == ["Dense", "BatchNormalization", "ReLU", "Dense",
                                  "BatchNormalization"]
    assert pred.get_layer("linear_0").units == 4096
    assert pred.get_layer("linear_1").units == 256


def test_dense_has_no_bias_and_bn_is_pytorch_like():
    mlp = heads.build_mlp(3, 16, 32, 8)
    for i in range(3):
        assert not mlp.get_layer(f"linear_{i}").use_bias
        bn = mlp.get_layer(f"bn_{i}")
        assert bn.synchronized and bn.momentum == 0.9 and bn.epsilon == 1e-5
    hidden_bn = mlp.get_layer("bn_0")
    assert hidden_bn.gamma is not None and hidden_bn.beta is not None
    last_bn = mlp.get_layer("bn_2")
    assert last_bn.gamma is None and last_bn.beta is None
    assert sorted(v.name for v in last_bn.weights) == ["moving_mean", "moving_variance"]
    assert not last_bn.trainable_variables


def test_last_bn_optional():
    mlp = heads.build_mlp(2, 16, 32, 8, last_bn=False)
    assert _layer_kinds(mlp) == ["Dense", "BatchNormalization", "ReLU", "Dense"]


def test_last_bn_standardises_output_in_training():
    keras.utils.set_random_seed(0)
    mlp = heads.build_mlp(2, 16, 32, 8)
    x = np.random.default_rng(0).standard_normal((64, 16)).astype("float32") * 3 + 1
    y = _np(mlp(x, training=True))
    np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(y.var(0), 1.0, rtol=1e-2)  # eps 1e-5, no affine


@pytest.mark.parametrize("fan_in", [256, 4096])
def test_dense_init_is_pytorch_default(fan_in):
    mlp = heads.build_mlp(2, fan_in, 512, 64)
    kernel = _np(mlp.get_layer("linear_0").kernel)
    bound = 1.0 / math.sqrt(fan_in)
    assert np.abs(kernel).max() <= bound * (1 + 1e-6)
    assert np.abs(kernel).max() > 0.98 * bound
    np.testing.assert_allclose(kernel.std(), bound / math.sqrt(3), rtol=0.03)


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="mlp_dim"):
        heads.build_mlp(2, 16, 0, 8)
