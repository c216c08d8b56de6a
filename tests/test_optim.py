"""Optimizers against independent numpy references (PyTorch AdamW, You et al. LAMB, official LARS)."""

import os
import subprocess
import sys
import textwrap

import keras
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from tf_mocov3.training import optim
from tf_mocov3.training import schedules

STEPS = 4


# === Helpers ===


def make_vars():
    """A kernel, a bias, a [CLS]-like token, and an all-zero kernel."""
    rng = np.random.default_rng(0)
    init = {
        "kernel": rng.normal(size=(3, 4)).astype(np.float32),
        "bias": rng.normal(size=(4,)).astype(np.float32),
        "cls_token": rng.normal(size=(1, 1, 4)).astype(np.float32),
        "zero_kernel": np.zeros((2, 3), np.float32),
    }
    variables = [keras.Variable(v, name=k) for k, v in init.items()]
    return variables, {k: v.astype(np.float64) for k, v in init.items()}


def make_grads(shapes, steps=STEPS):
    rng = np.random.default_rng(1)
    return [[rng.normal(size=s).astype(np.float32) for s in shapes] for _ in range(steps)]


def run(opt, variables, grads):
    for step_grads in grads:
        opt.apply([tf.constant(g) for g in step_grads], variables)
    return [v.numpy() for v in variables]


def lr_at(t):
    """The numpy lr schedule used with `schedules.WarmupCosine(0.1, 2, 10)`."""
    peak, warm, total = 0.1, 2, 10
    if t < warm:
        return peak * t / warm
    return peak * 0.5 * (1 + np.cos(np.pi * (t - warm) / (total - warm)))


