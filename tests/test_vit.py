"""Facts about the MoCo v3 ViT backbones (official vits.py and the paper) that are particular to a ViT.

What every backbone of the registry keeps (output width, parameter counts against the published figures, the .keras
file, the checkpoint and mixed-precision round trips) is the contract of tests/test_backbones.py.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import backbone_contract as contract
from tf_mocov3.models import vit

# --- helpers -----------------------------------------------------------------


def _np(x):
    """Variables and tensors to numpy (Variable.numpy avoids a numpy-2 warning)."""
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


def _micro(image_size=32, **kwargs):
    return vit.build_backbone("vit_micro", image_size, **kwargs)


def _images(batch, size, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, size, size, 3)).astype("float32")


def _expected_vit_params(depth, dim, patch, mlp_ratio=4):
    """Counts from the architecture: patch conv + [CLS] + blocks + final norm (the contract's formula)."""
    return contract.vit_parameters(depth, dim, patch, mlp_ratio)[0]


@pytest.fixture(scope="module")
def vit_small():
    keras.utils.set_random_seed(0)
    return vit.build_backbone("vit_small")


# --- architecture ------------------------------------------------------------


def test_vit_small_param_count(vit_small):
    # The contract counts a ViT from one block at full width (tests/backbone_contract.py, full_size_counts): the
    # whole ViT-S, built here anyway, has what that count says.
    expected = _expected_vit_params(12, 384, 16)
    assert expected == 21_590_016
    assert vit_small.count_params() == expected
    counted, width = contract.full_size_counts("vit_small")
    assert contract.weight_counts(vit_small) == counted
    # Frozen patch projection: the only non-trainable parameters.
    trainable = sum(int(np.prod(v.shape)) for v in vit_small.trainable_variables)
    assert trainable == expected - (3 * 16 * 16 * 384 + 384) == counted["trainable"]
    assert vit_small.output_shape == (None, 384) and width == 384


def test_arch_table_matches_paper():
    expected = {
        "vit_small": (12, 384, 12, 16, False),
        "vit_base": (12, 768, 12, 16, False),
        "vit_large": (24, 1024, 16, 16, False),
        "vit_huge": (32, 1280, 16, 14, False),
        "vit_conv_small": (11, 384, 12, 16, True),
        "vit_conv_base": (11, 768, 12, 16, True),
    }
    for name, (depth, dim, heads, patch, stem) in expected.items():
        a = vit.ARCHS[name]
        assert (a["depth"], a["embed_dim"], a["num_heads"], a["patch_size"], a["conv_stem"]) == (
            depth, dim, heads, patch, stem)
        assert a["mlp_ratio"] == 4
        assert vit.backbone_has_batchnorm(name) is stem
    # Paper's sizes: ViT-L ~304M, ViT-H ~632M (computed, not built).
    assert round(_expected_vit_params(24, 1024, 16) / 1e6) == 303
    assert round(_expected_vit_params(32, 1280, 14) / 1e6) == 630


def test_block_names_and_norm_epsilon():
    model = _micro()
    for i in range(4):
        block = model.get_layer(f"block_{i}")
        assert isinstance(block, vit.TransformerBlock)
        assert block.norm1.epsilon == block.norm2.epsilon == 1e-6
        assert block.attn.qkv.units == 3 * 128  # ONE fused qkv Dense with bias
        assert block.attn.qkv.use_bias
        assert block.fc1.units == 4 * 128
    assert model.get_layer("norm").epsilon == 1e-6
    with pytest.raises(ValueError):
        model.get_layer("block_4")
    names = [v.name for v in model.weights]
    assert names.count("cls_token") == 1
    assert not any("pos_embed" in v.name for v in model.weights)  # the table is a constant


# --- position embedding ------------------------------------------------------


def test_sincos_values_match_formula():
    h, w, dim = 3, 5, 16
    table = vit.sincos_2d_position_embedding(h, w, dim)
    assert table.shape == (1, 1 + h * w, dim) and table.dtype == np.float32
    np.testing.assert_array_equal(table[0, 0], np.zeros(dim))
    d = dim // 4
    for token in range(h * w):
        r, c = divmod(token, w)  # row-major
        for i in range(d):
            omega = 1.0 / 10000 ** (i / d)
            expected = [math.sin(r * omega), math.cos(r * omega),
                        math.sin(c * omega), math.cos(c * omega)]
            got = table[0, 1 + token, [i, d + i, 2 * d + i, 3 * d + i]]
            np.testing.assert_allclose(got, expected, atol=1e-6)


def test_sincos_matches_official_meshgrid_order_on_square_grid():
    # numpy transcription of vits.py: grid_w, grid_h = meshgrid(arange(w), arange(h), 'ij').
    n, dim = 4, 32
    grid_w, grid_h = np.meshgrid(np.arange(n, dtype=np.float32), np.arange(n, dtype=np.float32),
                                 indexing="ij")
    d = dim // 4
    omega = 1.0 / 10000 ** (np.arange(d, dtype=np.float32) / d)
    out_w = grid_w.reshape(-1)[:, None] * omega
    out_h = grid_h.reshape(-1)[:, None] * omega
    official = np.concatenate([np.sin(out_w), np.cos(out_w), np.sin(out_h), np.cos(out_h)], 1)
    np.testing.assert_allclose(vit.sincos_2d_position_embedding(n, n, dim)[0, 1:], official,
                               atol=1e-5)
    # Token 1 (row 0, column 1): the first half encodes the ROW, so it is sin(0)=0, cos(0)=1.
    table = vit.sincos_2d_position_embedding(n, n, dim)
    np.testing.assert_allclose(table[0, 2, :d], 0.0, atol=1e-7)
    np.testing.assert_allclose(table[0, 2, d:2 * d], 1.0, atol=1e-7)


def test_position_embedding_recomputed_per_image_size():
    small, large = _micro(32), _micro(64)
    small.set_weights(large.get_weights())  # weights do not depend on the resolution
    for model, size in ((small, 32), (large, 64)):
        grid = size // 4
        layer = model.get_layer("cls_pos_embed")
        np.testing.assert_array_equal(layer._pos_embed,
                                      vit.sincos_2d_position_embedding(grid, grid, 128))
        out = model(_images(2, size))
        assert out.shape == (2, 128) and np.all(np.isfinite(out))
    # The layer really adds the table: zero patches + zero [CLS] give the table back.
    layer = small.get_layer("cls_pos_embed")
    layer.cls_token.assign(np.zeros((1, 1, 128), "float32"))
    out = layer(np.zeros((1, 8, 8, 128), "float32"))
    np.testing.assert_allclose(out, vit.sincos_2d_position_embedding(8, 8, 128), atol=1e-6)


# --- frozen patch projection -------------------------------------------------


def test_patch_embed_frozen_by_default_and_trainable_on_request():
    frozen = _micro()
    patch = frozen.get_layer("patch_embed")
    ids = {id(v) for v in patch.weights}
    assert len(ids) == 2
    assert ids <= {id(v) for v in frozen.weights}
    assert not ids & {id(v) for v in frozen.trainable_variables}
    trained = _micro(train_patch_embed=True)
    patch = trained.get_layer("patch_embed")
    assert {id(v) for v in patch.weights} <= {id(v) for v in trained.trainable_variables}


# --- initialisation ----------------------------------------------------------


def _assert_uniform(values, bound):
    values = _np(values).ravel()
    assert np.abs(values).max() <= bound * (1 + 1e-6)
    assert np.abs(values).max() > 0.98 * bound
    np.testing.assert_allclose(values.std(), bound / math.sqrt(3), rtol=0.03)


def test_init_statistics(vit_small):
    dim, p = 384, 16
    block = vit_small.get_layer("block_3")
    _assert_uniform(block.attn.qkv.kernel, math.sqrt(6 / (dim + dim)))
    _assert_uniform(block.attn.proj.kernel, math.sqrt(6 / (dim + dim)))
    _assert_uniform(block.fc1.kernel, math.sqrt(6 / (dim + 4 * dim)))
    _assert_uniform(block.fc2.kernel, math.sqrt(6 / (4 * dim + dim)))
    for dense in (block.attn.qkv, block.attn.proj, block.fc1, block.fc2):
        assert not np.any(_np(dense.bias))
    patch = vit_small.get_layer("patch_embed")
    _assert_uniform(patch.kernel, math.sqrt(6 / (3 * p * p + dim)))
    assert not np.any(_np(patch.bias))
    cls = _np(vit_small.get_layer("cls_pos_embed").cls_token).ravel()
    assert 0.8e-6 < cls.std() < 1.2e-6 and abs(cls.mean()) < 2e-7


# --- stochastic depth, overrides, errors -------------------------------------


def test_drop_path_identity_at_inference_and_linear_rates():
    keras.utils.set_random_seed(1)
    plain = _micro()
    dropped = _micro(drop_path_rate=0.5)
    dropped.set_weights(plain.get_weights())
    x = _images(8, 32)
    np.testing.assert_allclose(dropped(x, training=False), plain(x, training=False), atol=1e-6)
    assert np.abs(dropped(x, training=True) - plain(x, training=True)).max() > 1e-3
    rates = [dropped.get_layer(f"block_{i}").drop_path_rate for i in range(4)]
    np.testing.assert_allclose(rates, np.linspace(0.0, 0.5, 4))
    assert plain.get_layer("block_3").drop_path is None  # no RNG state when off


def test_unknown_arch_lists_valid_names():
    with pytest.raises(ValueError) as err:
        vit.build_backbone("vit_tiny")
    for name in vit.ARCHS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="vit_small"):
        vit.backbone_has_batchnorm("resnet50")


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"image_size": 30}, "not divisible by patch_size"),
        ({"embed_dim": 130, "num_heads": 2}, "not divisible by 4"),
        ({"num_heads": 3}, "not divisible by num_heads"),
        ({"dropout": 0.1}, "Unknown backbone override"),
        ({"drop_path_rate": 1.0}, "drop_path_rate"),
    ],
)
def test_bad_overrides_raise(kwargs, fragment):
    kwargs = dict(kwargs)
    image_size = kwargs.pop("image_size", 32)
    with pytest.raises(ValueError, match=fragment):
        vit.build_backbone("vit_micro", image_size, **kwargs)


