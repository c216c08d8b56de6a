"""Optimizers of MoCo v3: AdamW (ViT), LAMB (paper's comparison), LARS (ResNet-50); and the linear probe's SweepSGD.

The three MoCo v3 optimizers subclass `keras.optimizers.Optimizer` and apply their weight decay
themselves, inside `update_step`; Keras' built-in decay (`weight_decay` on the
base class, applied as ``w -= lr * wd * w`` before every step) is switched off
so decay is never applied twice. Which variables are decayed is decided once,
when the optimizer is built, by a predicate per variable (stored as a Python
flag), never by string matching inside the step.

Weight decay conventions (``decay_convention``)
-----------------------------------------------
The paper (appendix A) points out that frameworks disagree on what "weight
decay" means:

* ``'lr_scaled'`` (PyTorch, JAX, the paper, the official code):
  ``w <- w - lr_t * wd * w``. The paper's ``wd = 0.1`` is this one: the per-step
  shrink follows the learning-rate schedule.
* ``'decoupled'`` (TF Addons' ``DecoupledWeightDecayExtension``):
  ``w <- w - wd_t * w``, where the user supplies ``wd_t`` (a float or a
  `LearningRateSchedule`) already scaled.

To convert a TF-style decay to the paper's, and back: ``wd_tf_t = lr_t *
wd_paper``. With the recipe's warmup-cosine lr this is
``weight_decay=WarmupCosine(peak_lr * wd_paper, warmup_steps, total_steps)``,
and that is what `build_optimizer` builds for ``'decoupled'``, so the default
configs train identically under both conventions (a test checks this step for
step). A constant TF-style ``wd_tf`` corresponds to no fixed paper value; it
equals ``lr_t * wd_paper`` only for a constant lr, where ``wd_paper = wd_tf / lr``.

Both conventions use the gradient computed at the old weights, and decay and
Adam step do not interact, so their order within a step does not matter.
"""

import keras
from keras import ops

from tf_mocov3 import config_lib
from tf_mocov3.training import schedules as schedules_lib

_Schedule = keras.optimizers.schedules.LearningRateSchedule

# The names are defined with the config checks (config_lib), in one place.
DECAY_CONVENTIONS = config_lib.DECAY_CONVENTIONS
DECAY_EXCLUDE_MODES = config_lib.DECAY_EXCLUDE_MODES
OPTIMIZERS = config_lib.OPTIMIZERS


# === Weight-decay exclusions ===


def decay_exclusions(mode):
    """Constructor kwargs for `config.optim.decay_exclude`.

    Args:
        mode: ``'none'`` decays every trainable variable (the official code);
            ``'bias_norm_cls'`` skips variables of rank <= 1 (biases, LayerNorm
            and BatchNorm gamma/beta) and any variable whose path contains
            ``cls_token`` or ``pos_embed`` (timm's ``no_weight_decay()``: the
            [CLS] token and a trainable position table; in pre-training the
            table is a constant, not a variable).

    Returns:
        A dict with ``exclude_from_weight_decay`` (list of substrings) and
        ``exclude_low_rank_from_weight_decay`` (bool), to pass to `AdamW`/`LAMB`.
    """
    if mode == "none":
        return {
            "exclude_from_weight_decay": [],
            "exclude_low_rank_from_weight_decay": False,
        }
    if mode == "bias_norm_cls":
        return {
            "exclude_from_weight_decay": ["cls_token", "pos_embed"],
            "exclude_low_rank_from_weight_decay": True,
        }
    raise ValueError(
        f"config.optim.decay_exclude must be one of {DECAY_EXCLUDE_MODES}, "
        f"got {mode!r}."
    )


def _variable_text(variable):
    """The strings an exclusion substring is matched against."""
    texts = [str(getattr(variable, "name", ""))]
    path = getattr(variable, "path", None)
    if path:
        texts.append(str(path))
    return texts


def _is_excluded(variable, substrings, low_rank):
    if low_rank and len(variable.shape) <= 1:
        return True
    texts = _variable_text(variable)
    return any(s in t for s in substrings for t in texts)