def torch_adamw(params, grads, lrs, wd, decayed, b1=0.9, b2=0.999, eps=1e-8):
    """torch.optim.AdamW.step (single-tensor path), in float64."""
    params = {k: v.copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v2 = {k: np.zeros_like(v) for k, v in params.items()}
    for t, (step_grads, lr) in enumerate(zip(grads, lrs), start=1):
        for (k, p), g in zip(params.items(), step_grads):
            g = g.astype(np.float64)
            if decayed[k]:
                p *= 1 - lr * wd
            m[k] = b1 * m[k] + (1 - b1) * g
            v2[k] = b2 * v2[k] + (1 - b2) * g * g
            step_size = lr / (1 - b1**t)
            denom = np.sqrt(v2[k]) / np.sqrt(1 - b2**t) + eps
            p -= step_size * m[k] / denom
    return params


def you_lamb(params, grads, lrs, wd, decayed, adapted, b1=0.9, b2=0.999, eps=1e-6):
    """You et al. (2019) LAMB as in TF Addons, in float64."""
    params = {k: v.copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v2 = {k: np.zeros_like(v) for k, v in params.items()}
    for t, (step_grads, lr) in enumerate(zip(grads, lrs), start=1):
        for (k, p), g in zip(params.items(), step_grads):
            g = g.astype(np.float64)
            m[k] = b1 * m[k] + (1 - b1) * g
            v2[k] = b2 * v2[k] + (1 - b2) * g * g
            r = (m[k] / (1 - b1**t)) / (np.sqrt(v2[k] / (1 - b2**t)) + eps)
            if decayed[k]:
                r = r + wd * p
            ratio = 1.0
            if adapted[k]:
                wn, rn = np.linalg.norm(p), np.linalg.norm(r)
                ratio = wn / rn if (wn > 0 and rn > 0) else 1.0
            p -= lr * ratio * r
    return params


def official_lars(params, grads, lrs, wd, momentum=0.9, eta=0.001):
    """moco/optimizer.py LARS.step, in float64."""
    params = {k: v.copy() for k, v in params.items()}
    mu = {k: np.zeros_like(v) for k, v in params.items()}
    for step_grads, lr in zip(grads, lrs):
        for (k, p), g in zip(params.items(), step_grads):
            d = g.astype(np.float64)
            if p.ndim > 1:
                d = d + wd * p
                pn, dn = np.linalg.norm(p), np.linalg.norm(d)
                d = d * (eta * pn / dn if (pn > 0 and dn > 0) else 1.0)
            mu[k] = momentum * mu[k] + d
            p -= lr * mu[k]
    return params


def assert_params(got, want, **tol):
    for g, (k, w) in zip(got, want.items()):
        np.testing.assert_allclose(g, w, err_msg=k, **tol)


# === AdamW ===


@pytest.mark.parametrize("exclude_mode", ["none", "bias_norm_cls"])
def test_adamw_matches_pytorch_adamw(exclude_mode):
    variables, init = make_vars()
    grads = make_grads([v.shape for v in variables])
    wd = 0.3
    opt = optim.AdamW(
        learning_rate=schedules.WarmupCosine(0.1, 2, 10),
        weight_decay=wd,
        **optim.decay_exclusions(exclude_mode),
    )
    got = run(opt, variables, grads)
    if exclude_mode == "none":
        decayed = {k: True for k in init}
    else:
        decayed = {"kernel": True, "bias": False, "cls_token": False, "zero_kernel": True}
    want = torch_adamw(init, grads, [lr_at(t) for t in range(STEPS)], wd, decayed)
    # Keras' own (base-class) decay would shrink every variable a second time.
    assert opt._decay_flags == list(decayed.values())
    assert_params(got, want, rtol=2e-6, atol=1e-7)


def test_adamw_epsilon_placed_like_pytorch():
    # Gradients ~1e-8 make sqrt(v_hat) comparable to eps, so eps placement matters:
    # Keras' Adam adds eps to the uncorrected sqrt(v), i.e. eps / sqrt(1 - b2^t) here.
    variables, init = make_vars()
    grads = [[g * 1e-8 for g in step] for step in make_grads([v.shape for v in variables])]
    got = run(optim.AdamW(learning_rate=0.01), variables, grads)
    want = torch_adamw(init, grads, [0.01] * STEPS, 0.0, {k: False for k in init})
    assert_params(got, want, rtol=2e-6, atol=1e-9)
    keras_vars, _ = make_vars()
    keras_got = run(keras.optimizers.Adam(learning_rate=0.01, epsilon=1e-8), keras_vars, grads)
    assert not np.allclose(keras_got[0], want["kernel"], rtol=2e-6, atol=1e-9)


def test_adamw_substring_exclusion_matches_reference():
    variables, init = make_vars()
    grads = make_grads([v.shape for v in variables])
    opt = optim.AdamW(learning_rate=0.05, weight_decay=0.5, exclude_from_weight_decay=["bias", "zero"])
    got = run(opt, variables, grads)
    decayed = {"kernel": True, "bias": False, "cls_token": True, "zero_kernel": False}
    want = torch_adamw(init, grads, [0.05] * STEPS, 0.5, decayed)
    assert_params(got, want, rtol=2e-6, atol=1e-7)


def test_decay_conventions_equivalent_step_for_step():
    peak, wd = 0.1, 0.3
    va, _ = make_vars()
    vb, _ = make_vars()
    grads = make_grads([v.shape for v in va], steps=6)
    opt_a = optim.AdamW(learning_rate=schedules.WarmupCosine(peak, 2, 10), weight_decay=wd)
    opt_b = optim.AdamW(
        learning_rate=schedules.WarmupCosine(peak, 2, 10),
        weight_decay=schedules.WarmupCosine(peak * wd, 2, 10),
        decay_convention="decoupled",
    )
    for step_grads in grads:
        opt_a.apply([tf.constant(g) for g in step_grads], va)
        opt_b.apply([tf.constant(g) for g in step_grads], vb)
        for a, b in zip(va, vb):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-7)


def test_adamw_in_xla_compiled_step():
    variables, init = make_vars()
    grads = make_grads([v.shape for v in variables])
    opt = optim.AdamW(learning_rate=schedules.WarmupCosine(0.1, 2, 10), weight_decay=0.3)
    opt.build(variables)

    @tf.function(jit_compile=True)
    def step(gs):
        opt.apply(gs, variables)

    for step_grads in grads:
        step([tf.constant(g) for g in step_grads])
    want = torch_adamw(init, grads, [lr_at(t) for t in range(STEPS)], 0.3, {k: True for k in init})
    assert_params([v.numpy() for v in variables], want, rtol=2e-6, atol=1e-7)


def test_adamw_config_roundtrip_with_schedule_decay():
    opt = optim.AdamW(
        learning_rate=schedules.WarmupCosine(0.1, 2, 10),
        weight_decay=schedules.WarmupCosine(0.01, 2, 10),
        decay_convention="decoupled",
        exclude_from_weight_decay=["cls_token"],
    )
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(restored, optim.AdamW)
    assert isinstance(restored.weight_decay, schedules.WarmupCosine)
    assert restored.weight_decay.peak_lr == pytest.approx(0.01)
    assert restored.epsilon == 1e-8 and restored.decay_convention == "decoupled"
    assert restored.get_config()["exclude_from_weight_decay"] == ["cls_token"]


# === LAMB ===


def test_lamb_matches_you_et_al_with_zero_weight_variable():
    variables, init = make_vars()
    grads = make_grads([v.shape for v in variables])
    opt = optim.LAMB(learning_rate=schedules.WarmupCosine(0.1, 2, 10), weight_decay=0.01)
    got = run(opt, variables, grads)
    every = {k: True for k in init}
    want = you_lamb(init, grads, [lr_at(t) for t in range(STEPS)], 0.01, every, every)
    assert_params(got, want, rtol=5e-6, atol=1e-7)
    # The all-zero kernel got ratio 1 on its first step: it moved by lr_1 * Adam step, no NaN.
    assert np.all(np.isfinite(got[3])) and np.any(got[3] != 0)


def test_lamb_exclusion_lists():
    variables, init = make_vars()
    grads = make_grads([v.shape for v in variables])
    opt = optim.LAMB(
        learning_rate=0.02,
        weight_decay=0.1,
        exclude_from_weight_decay=["bias"],
        exclude_from_layer_adaptation=["cls_token"],
    )
    got = run(opt, variables, grads)
    decayed = {"kernel": True, "bias": False, "cls_token": True, "zero_kernel": True}
    adapted = {"kernel": True, "bias": True, "cls_token": False, "zero_kernel": True}
    want = you_lamb(init, grads, [0.02] * STEPS, 0.1, decayed, adapted)
    assert_params(got, want, rtol=5e-6, atol=1e-7)


def test_lamb_adaptation_exclusion_defaults_to_decay_exclusion():
    variables, init = make_vars()
    grads = make_grads([v.shape for v in variables])
    opt = optim.LAMB(learning_rate=0.02, weight_decay=0.1, **optim.decay_exclusions("bias_norm_cls"))
    got = run(opt, variables, grads)
    flags = {"kernel": True, "bias": False, "cls_token": False, "zero_kernel": True}
    want = you_lamb(init, grads, [0.02] * STEPS, 0.1, flags, flags)
    assert_params(got, want, rtol=5e-6, atol=1e-7)


def test_lamb_rejects_decoupled_convention():
    with pytest.raises(ValueError, match="LAMB supports only decay_convention='lr_scaled'"):
        optim.LAMB(learning_rate=0.1, weight_decay=0.01, decay_convention="decoupled")


# === LARS ===


def test_lars_matches_official():
    variables, init = make_vars()
    grads = make_grads([v.shape for v in variables])
    opt = optim.LARS(learning_rate=schedules.WarmupCosine(0.1, 2, 10), weight_decay=1e-2)
    got = run(opt, variables, grads)
    want = official_lars(init, grads, [lr_at(t) for t in range(STEPS)], 1e-2)
    assert_params(got, want, rtol=2e-6, atol=1e-7)


def test_a_factor_on_the_loss_is_a_factor_on_adamws_eps_and_not_neutral_for_lars():
    # Why losses.nt_xent_loss can keep the SimCLR paper's scale (half of SimCLR's code) under AdamW: gradients 2g
    # with eps 2e give the updates of g with e, bit for bit (doubling is exact in floating point and the decay does
    # not see the gradient). LARS adds wd * w to the gradient before its trust ratio: 2g is another run.
    grads = make_grads([v.shape for v in make_vars()[0]])
    doubled = [[2.0 * g for g in step] for step in grads]
    one = run(optim.AdamW(learning_rate=0.05, weight_decay=0.5, epsilon=1e-8), make_vars()[0], grads)
    two = run(optim.AdamW(learning_rate=0.05, weight_decay=0.5, epsilon=2e-8), make_vars()[0], doubled)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)
    # Gradients of the size of wd * w (1e-2), where the balance decides the direction of the kernel's update.
    small = [[1e-2 * g for g in step] for step in grads]
    one = run(optim.LARS(learning_rate=0.1, weight_decay=1e-2), make_vars()[0], small)
    two = run(optim.LARS(learning_rate=0.1, weight_decay=1e-2), make_vars()[0], [[2.0 * g for g in s] for s in small])
    init = make_vars()[1]
    want = [official_lars(init, [[f * g for g in s] for s in small], [0.1] * STEPS, 1e-2)["kernel"] for f in (1, 2)]
    for got, ref in zip((one[0], two[0]), want):
        np.testing.assert_allclose(got, ref, rtol=2e-6, atol=1e-7)  # as test_lars_matches_official
    assert np.abs(want[0] - want[1]).max() > 1e-5  # float64 references: 2g moves the kernel elsewhere