def test_overrides_change_the_model():
    model = vit.build_backbone("vit_micro", 32, embed_dim=64, depth=2, num_heads=2, patch_size=8)
    assert model.output_shape == (None, 64)
    assert model.count_params() == _expected_vit_params(2, 64, 8)


# --- conv stem ---------------------------------------------------------------


def test_conv_stem_shapes_and_batchnorm():
    with pytest.raises(ValueError, match="patch_size must be 16"):
        vit.build_backbone("vit_conv_small", 64, patch_size=8)
    model = vit.build_backbone("vit_conv_small", 64)
    stem = model.get_layer("patch_embed")
    assert isinstance(stem, vit.ConvStem)
    assert [c.filters for c in stem.convs] == [48, 96, 192, 384]
    assert all(c.kernel_size == (3, 3) and c.strides == (2, 2) and not c.use_bias
               for c in stem.convs)
    assert stem.proj.kernel_size == (1, 1) and stem.proj.use_bias and stem.proj.filters == 384
    for bn in stem.bns:
        assert bn.synchronized and bn.momentum == 0.9 and bn.epsilon == 1e-5
    assert stem.compute_output_shape((None, 64, 64, 3)) == (None, 4, 4, 384)
    # Trained normally: every stem kernel is trainable.
    trainable = {id(v) for v in model.trainable_variables}
    assert all(id(c.kernel) in trainable for c in stem.convs + [stem.proj])
    assert len(model.layers) == 2 + 1 + 11 + 2  # input, stem, cls/pos, 11 blocks, cls, norm
    assert model(_images(2, 64)).shape == (2, 384)
    assert model.get_layer("cls_pos_embed")._pos_embed.shape == (1, 17, 384)


# --- compilation (precision, saving and checkpoints: tests/test_backbones.py) -


def test_xla_matches_eager():
    model = _micro()
    x = tf.constant(_images(2, 32))
    compiled = tf.function(lambda t: model(t, training=False), jit_compile=True)
    np.testing.assert_allclose(compiled(x), model(x), atol=1e-4)
