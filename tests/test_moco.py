"""The MoCo v3 step: momentum update, frozen patch projection, logged loss, replica equality and XLA."""

import keras
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_model_config
import roundoff
from tf_mocov3.models import losses
from tf_mocov3.models import moco
from tf_mocov3.training import distribute
from tf_mocov3.training import optim

IMAGE = 16
BATCH = 8


def tiny_optim_config(epsilon=1e-8):
    c = ml_collections.ConfigDict()
    c.name = "adamw"
    c.base_lr = 1e-2
    c.weight_decay = 0.1
    c.warmup_epochs = 0
    c.beta_1, c.beta_2, c.epsilon = 0.9, 0.999, epsilon
    c.decay_convention = "lr_scaled"
    c.decay_exclude = "none"
    return c


def build(jit_compile=False, total_steps=10, model_config=None, epsilon=1e-8):
    keras.utils.set_random_seed(0)
    model = moco.build_moco(model_config or tiny_model_config(), image_size=IMAGE, total_steps=total_steps)
    opt = optim.build_optimizer(tiny_optim_config(epsilon), global_batch=BATCH, steps_per_epoch=5,
                                total_steps=total_steps)
    model.compile(optimizer=opt, jit_compile=jit_compile)
    model.optimizer.build(model.trainable_variables)
    return model


def batches(n_steps, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_steps, 2, BATCH, IMAGE, IMAGE, 3)).astype(np.float32)
    return [(x[i, 0], x[i, 1]) for i in range(n_steps)]


def as_dataset(items):
    return tf.data.Dataset.from_tensor_slices(
        (np.stack([a for a, _ in items]), np.stack([b for _, b in items])))


def params(layer_list):
    return [v.numpy().copy() for layer in layer_list for v in layer.weights]


def test_momentum_encoder_starts_as_a_copy_and_is_not_trained():
    model = build()
    for xi, theta in zip(model.momentum_backbone.weights, model.backbone.weights):
        np.testing.assert_array_equal(xi.numpy(), theta.numpy())
    trained = {id(v) for v in model.trainable_variables}
    assert not trained & {id(v) for v in model.momentum_backbone.weights + model.momentum_projector.weights}
    assert {id(v) for v in model.predictor.trainable_variables} <= trained


def test_momentum_update_follows_the_formula():
    model = build()
    for xi in model.momentum_backbone.weights + model.momentum_projector.weights:
        xi.assign(tf.random.normal(xi.shape))
    before_xi = params([model.momentum_backbone, model.momentum_projector])
    theta = params([model.backbone, model.projector])
    m = 0.7
    model.update_momentum_encoder(m)
    after = params([model.momentum_backbone, model.momentum_projector])
    names = [v.path for v in model.momentum_backbone.weights + model.momentum_projector.weights]
    for name, b, t, a in zip(names, before_xi, theta, after):
        if "moving_" in name:
            np.testing.assert_array_equal(a, b)  # BN moving statistics are not averaged
        else:
            np.testing.assert_allclose(a, m * b + (1 - m) * t, rtol=1e-6, atol=1e-7)


def test_momentum_update_uses_weights_from_before_the_optimizer_step():
    model = build()
    theta0 = params([model.backbone, model.projector])
    data = batches(2)
    model.fit(as_dataset(data).batch(1).map(lambda a, b: (a[0], b[0])), epochs=1, steps_per_epoch=1, verbose=0)
    # Step 1: xi_1 = m * xi_0 + (1 - m) * theta_0 = theta_0 because xi_0 = theta_0.
    xi1 = params([model.momentum_backbone, model.momentum_projector])
    names = [v.path for v in model.momentum_backbone.weights + model.momentum_projector.weights]
    for name, a, t in zip(names, xi1, theta0):
        if "moving_" not in name:
            np.testing.assert_allclose(a, t, rtol=1e-6, atol=1e-7)
    theta1 = params([model.backbone, model.projector])
    m1 = float(model.momentum_at(tf.constant(1, tf.int64)))
    model.fit(as_dataset(data[1:]).batch(1).map(lambda a, b: (a[0], b[0])), epochs=1, steps_per_epoch=1, verbose=0)
    xi2 = params([model.momentum_backbone, model.momentum_projector])
    for name, a, x, t in zip(names, xi2, xi1, theta1):
        if "moving_" not in name:
            np.testing.assert_allclose(a, m1 * x + (1 - m1) * t, rtol=1e-5, atol=1e-6)


def test_random_patch_projection_stays_frozen():
    model = build()
    patch = model.backbone.get_layer("patch_embed")
    before = [w.numpy().copy() for w in patch.weights]
    assert not any(id(w) in {id(v) for v in model.trainable_variables} for w in patch.weights)
    model.fit(as_dataset(batches(3)), epochs=1, steps_per_epoch=3, verbose=0)
    for b, w in zip(before, patch.weights):
        np.testing.assert_array_equal(b, w.numpy())
    # ...while the rest of the backbone did train.
    block = model.backbone.get_layer("block_0")
    assert any(not np.allclose(v.numpy(), 0) for v in block.trainable_variables)


def test_logged_loss_is_the_loss_computed_by_hand():
    model = build()
    x1, x2 = batches(1)[0]
    # By hand: at step 1 the momentum encoder still equals the online encoder (see above).
    q1, q2 = model.queries(x1, x2, training=True)
    k1, k2 = model.keys(x1, x2)
    expected = float(losses.symmetrized_loss(q1, q2, k1, k2, 0.2))
    logged = []
    cb = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: logged.append(float(logs["loss"])))
    history = model.fit(as_dataset([(x1, x2)]), epochs=1, steps_per_epoch=1, verbose=0, callbacks=[cb])
    assert logged[0] == pytest.approx(expected, rel=1e-5)
    assert history.history["loss"][0] == pytest.approx(expected, rel=1e-5)
    assert expected > 1.0  # not the 0.0 that a dropped metric would show


