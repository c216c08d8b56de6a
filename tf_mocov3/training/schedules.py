"""Per-step schedules: learning rate (warmup + half-cosine) and encoder momentum.

Both follow the official MoCo v3 code (main_moco.py), which evaluates its
schedules at a *fractional* epoch ``epoch + i / iters_per_epoch`` before every
step ``i``. Written per optimizer step ``t`` (0-based), with
``warmup_steps = warmup_epochs * steps_per_epoch`` and
``total_steps = epochs * steps_per_epoch``, the same formulas read:

    lr_t = peak * t / warmup_steps                                   (t < warmup_steps)
    lr_t = peak * 0.5 * (1 + cos(pi * (t - warmup_steps) / (total_steps - warmup_steps)))
    m_t  = 1 - (1 - m0) * (1 + cos(pi * t / total_steps)) / 2

with ``peak = base_lr * global_batch / 256`` (see `lr_for_batch`).

Everything here is written with `keras.ops`, so it runs on a tensor step inside
a `tf.function`, under XLA (`jit_compile=True`) and under `tf.distribute`.
"""

import math

import keras
from keras import ops


def lr_for_batch(base_lr, global_batch):
    """The linear scaling rule of the paper: ``base_lr * global_batch / 256``.

    Args:
        base_lr: Learning rate quoted for a batch of 256 (e.g. 1.5e-4 for ViT).
        global_batch: The batch size summed over all replicas and workers.

    Returns:
        The absolute (peak) learning rate, a Python float.
    """
    return float(base_lr) * float(global_batch) / 256.0


# === Learning rate ===


@keras.saving.register_keras_serializable(package="tf_mocov3")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to ``peak_lr``, then a half-cosine down to 0.

    Equal to the official ``adjust_learning_rate(optimizer, epoch, args)`` of
    main_moco.py at ``epoch = step / steps_per_epoch`` (with
    ``warmup_steps = warmup_epochs * steps_per_epoch``). Steps at or past
    ``total_steps`` get 0. If ``warmup_steps >= total_steps`` (a short smoke
    run with the full recipe's warmup) the whole run is the linear ramp, as it
    would be in the official code.

    The schedule is also used, scaled by the weight decay, as the decay
    schedule of the 'decoupled' convention (see `tf_mocov3.optim`).

    Args:
        peak_lr: Value reached at the end of the warmup (>= 0).
        warmup_steps: Number of linear-warmup steps (>= 0, may be fractional).
        total_steps: Length of the whole schedule in steps (> 0).
        name: Optional name.
    """

    def __init__(self, peak_lr, warmup_steps, total_steps, name="warmup_cosine"):
        if peak_lr < 0:
            raise ValueError(f"WarmupCosine: peak_lr must be >= 0, got {peak_lr}.")
        if warmup_steps < 0:
            raise ValueError(
                f"WarmupCosine: warmup_steps must be >= 0, got {warmup_steps}."
            )
        if total_steps <= 0:
            raise ValueError(
                f"WarmupCosine: total_steps must be > 0, got {total_steps}."
            )
        self.peak_lr = float(peak_lr)
        self.warmup_steps = float(warmup_steps)
        self.total_steps = float(total_steps)
        self.name = name

    def __call__(self, step):
        step = ops.cast(step, "float32")
        peak = ops.cast(self.peak_lr, "float32")
        warmup = self.warmup_steps
        # Python-side guards against division by zero; no tensor branching.
        warm_lr = peak * step / max(warmup, 1.0)
        cos_span = max(self.total_steps - warmup, 1.0)
        progress = ops.clip((step - warmup) / cos_span, 0.0, 1.0)
        # 0.5 * (1 + cos(pi * p)) written as cos(pi * p / 2)^2: same value,
        # but no float32 cancellation near the end of the schedule.
        cos_lr = peak * ops.square(ops.cos(0.5 * math.pi * progress))
        return ops.where(step < warmup, warm_lr, cos_lr)

    def get_config(self):
        return {
            "peak_lr": self.peak_lr,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "name": self.name,
        }


# === Momentum encoder ===


def momentum_schedule(step, base_momentum, total_steps, cosine=True):
    """Momentum of the key encoder at step ``step`` (a Python number or tensor).

    ``m_t = 1 - (1 - m0) * (1 + cos(pi * t / T)) / 2`` when ``cosine``: ``m0`` at
    ``t = 0``, ``(1 + m0) / 2`` at ``t = T / 2`` and 1 at ``t = T`` (held at 1
    afterwards). Without ``cosine`` the momentum is the constant ``m0``.

    Args:
        step: Current optimizer step (0-based), int or float, tensor or Python.
        base_momentum: ``m0``, e.g. 0.99 for the ViT recipes.
        total_steps: ``T``, the total number of training steps (> 0).
        cosine: Whether to apply the cosine increase to 1.

    Returns:
        A float32 scalar tensor.
    """
    if total_steps <= 0:
        raise ValueError(
            f"momentum_schedule: total_steps must be > 0, got {total_steps}."
        )
    m0 = ops.cast(base_momentum, "float32")
    if not cosine:
        return ops.convert_to_tensor(m0, dtype="float32")
    progress = ops.clip(ops.cast(step, "float32") / float(total_steps), 0.0, 1.0)
    # (1 + cos(pi * p)) / 2 == cos(pi * p / 2)^2, the latter exact near p = 1.
    return 1.0 - (1.0 - m0) * ops.square(ops.cos(0.5 * math.pi * progress))