# === build_optimizer ===


def optim_config(**overrides):
    cfg = ml_collections.ConfigDict(
        dict(
            name="adamw",
            base_lr=1.5e-4,
            weight_decay=0.1,
            warmup_epochs=2,
            beta_1=0.9,
            beta_2=0.999,
            epsilon=1e-8,
            decay_convention="lr_scaled",
            decay_exclude="none",
            momentum=0.9,  # LARS only
            trust_coefficient=0.001,
        )
    )
    cfg.update(overrides)
    return cfg


def test_build_optimizer_picks_and_schedules():
    kw = dict(global_batch=4096, steps_per_epoch=5, total_steps=50)
    opt = optim.build_optimizer(optim_config(), **kw)
    assert isinstance(opt, optim.AdamW) and opt.weight_decay == pytest.approx(0.1)
    lr = opt._learning_rate
    assert isinstance(lr, schedules.WarmupCosine)
    assert lr.peak_lr == pytest.approx(1.5e-4 * 16) and lr.warmup_steps == 10 and lr.total_steps == 50
    dec = optim.build_optimizer(optim_config(decay_convention="decoupled"), **kw)
    assert dec.weight_decay.peak_lr == pytest.approx(1.5e-4 * 16 * 0.1)
    assert isinstance(optim.build_optimizer(optim_config(name="lamb"), **kw), optim.LAMB)
    lars = optim.build_optimizer(optim_config(name="lars", base_lr=0.6, weight_decay=1e-6), **kw)
    assert isinstance(lars, optim.LARS) and lars.momentum == 0.9