def _norm(x):
    return ops.sqrt(ops.sum(ops.square(x)))


def _trust_ratio(numerator_norm, denominator_norm):
    """``numerator / denominator``, or 1 where either norm is 0 (no NaN/inf)."""
    ok = ops.logical_and(numerator_norm > 0, denominator_norm > 0)
    safe_den = ops.where(denominator_norm > 0, denominator_norm, 1.0)
    return ops.where(ok, numerator_norm / safe_den, 1.0)


# === Base with our own weight decay ===


class _DecayingOptimizer(keras.optimizers.Optimizer):
    """Shared plumbing: own weight decay, build-time exclusion flags, config."""

    def __init__(
        self,
        learning_rate,
        weight_decay,
        decay_convention,
        exclude_from_weight_decay,
        exclude_low_rank_from_weight_decay,
        name,
        **kwargs,
    ):
        # Keras' own decay stays off: weight_decay=None on the base class.
        super().__init__(learning_rate=learning_rate, weight_decay=None, name=name, **kwargs)
        if decay_convention not in DECAY_CONVENTIONS:
            raise ValueError(
                f"decay_convention must be one of {DECAY_CONVENTIONS}, "
                f"got {decay_convention!r}."
            )
        if isinstance(weight_decay, _Schedule):
            if decay_convention != "decoupled":
                raise ValueError(
                    "A weight-decay schedule is only meaningful with "
                    "decay_convention='decoupled' (with 'lr_scaled' the decay "
                    "already follows the learning-rate schedule); pass a float."
                )
        else:
            weight_decay = float(weight_decay or 0.0)
            if weight_decay < 0:
                raise ValueError(f"weight_decay must be >= 0, got {weight_decay}.")
        self.decay_convention = decay_convention
        # The base class reads `self.weight_decay` in `_apply_weight_decay`;
        # we keep the user's value here and disable that method below.
        self.weight_decay = weight_decay
        self._decay_substrings = list(exclude_from_weight_decay or [])
        self.exclude_low_rank_from_weight_decay = bool(
            exclude_low_rank_from_weight_decay
        )
        self._decay_flags = []

    def _apply_weight_decay(self, variables):
        """Disabled: decay is applied inside `update_step` (never twice)."""
        return

    def _decays(self, variable):
        """Build-time predicate: should this variable be decayed?"""
        if _is_excluded(
            variable, self._decay_substrings, self.exclude_low_rank_from_weight_decay
        ):
            return False
        # Also honour Keras' `optimizer.exclude_from_weight_decay(...)` method.
        return self._use_weight_decay(variable)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._decay_flags = [self._decays(v) for v in var_list]

    def _flag(self, flags, variable):
        return flags[self._get_variable_index(variable)]

    def _weight_decay_value(self, dtype):
        """The per-step decay coefficient: wd (lr_scaled) or wd_t (decoupled)."""
        if isinstance(self.weight_decay, _Schedule):
            return ops.cast(self.weight_decay(self._iterations), dtype)
        return ops.cast(self.weight_decay, dtype)

    def get_config(self):
        config = super().get_config()
        if isinstance(self.weight_decay, _Schedule):
            weight_decay = keras.optimizers.schedules.serialize(self.weight_decay)
        else:
            weight_decay = self.weight_decay
        config.update(
            {
                "weight_decay": weight_decay,
                "decay_convention": self.decay_convention,
                "exclude_from_weight_decay": list(self._decay_substrings),
                "exclude_low_rank_from_weight_decay": (
                    self.exclude_low_rank_from_weight_decay
                ),
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        if isinstance(config.get("weight_decay"), dict):
            config["weight_decay"] = keras.saving.deserialize_keras_object(
                config["weight_decay"], custom_objects=custom_objects
            )
        return super().from_config(config, custom_objects=custom_objects)


# === AdamW ===


@keras.saving.register_keras_serializable(package="tf_mocov3")
class AdamW(_DecayingOptimizer):
    """AdamW that matches `torch.optim.AdamW` step for step.

    Per variable at step ``t`` (1-based), with gradient ``g`` at the old ``w``:

        w <- w - lr_t * wd * w            ('lr_scaled')   or   w <- w - wd_t * w  ('decoupled')
        m <- b1 * m + (1 - b1) * g ;  v <- b2 * v + (1 - b2) * g^2
        w <- w - (lr_t / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

    The epsilon sits where PyTorch puts it (added to the bias-corrected
    ``sqrt(v_hat)``), unlike Keras' Adam which adds it to the uncorrected
    ``sqrt(v)``; the default is PyTorch's 1e-8 (Keras: 1e-7).

    Args:
        learning_rate: Float or `LearningRateSchedule` (e.g. `WarmupCosine`).
        weight_decay: ``wd`` (float) for 'lr_scaled'; ``wd_t`` (float or
            `LearningRateSchedule`) for 'decoupled'.
        beta_1, beta_2, epsilon: Adam constants.
        decay_convention: 'lr_scaled' or 'decoupled' (module docstring).
        exclude_from_weight_decay: Substrings; a variable whose path or name
            contains one is not decayed.
        exclude_low_rank_from_weight_decay: Do not decay variables of rank <= 1.
        name: Optimizer name.
        **kwargs: Base optimizer arguments (clipnorm, global_clipnorm, ...).
    """

    def __init__(
        self,
        learning_rate=1e-3,
        weight_decay=0.0,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        decay_convention="lr_scaled",
        exclude_from_weight_decay=None,
        exclude_low_rank_from_weight_decay=False,
        name="adamw",
        **kwargs,
    ):
        super().__init__(
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            decay_convention=decay_convention,
            exclude_from_weight_decay=exclude_from_weight_decay,
            exclude_low_rank_from_weight_decay=exclude_low_rank_from_weight_decay,
            name=name,
            **kwargs,
        )
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._momentums, self._velocities = self.add_optimizer_variables(
            var_list, ["momentum", "velocity"]
        )

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        step = ops.cast(self.iterations + 1, dtype)
        b1 = ops.cast(self.beta_1, dtype)
        b2 = ops.cast(self.beta_2, dtype)
        index = self._get_variable_index(variable)
        m = self._momentums[index]
        v = self._velocities[index]

        if self._decay_flags[index]:
            wd = self._weight_decay_value(dtype)
            shrink = lr * wd if self.decay_convention == "lr_scaled" else wd
            self.assign_sub(variable, shrink * variable)

        self.assign_add(m, (gradient - m) * (1.0 - b1))
        self.assign_add(v, (ops.square(gradient) - v) * (1.0 - b2))
        step_size = lr / (1.0 - ops.power(b1, step))
        denom = ops.sqrt(v) / ops.sqrt(1.0 - ops.power(b2, step)) + self.epsilon
        self.assign_sub(variable, step_size * m / denom)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon}
        )
        return config