# Some parameters have a gradient that is exactly zero in exact arithmetic: the key part of the qkv bias (softmax
# ignores a constant added to every key) and the final LayerNorm beta (the projector's BN removes a constant shift).
# Their computed gradient is round-off, which AdamW turns into a step of up to +-lr whose sign depends on summation
# order (PyTorch does the same). The equality tests use eps 1e-3, where Adam's step moves by at most lr / eps = 0.31
# times a gradient's round-off (1e-5 let a near-zero real gradient move one entry 1.5e-5 on AVX-capped kernels), and
# compare those structural zeros within Adam's bound (tests/roundoff.py).
EQUALITY_EPS = 1e-3


def _one_step(strategy, data, jit_compile=False):
    with strategy.scope():
        model = build(jit_compile=jit_compile, epsilon=EQUALITY_EPS)
    logged = []
    cb = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: logged.append(
        {k: float(v) for k, v in logs.items()}))
    model.fit(as_dataset(data), epochs=1, steps_per_epoch=len(data), verbose=0, callbacks=[cb])
    weights = [v.numpy() for v in model.weights]
    return logged, weights


@pytest.mark.roundoff
def test_two_replicas_equal_one_replica():
    data = batches(1, seed=3)
    one_logs, one_w = _one_step(tf.distribute.get_strategy(), data)
    two = distribute.mirrored_strategy(["/cpu:0", "/cpu:1"])
    # experimental_distribute_dataset splits each global batch of 8 into 2 x 4 in order.
    with two.scope():
        model = build(epsilon=EQUALITY_EPS)
    logged = []
    cb = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: logged.append(
        {k: float(v) for k, v in logs.items()}))
    ds = two.experimental_distribute_dataset(as_dataset(data))
    model.fit(ds, epochs=1, steps_per_epoch=1, verbose=0, callbacks=[cb])
    two_w = [v.numpy() for v in model.weights]
    assert logged[0]["loss"] == pytest.approx(one_logs[0]["loss"], abs=1e-5)
    for key in ("grad_norm_first_block", "grad_norm_last_block"):
        assert logged[0][key] == pytest.approx(one_logs[0][key], rel=1e-4)
    assert len(one_w) == len(two_w) == len(model.weights)
    roundoff.assert_runs_agree(dict(enumerate(one_w)), dict(enumerate(two_w)), dict(enumerate(model.weights)),
                               model=model, lrs=roundoff.learning_rates(model, 1),
                               what="one step, 2 replicas vs 1")


@pytest.mark.roundoff
def test_xla_step_compiles_and_matches_the_graph_step():
    data = batches(2, seed=5)
    logs_graph, w_graph = _one_step(tf.distribute.get_strategy(), data, jit_compile=False)
    logs_xla, w_xla = _one_step(tf.distribute.get_strategy(), data, jit_compile=True)
    assert logs_xla[-1]["loss"] == pytest.approx(logs_graph[-1]["loss"], abs=1e-4)
    model = build(epsilon=EQUALITY_EPS)  # the same code's variables, for the structural zeros of tests/roundoff.py
    assert len(w_graph) == len(w_xla) == len(model.weights)
    # XLA fuses and reorders more than the graph executor: 1e-4 on entries with a real gradient, as before.
    roundoff.assert_runs_agree(dict(enumerate(w_graph)), dict(enumerate(w_xla)), dict(enumerate(model.weights)),
                               model=model, lrs=roundoff.learning_rates(model, 2), what="XLA vs graph, 2 steps",
                               atol=1e-4)


def test_batched_views_equal_separate_views_for_a_bn_free_backbone():
    model = build()
    x1, x2 = batches(1)[0]
    assert model.batch_views  # plain ViT: no batch norm in the backbone
    together = model._features(model.backbone, x1, x2, True)
    model.batch_views = False
    apart = model._features(model.backbone, x1, x2, True)
    for a, b in zip(together, apart):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_conv_stem_backbone_runs_views_separately():
    model = build(model_config=tiny_model_config("vit_conv_small"))
    assert not model.batch_views


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_step_keeps_float32_loss_and_variables(policy):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model = build()
        q1, _ = model.queries(*batches(1)[0], training=False)
        assert q1.dtype == policy.split("_")[1]  # the heads compute in the low precision
        logged, scales = [], []

        def log(batch, logs):
            logged.append(logs)
            scales.append(float(getattr(model.optimizer, "dynamic_scale", 1.0)))

        cb = keras.callbacks.LambdaCallback(on_train_batch_end=log)
        model.fit(as_dataset(batches(2)), epochs=1, steps_per_epoch=2, verbose=0, callbacks=[cb])
        assert all(np.isfinite(float(row["loss"])) for row in logged)
        assert all(v.dtype == "float32" for v in model.trainable_variables)
        # float16 needs loss scaling (Keras wraps the optimizer); bfloat16 does not.
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (policy == "mixed_float16")
        # A step whose scaled float16 gradients overflowed is skipped (the loss scale halves) and its gradient norms
        # are not finite; every applied step's norms are. (With the float32 residual stream of the ViT, fewer
        # steps overflow than with a float16 stream, which skipped both steps here.)
        start = [2.0 ** 15 if policy == "mixed_float16" else 1.0]  # Keras' initial loss scale
        applied = [row for row, before, after in zip(logged, start + scales, scales) if after >= before]
        assert applied and all(np.isfinite(float(row["grad_norm_first_block"])) for row in applied)
    finally:
        keras.config.set_dtype_policy(previous)