def test_build_optimizer_validates():
    kw = dict(global_batch=256, steps_per_epoch=5, total_steps=50)
    with pytest.raises(ValueError, match="adamw.*lamb.*lars"):
        optim.build_optimizer(optim_config(name="sgd"), **kw)
    with pytest.raises(ValueError, match=r"config\.optim\.base_lr must be positive, got -1"):
        optim.build_optimizer(optim_config(base_lr=-1.0), **kw)
    with pytest.raises(ValueError, match=r"config\.optim\.weight_decay"):
        optim.build_optimizer(optim_config(weight_decay=-0.1), **kw)
    with pytest.raises(ValueError, match=r"config\.optim\.decay_exclude"):
        optim.build_optimizer(optim_config(decay_exclude="bias"), **kw)
    with pytest.raises(ValueError, match="LAMB supports only"):
        optim.LAMB(decay_convention="decoupled")
    with pytest.raises(ValueError, match=r"config\.optim\.decay_convention"):
        optim.build_optimizer(optim_config(name="lars", decay_convention="decoupled"), **kw)


# === tf.distribute ===

_MIRRORED_SCRIPT = textwrap.dedent(
    """
    import numpy as np, tensorflow as tf, keras
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tf_mocov3.training import distribute
    from tf_mocov3.training import optim
    from tf_mocov3.training import schedules

    def make_opts():
        lr = lambda: schedules.WarmupCosine(0.1, 2, 10)
        return [optim.AdamW(learning_rate=lr(), weight_decay=0.3),
                optim.LAMB(learning_rate=lr(), weight_decay=0.01),
                optim.LARS(learning_rate=lr(), weight_decay=0.01)]

    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(3, 4)).astype(np.float32)
    b0 = rng.normal(size=(4,)).astype(np.float32)
    # per-replica gradient halves; Keras sums them across replicas
    g = [[rng.normal(size=s).astype(np.float32) for s in ((2, 3, 4), (2, 4))] for _ in range(3)]

    strategy = distribute.mirrored_strategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        mvars = [[keras.Variable(w0), keras.Variable(b0)] for _ in range(3)]
        mopts = make_opts()
        for o, vs in zip(mopts, mvars):
            o.build(vs)

    @tf.function
    def dstep(gw, gb):
        def fn():
            ctx = tf.distribute.get_replica_context()
            i = ctx.replica_id_in_sync_group
            grads = [tf.gather(gw, i), tf.gather(gb, i)]
            for o, vs in zip(mopts, mvars):
                o.apply(grads, vs)
        strategy.run(fn)

    svars = [[keras.Variable(w0), keras.Variable(b0)] for _ in range(3)]
    sopts = make_opts()
    for gw, gb in g:
        dstep(tf.constant(gw), tf.constant(gb))
        for o, vs in zip(sopts, svars):
            o.apply([tf.constant(gw.sum(0)), tf.constant(gb.sum(0))], vs)
    for mv, sv in zip(mvars, svars):
        for a, b in zip(mv, sv):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)
    print("MIRRORED_OK")
    """
)


def test_optimizers_under_mirrored_strategy_equal_single_device():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-c", _MIRRORED_SCRIPT], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )
    assert "MIRRORED_OK" in proc.stdout, proc.stderr[-3000:]