# === LAMB ===


@keras.saving.register_keras_serializable(package="tf_mocov3")
class LAMB(_DecayingOptimizer):
    """LAMB of You et al. (2019), as in TF Addons: weight decay INSIDE the ratio.

    Per variable at step ``t`` (1-based):

        m <- b1 * m + (1 - b1) * g ;  v <- b2 * v + (1 - b2) * g^2
        r  = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)  +  wd * w
        ratio = ||w|| / ||r||      (1 where either norm is 0)
        w <- w - lr_t * ratio * r

    Variables excluded from decay drop the ``wd * w`` term; variables excluded
    from layer adaptation use ratio 1.

    Keras 3's `keras.optimizers.Lamb` is a different optimizer: it applies
    the base-class weight decay ``w -= lr * wd * w`` as a separate step,
    outside the trust ratio, so the decay is not normalised by ``||r||``.

    Only the 'lr_scaled' convention exists for LAMB (the decay is part of the
    update that the trust ratio normalises and ``lr_t`` then scales).

    Args:
        learning_rate: Float or `LearningRateSchedule`.
        weight_decay: ``wd`` (float), e.g. the paper's 1e-3 for LAMB.
        beta_1, beta_2, epsilon: Adam constants (TF Addons' default eps 1e-6).
        decay_convention: Must be 'lr_scaled'.
        exclude_from_weight_decay: Substrings of variables not decayed.
        exclude_low_rank_from_weight_decay: Do not decay rank <= 1 variables.
        exclude_from_layer_adaptation: Substrings of variables whose trust
            ratio is 1; None means the same list as `exclude_from_weight_decay`
            (as in TF Addons).
        exclude_low_rank_from_layer_adaptation: Ratio 1 for rank <= 1
            variables; None means the same as the decay flag.
        name: Optimizer name.
        **kwargs: Base optimizer arguments.
    """

    def __init__(
        self,
        learning_rate=1e-3,
        weight_decay=0.0,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-6,
        decay_convention="lr_scaled",
        exclude_from_weight_decay=None,
        exclude_low_rank_from_weight_decay=False,
        exclude_from_layer_adaptation=None,
        exclude_low_rank_from_layer_adaptation=None,
        name="lamb",
        **kwargs,
    ):
        if decay_convention == "decoupled":
            raise ValueError(
                "LAMB supports only decay_convention='lr_scaled', because its "
                "weight decay sits inside the trust ratio that lr_t then "
                "scales, so a pre-scaled 'decoupled' wd_t has no meaning; use "
                "decay_convention='lr_scaled' (or AdamW for decoupled decay)."
            )
        if isinstance(weight_decay, _Schedule):
            raise ValueError("LAMB: weight_decay must be a float, not a schedule.")
        super().__init__(
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            decay_convention=decay_convention,
            exclude_from_weight_decay=exclude_from_weight_decay,
            exclude_low_rank_from_weight_decay=exclude_low_rank_from_weight_decay,
            name=name,
            **kwargs,
        )
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)
        if exclude_from_layer_adaptation is None:
            exclude_from_layer_adaptation = list(self._decay_substrings)
        if exclude_low_rank_from_layer_adaptation is None:
            exclude_low_rank_from_layer_adaptation = (
                self.exclude_low_rank_from_weight_decay
            )
        self._adapt_substrings = list(exclude_from_layer_adaptation)
        self.exclude_low_rank_from_layer_adaptation = bool(
            exclude_low_rank_from_layer_adaptation
        )
        self._adapt_flags = []

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._adapt_flags = [
            not _is_excluded(
                v, self._adapt_substrings, self.exclude_low_rank_from_layer_adaptation
            )
            for v in var_list
        ]
        self._momentums, self._velocities = self.add_optimizer_variables(
            var_list, ["momentum", "velocity"]
        )

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        step = ops.cast(self.iterations + 1, dtype)
        b1 = ops.cast(self.beta_1, dtype)
        b2 = ops.cast(self.beta_2, dtype)
        index = self._get_variable_index(variable)
        m = self._momentums[index]
        v = self._velocities[index]

        self.assign_add(m, (gradient - m) * (1.0 - b1))
        self.assign_add(v, (ops.square(gradient) - v) * (1.0 - b2))
        m_hat = m / (1.0 - ops.power(b1, step))
        v_hat = v / (1.0 - ops.power(b2, step))
        update = m_hat / (ops.sqrt(v_hat) + self.epsilon)
        if self._decay_flags[index]:
            update = update + self._weight_decay_value(dtype) * variable
        if self._adapt_flags[index]:
            update = update * _trust_ratio(_norm(variable), _norm(update))
        self.assign_sub(variable, lr * update)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "beta_1": self.beta_1,
                "beta_2": self.beta_2,
                "epsilon": self.epsilon,
                "exclude_from_layer_adaptation": list(self._adapt_substrings),
                "exclude_low_rank_from_layer_adaptation": (
                    self.exclude_low_rank_from_layer_adaptation
                ),
            }
        )
        return config


