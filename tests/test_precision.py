"""Mixed precision keeps what PyTorch autocast keeps in float32: the residual stream, the [CLS] / position adds and the
final LayerNorm of the ViT (tf_mocov3/models/vit.py, float32_residual), and the contrastive logits."""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_mocov3 import config_lib
from tf_mocov3.models import moco
from tf_mocov3.models import vit
from tf_mocov3.training import optim
from tf_mocov3.training import trainer

IMAGE = 16
DEPTH = 8  # deep enough for a low-precision residual stream to lose precision over the blocks


def _config(float32_residual):
    c = config_lib.base_config()
    c.model.arch = "vit_micro"
    c.model.overrides.embed_dim, c.model.overrides.depth, c.model.overrides.num_heads = 32, DEPTH, 2
    c.model.overrides.float32_residual = float32_residual
    c.model.moco_dim, c.model.mlp_dim = 32, 64
    c.optim.name = "lars"  # an update proportional to the gradient (Adam's first step is about lr * sign(g))
    c.optim.base_lr = 0.5
    c.optim.weight_decay = 0.0
    c.optim.warmup_epochs = 0.0
    return c


@functools.lru_cache(maxsize=None)
def _one_step(policy, float32_residual):
    """(loss, [the step's update of each trainable variable]) of one MoCo step under `policy` from the seed-0 initial
    weights."""
    views = _views()
    config = _config(float32_residual)
    with trainer.precision(policy):
        keras.utils.set_random_seed(0)
        model = moco.build_moco(config.model, image_size=IMAGE, total_steps=10)
        opt = optim.build_optimizer(config.optim, global_batch=16, steps_per_epoch=10, total_steps=10)
        if policy == "mixed_float16":
            opt = keras.optimizers.LossScaleOptimizer(opt)
        model.compile(optimizer=opt, jit_compile=False)
        before = [v.numpy() for v in model.trainable_variables]
        history = model.fit(tf.data.Dataset.from_tensors(views), epochs=1, steps_per_epoch=1, verbose=0)
    return float(history.history["loss"][-1]), [v.numpy() - b for v, b in zip(model.trainable_variables, before)]


@functools.lru_cache(maxsize=None)
def _features(policy, float32_residual):
    """The backbone's [CLS] features of the first view under `policy`, from the seed-0 initial weights (float32)."""
    with trainer.precision(policy):
        keras.utils.set_random_seed(0)
        model = moco.build_moco(_config(float32_residual).model, image_size=IMAGE, total_steps=10)
        return np.asarray(tf.cast(model.backbone(_views()[0], training=True), tf.float32))


def _error(reference, other):
    """Relative error of a step's weight update: sum |dw - dw_float32| / sum |dw_float32| over every weight."""
    diff = sum(float(np.abs(o - r).sum()) for o, r in zip(other, reference))
    return diff / sum(float(np.abs(r).sum()) for r in reference)


def _views():
    rng = np.random.default_rng(0)
    return tuple(tf.constant(rng.normal(0, 1, (16, IMAGE, IMAGE, 3)).astype(np.float32)) for _ in range(2))


def test_float32_residual_builds_the_stream_in_float32_and_the_branches_in_the_compute_dtype():
    with trainer.precision("mixed_bfloat16"):
        kept = vit.build_backbone("vit_micro", IMAGE, depth=2, embed_dim=32, num_heads=2)
        bf16 = vit.build_backbone("vit_micro", IMAGE, depth=2, embed_dim=32, num_heads=2, float32_residual=False)
    block = kept.get_layer("block_0")
    assert block.compute_dtype == "float32" and block.attn.compute_dtype == "bfloat16"
    assert block.fc1.compute_dtype == "bfloat16" and kept.get_layer("cls_pos_embed").compute_dtype == "float32"
    assert kept.get_layer("norm").compute_dtype == "bfloat16"  # reads the float32 stream, returns bfloat16
    assert bf16.get_layer("block_0").compute_dtype == "bfloat16"
    # Same weights either way (names, shapes): checkpoints do not depend on the switch.
    assert [(w.path, w.shape) for w in kept.weights] == [(w.path, w.shape) for w in bf16.weights]


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_step_is_closer_to_float32_with_a_float32_residual_stream(policy):
    ref_loss, ref = _one_step("float32", True)
    loss, kept = _one_step(policy, True)
    low_loss, low = _one_step(policy, False)
    err_kept, err_low = _error(ref, kept), _error(ref, low)
    print(f"{policy}: loss {ref_loss:.6f} (float32) {loss:.6f} (float32 stream) {low_loss:.6f} (low stream); "
          f"weight error {err_kept:.2e} vs {err_low:.2e}")
    # The stated tolerances: the loss within 1e-2 (bfloat16) / 2e-3 (float16) of float32 and the update within 35% /
    # 15% (relative, summed over every weight) of float32's update. Measured on the 2-core AVX2 machine: bfloat16 loss
    # off by 2e-3 to 5e-3, update error 0.26 with oneDNN's default kernels and 0.285 capped at AVX
    # (ONEDNN_MAX_CPU_ISA=AVX); float16 8e-4 and 0.10.
    loss_tol, update_tol = {"mixed_bfloat16": (1e-2, 0.35), "mixed_float16": (2e-3, 0.15)}[policy]
    assert abs(loss - ref_loss) < loss_tol
    assert err_kept < update_tol
    # ... and the float32 stream is why. float16: with a float16 stream the stream overflows and the loss-scale
    # optimizer skips the step (update error 1.0 against 0.10). bfloat16 does not overflow, and its update error is
    # the same with either stream within the kernels' round-off (0.26 vs 0.27 by default, 0.285 vs 0.262 capped at
    # AVX: no margin to assert), so the stream's precision is checked where it acts, on the features of the forward
    # pass: error 1.41e-2 with the float32 stream against 1.56e-2 with a bfloat16 one, the same ratio (1.11-1.12) with
    # oneDNN's default kernels, with its ops on, capped at AVX and capped at SSE4.1.
    if policy == "mixed_float16":
        assert err_kept < err_low
    else:
        ref_f, kept_f, low_f = (_features(p, r) for p, r in (("float32", True), (policy, True), (policy, False)))
        assert _error([ref_f], [kept_f]) * 1.05 < _error([ref_f], [low_f])
