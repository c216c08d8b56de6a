"""Learning-rate schedules: per step (warmup + half-cosine, the official code) and per epoch (DeiT).

Both follow the official MoCo v3 code (main_moco.py), which evaluates its
schedules at a *fractional* epoch ``epoch + i / iters_per_epoch`` before every
step ``i``. Written per optimizer step ``t`` (0-based), with
``warmup_steps = warmup_epochs * steps_per_epoch`` and
``total_steps = epochs * steps_per_epoch``, the same formulas read:

    lr_t = peak * t / warmup_steps                                   (t < warmup_steps)
    lr_t = peak * 0.5 * (1 + cos(pi * (t - warmup_steps) / (total_steps - warmup_steps)))
    m_t  = 1 - (1 - m0) * (1 + cos(pi * t / total_steps)) / 2    (the momentum encoder's: models/moco.py)

with ``peak = base_lr * global_batch / 256`` (see `lr_for_batch`).

`EpochWarmupCosine` is DeiT's schedule beside it (timm's CosineLRScheduler stepped once per epoch, constant
within an epoch; its docstring has the formula), and `EpochCosine` the linear probe's (main_lincls.py: a cosine
per epoch, no warmup).

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
    schedule of the 'decoupled' convention (see `tf_mocov3.training.optim`).

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


@keras.saving.register_keras_serializable(package="tf_mocov3")
class EpochWarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """DeiT's learning rate: timm's CosineLRScheduler (t_in_epochs, one cycle), stepped after each epoch.

    timm's value at epoch index t (warmup_prefix False, so the cosine counts from epoch 0, not from the end of
    the warmup):

        f(t) = warmup_lr_init + t * (peak - warmup_lr_init) / warmup_epochs               (t < warmup_epochs)
        f(t) = min_lr + 0.5 * (peak - min_lr) * (1 + cos(pi * t / epochs))                (t < epochs)
        f(t) = min_lr                                                                      (after)

    DeiT's main.py builds the scheduler (which sets f(0)), trains epoch 0, then calls `lr_scheduler.step(epoch)`
    AFTER each epoch, so epoch e >= 1 trains at f(e - 1): lr during epoch e = f(max(e - 1, 0)), constant within
    the epoch (e = step // steps_per_epoch). `lag=0` gives f(e) instead (timm's own train.py steps with epoch + 1).

    Args:
        peak_lr: the scaled lr (DeiT: 5e-4 * batch / 512).
        warmup_epochs, epochs: DeiT's --warmup-epochs (5) and --epochs.
        steps_per_epoch: optimizer steps per epoch.
        warmup_lr_init: DeiT --warmup-lr (1e-6).
        min_lr: DeiT --min-lr (1e-5).
        lag: 1 = DeiT's step-after-epoch (default), 0 = none.
    """

    def __init__(self, peak_lr, warmup_epochs, epochs, steps_per_epoch, warmup_lr_init=1e-6, min_lr=1e-5, lag=1,
                 name="epoch_warmup_cosine"):
        if peak_lr < 0 or warmup_epochs < 0 or epochs <= 0 or steps_per_epoch <= 0:
            raise ValueError(f"EpochWarmupCosine needs peak_lr >= 0, warmup_epochs >= 0, epochs > 0 and "
                             f"steps_per_epoch > 0, got {peak_lr}, {warmup_epochs}, {epochs}, {steps_per_epoch}.")
        self.peak_lr = float(peak_lr)
        self.warmup_epochs = float(warmup_epochs)
        self.epochs = float(epochs)
        self.steps_per_epoch = int(steps_per_epoch)
        self.warmup_lr_init = float(warmup_lr_init)
        self.min_lr = float(min_lr)
        self.lag = int(lag)
        self.name = name

    def value_at_epoch(self, t):
        """timm's f(t) (module docstring) of a float32 epoch index t."""
        t = ops.cast(t, "float32")
        step = (self.peak_lr - self.warmup_lr_init) / max(self.warmup_epochs, 1.0)
        warm = self.warmup_lr_init + t * step
        cos = self.min_lr + 0.5 * (self.peak_lr - self.min_lr) * (1.0 + ops.cos(math.pi * t / self.epochs))
        cos = ops.where(t < self.epochs, cos, self.min_lr)
        return ops.where(t < self.warmup_epochs, warm, cos)

    def __call__(self, step):
        epoch = ops.floor_divide(ops.cast(step, "int64"), self.steps_per_epoch)
        return self.value_at_epoch(ops.maximum(epoch - self.lag, 0))

    def get_config(self):
        return {"peak_lr": self.peak_lr, "warmup_epochs": self.warmup_epochs, "epochs": self.epochs,
                "steps_per_epoch": self.steps_per_epoch, "warmup_lr_init": self.warmup_lr_init,
                "min_lr": self.min_lr, "lag": self.lag, "name": self.name}


@keras.saving.register_keras_serializable(package="tf_mocov3")
class EpochCosine(keras.optimizers.schedules.LearningRateSchedule):
    """The linear probe's lr factor 0.5 * (1 + cos(pi * epoch / epochs)), epoch = step // steps_per_epoch (constant
    in an epoch, no warmup). Multiplied by each head's initial lr (optim.SweepSGD) it is the official
    main_lincls.py's adjust_learning_rate."""

    def __init__(self, steps_per_epoch, epochs):
        self.steps_per_epoch = int(steps_per_epoch)
        self.epochs = int(epochs)

    def __call__(self, step):
        epoch = ops.cast(ops.floor_divide(ops.cast(step, "int64"), self.steps_per_epoch), "float32")
        return 0.5 * (1.0 + ops.cos(math.pi * epoch / float(self.epochs)))

    def get_config(self):
        return {"steps_per_epoch": self.steps_per_epoch, "epochs": self.epochs}


# === Momentum encoder ===