# === LARS ===


@keras.saving.register_keras_serializable(package="tf_mocov3")
class LARS(keras.optimizers.Optimizer):
    """LARS as in the official moco/optimizer.py (ResNet-50 recipes).

    Variables of rank > 1 (conv / dense kernels):
        d = g + wd * w ;  d <- d * eta * ||w|| / ||d||   (factor 1 where a norm is 0)
    Variables of rank <= 1 (biases, BatchNorm gamma/beta): d = g (no decay, no
    adaptation). Then ``mu <- momentum * mu + d`` and ``w <- w - lr_t * mu``
    (the learning rate is outside the momentum buffer).

    Args:
        learning_rate: Float or `LearningRateSchedule`.
        weight_decay: ``wd`` (float), e.g. 1e-6 for the R50 recipes.
        momentum: Momentum coefficient (0.9).
        trust_coefficient: ``eta`` (0.001).
        name: Optimizer name.
        **kwargs: Base optimizer arguments.
    """

    def __init__(
        self,
        learning_rate=0.1,
        weight_decay=0.0,
        momentum=0.9,
        trust_coefficient=0.001,
        name="lars",
        **kwargs,
    ):
        # Keras' own decay stays off; LARS decays inside `update_step`.
        super().__init__(learning_rate=learning_rate, weight_decay=None, name=name, **kwargs)
        weight_decay = float(weight_decay or 0.0)
        if weight_decay < 0:
            raise ValueError(f"LARS: weight_decay must be >= 0, got {weight_decay}.")
        self.weight_decay = weight_decay
        self.momentum = float(momentum)
        self.trust_coefficient = float(trust_coefficient)
        self._adapt_flags = []

    def _apply_weight_decay(self, variables):
        """Disabled: decay is applied inside `update_step` (never twice)."""
        return

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._adapt_flags = [len(v.shape) > 1 for v in var_list]
        self._mus = self.add_optimizer_variables(var_list, "mu")

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        d = ops.cast(gradient, dtype)
        index = self._get_variable_index(variable)
        mu = self._mus[index]
        if self._adapt_flags[index]:
            d = d + ops.cast(self.weight_decay, dtype) * variable
            w_norm, d_norm = _norm(variable), _norm(d)
            both = ops.logical_and(w_norm > 0, d_norm > 0)
            safe_d_norm = ops.where(d_norm > 0, d_norm, 1.0)
            d = d * ops.where(both, self.trust_coefficient * w_norm / safe_d_norm, 1.0)
        self.assign(mu, ops.cast(self.momentum, dtype) * mu + d)
        self.assign_sub(variable, lr * mu)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "weight_decay": self.weight_decay,
                "momentum": self.momentum,
                "trust_coefficient": self.trust_coefficient,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="tf_mocov3")
