"""Schedules against the official main_moco.py formulas (fractional epochs)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_mocov3.models import moco
from tf_mocov3.training import schedules


def official_lr(epoch, lr, warmup_epochs, epochs):
    """main_moco.adjust_learning_rate, transcribed (epoch may be fractional)."""
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    return lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / (epochs - warmup_epochs)))


def official_momentum(epoch, m0, epochs):
    """main_moco.adjust_moco_momentum, transcribed."""
    return 1.0 - 0.5 * (1.0 + math.cos(math.pi * epoch / epochs)) * (1.0 - m0)


def test_lr_for_batch_linear_scaling():
    assert schedules.lr_for_batch(1.5e-4, 4096) == pytest.approx(2.4e-3)
    assert schedules.lr_for_batch(0.6, 256) == pytest.approx(0.6)


def test_warmup_cosine_matches_official_at_fractional_epochs():
    steps_per_epoch, epochs, warmup_epochs = 7, 30, 4
    peak = schedules.lr_for_batch(1.5e-4, 4096)
    sched = schedules.WarmupCosine(peak, warmup_epochs * steps_per_epoch, epochs * steps_per_epoch)
    steps = [0, 1, 5, 13, 27, 28, 29, 100, 150, 209, 210]
    got = [float(sched(s)) for s in steps]
    want = [official_lr(s / steps_per_epoch, peak, warmup_epochs, epochs) for s in steps]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-12)
    assert got[0] == 0.0
    assert float(sched(28)) == pytest.approx(peak)  # end of warmup = peak
    assert float(sched(210)) == pytest.approx(0.0, abs=1e-12)  # end = 0
    assert float(sched(500)) == pytest.approx(0.0, abs=1e-12)  # held at 0 past the end


def test_warmup_cosine_tensor_step_in_xla_and_serialization():
    sched = schedules.WarmupCosine(2.0, 10, 100)
    fn = tf.function(lambda s: sched(s), jit_compile=True)
    assert float(fn(tf.constant(5, tf.int64))) == pytest.approx(1.0)
    restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(sched))
    assert isinstance(restored, schedules.WarmupCosine)
    assert restored.get_config() == sched.get_config()
    assert float(restored(55)) == pytest.approx(official_lr(55, 2.0, 10, 100), rel=1e-6)


def test_warmup_longer_than_run_is_official_ramp():
    sched = schedules.WarmupCosine(1.0, 400, 10)
    assert float(sched(5)) == pytest.approx(5 / 400)


def test_momentum_schedule_endpoints_and_midpoint():
    m0, total = 0.99, 1000
    assert float(moco.momentum_schedule(0, m0, total)) == pytest.approx(m0, abs=1e-7)
    assert float(moco.momentum_schedule(total, m0, total)) == pytest.approx(1.0, abs=1e-7)
    assert float(moco.momentum_schedule(total // 2, m0, total)) == pytest.approx((1 + m0) / 2, abs=1e-7)
    for t in (1, 123, 777):
        assert float(moco.momentum_schedule(tf.constant(t), m0, total)) == pytest.approx(
            official_momentum(t / 10, m0, total / 10), abs=1e-6
        )
    assert float(moco.momentum_schedule(500, m0, total, cosine=False)) == pytest.approx(m0)
    fn = tf.function(lambda s: moco.momentum_schedule(s, 0.996, 10), jit_compile=True)
    assert float(fn(tf.constant(10, tf.int64))) == pytest.approx(1.0, abs=1e-7)


def deit_lr_of_epoch(e, peak, warmup_epochs, epochs, warmup_lr=1e-6, min_lr=1e-5):
    """DeiT main.py with timm's CosineLRScheduler(t_initial=epochs, lr_min, warmup_lr_init, warmup_t, t_in_epochs):
    the scheduler sets f(0) when built and `lr_scheduler.step(epoch)` runs AFTER epoch `epoch`, so epoch e trains
    at f(max(e - 1, 0))."""
    t = max(e - 1, 0)
    if t < warmup_epochs:
        return warmup_lr + t * (peak - warmup_lr) / warmup_epochs
    if t < epochs:
        return min_lr + 0.5 * (peak - min_lr) * (1 + np.cos(np.pi * t / epochs))
    return min_lr


def test_per_epoch_schedule_is_deits_at_every_epoch_boundary():
    spe, epochs, warmup = 5, 30, 5
    peak = 5e-4 * 1024 / 512  # DeiT: lr * batch / 512
    sched = schedules.EpochWarmupCosine(peak, warmup, epochs, spe)
    for e in range(epochs + 2):
        want = deit_lr_of_epoch(e, peak, warmup, epochs)
        for step in (e * spe, e * spe + spe - 1):  # constant within the epoch
            assert float(sched(step)) == pytest.approx(want, rel=1e-5, abs=1e-12), (e, step)
    assert float(sched(0)) == pytest.approx(1e-6) and float(sched(spe)) == pytest.approx(1e-6)  # DeiT's lag
    assert float(sched(6 * spe)) == pytest.approx(1e-5 + 0.5 * (peak - 1e-5) * (1 + math.cos(math.pi * 5 / 30)))
    fn = tf.function(lambda s: sched(s), jit_compile=True)
    assert float(fn(tf.constant(17, tf.int64))) == pytest.approx(deit_lr_of_epoch(3, peak, warmup, epochs))
    restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(sched))
    assert restored.get_config() == sched.get_config()