class SweepSGD(keras.optimizers.Optimizer):
    """The linear probe's optimizer: PyTorch's SGD with momentum (v = m v + g; w -= lr v), the lr given per column
    group of the probe's heads (training/linear_probe.py: one head per lr of the sweep, side by side).

    `learning_rate` is the schedule factor (schedules.EpochCosine); column j of a kernel (and entry j of a bias) is
    updated with factor * column_lrs[j]. Keras' own SGD keeps lr inside the velocity (v = m v - lr g), which differs
    from PyTorch whenever the lr changes (every epoch here). No weight decay (the official probe has none).
    """

    def __init__(self, learning_rate, column_lrs, momentum=0.9, name="sweep_sgd", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.column_lrs = [float(v) for v in column_lrs]
        self.momentum = float(momentum)
        self._column_lrs = ops.convert_to_tensor(self.column_lrs, "float32")

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = [self.add_variable_from_reference(v, "momentum") for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype) * ops.cast(self._column_lrs, variable.dtype)
        velocity = self.momentums[self._get_variable_index(variable)]
        self.assign(velocity, velocity * self.momentum + gradient)
        self.assign_sub(variable, lr * velocity)

    def get_config(self):
        config = super().get_config()
        config.update({"column_lrs": self.column_lrs, "momentum": self.momentum})
        return config


# === Factory ===


def build_optimizer(optim_config, *, global_batch, steps_per_epoch, total_steps):
    """The recipe's optimizer from `config.optim`, with the warmup-cosine lr.

    Peak lr = ``base_lr * global_batch / 256``; warmup = ``warmup_epochs *
    steps_per_epoch`` steps; cosine to 0 at ``total_steps``. With
    ``decay_convention='decoupled'`` (AdamW only) the decay schedule is
    ``WarmupCosine(peak_lr * weight_decay, ...)`` = ``lr_t * weight_decay``,
    so the default configs train the same under both conventions.

    Args:
        optim_config: `config.optim` (ConfigDict or mapping) with ``name``,
            ``base_lr``, ``weight_decay``, ``warmup_epochs``, ``beta_1``,
            ``beta_2``, ``epsilon``, ``decay_convention``, ``decay_exclude``;
            ``momentum`` and ``trust_coefficient`` for LARS; optionally
            ``schedule`` ("per_step", default, or "per_epoch": DeiT's
            schedule, which also reads ``warmup_lr_init`` and ``min_lr``).
        global_batch: Batch size over all replicas.
        steps_per_epoch: Optimizer steps per epoch.
        total_steps: Total optimizer steps of the run.

    Returns:
        An `AdamW`, `LAMB` or `LARS` instance.
    """
    problems = config_lib.optim_problems(optim_config)
    if problems:
        raise config_lib.ConfigError(" ".join(problems))
    if global_batch <= 0 or steps_per_epoch <= 0 or total_steps <= 0:
        raise ValueError(
            "build_optimizer needs positive global_batch, steps_per_epoch and "
            f"total_steps, got {global_batch}, {steps_per_epoch}, {total_steps}."
        )
    name = str(optim_config["name"]).lower()
    base_lr = float(optim_config["base_lr"])
    weight_decay = float(optim_config["weight_decay"])
    warmup_epochs = float(optim_config["warmup_epochs"])
    convention = str(optim_config["decay_convention"])
    exclusions = decay_exclusions(str(optim_config["decay_exclude"]))

    peak_lr = schedules_lib.lr_for_batch(base_lr, global_batch)
    warmup_steps = warmup_epochs * steps_per_epoch
    # Optional: pre-training's config.optim (config_lib.base_config) has no schedule choice; it is per step.
    if str(optim_config.get("schedule", "per_step")) == "per_epoch":
        # DeiT's: timm's cosine stepped after each epoch, from warmup_lr_init to a floor min_lr (schedules.py).
        def schedule(scale, name):
            return schedules_lib.EpochWarmupCosine(
                peak_lr * scale, warmup_epochs, total_steps / steps_per_epoch, steps_per_epoch,
                warmup_lr_init=float(optim_config["warmup_lr_init"]) * scale,
                min_lr=float(optim_config["min_lr"]) * scale, name=name)
    else:
        def schedule(scale, name):
            return schedules_lib.WarmupCosine(peak_lr * scale, warmup_steps, total_steps, name=name)
    lr = schedule(1.0, "warmup_cosine")
    betas = dict(
        beta_1=float(optim_config["beta_1"]),
        beta_2=float(optim_config["beta_2"]),
        epsilon=float(optim_config["epsilon"]),
    )

    if name == "adamw":
        if convention == "decoupled":
            wd = schedule(weight_decay, "weight_decay")
        else:
            wd = weight_decay
        return AdamW(
            learning_rate=lr,
            weight_decay=wd,
            decay_convention=convention,
            **betas,
            **exclusions,
        )
    if convention == "decoupled":
        raise ValueError(
            f"config.optim.decay_convention='decoupled' is only supported for "
            f"AdamW, not {name!r} (its decay is part of the layer-wise adapted "
            "update); set config.optim.decay_convention='lr_scaled'."
        )
    if name == "lamb":
        return LAMB(learning_rate=lr, weight_decay=weight_decay, **betas, **exclusions)
    # LARS excludes rank <= 1 variables by construction (official rule).
    return LARS(
        learning_rate=lr,
        weight_decay=weight_decay,
        momentum=float(optim_config["momentum"]),
        trust_coefficient=float(optim_config["trust_coefficient"]),
    )


__all__ = [
    "AdamW",
    "LAMB",
    "LARS",
    "SweepSGD",
    "build_optimizer",
    "decay_exclusions",
    "DECAY_CONVENTIONS",
    "DECAY_EXCLUDE_MODES",
    "OPTIMIZERS",
]
