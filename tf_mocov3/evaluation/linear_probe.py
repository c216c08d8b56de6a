r"""Linear probe of a frozen pre-trained backbone (the official main_lincls.py protocol), with an lr sweep.

  python -m tf_mocov3.linear_probe --config=configs/linear_imagenet.py --pretrained=/tmp/mocov3_vit_base \
      --workdir=/tmp/linear_vit_base

The protocol, as the official code has it for ViTs: the backbone is frozen and runs in inference mode; a plain
linear layer on its [CLS] feature (no BatchNorm before it), initialised N(0, 0.01) with a zero bias; SGD with
momentum 0.9 and no weight decay (PyTorch's update: v = 0.9 v + g; w -= lr v), lr = base_lr * batch / 256 with a
cosine decay applied per EPOCH (constant within an epoch: lr_e = lr * 0.5 * (1 + cos(pi * e / epochs))), no
warmup; train images RandomResizedCrop(S) + horizontal flip, eval images resized to S*256/224 and centre-cropped.

The lr sweep: `config.base_lrs` gives several learning rates; one head per lr is trained side by side on the same
batches (one Dense of width num_classes * n_lrs, every head with the same N(0, 0.01) initial weights, each column
group updated with its own lr; the heads share nothing else, so each equals the head trained alone). The lr is
chosen on a held-out part of the TRAINING split (`config.holdout_examples`, or `config.holdout_fraction` of it),
never on the evaluation split; the report gives the evaluation top-1 of the chosen head and a table of all heads.

`config.model.bn_before_head=True` puts a BatchNorm without affine parameters (eps 1e-6, PyTorch momentum 0.1) on
the features before the heads, as MAE's linear probe does (the moco-v3 maintainers suggest it: it makes the probe
far less sensitive to the lr); it is shared by the heads of a sweep (it has no trainable parameters), uses batch
statistics in training and its moving statistics in evaluation, and is saved with the heads. Off (the default),
the probe is the official plain linear layer, unchanged.

`config.cache_features=True` embeds every image once (eval preprocessing, no augmentation) and trains the heads
on those features: a fast probe for small data sets (not the official protocol, which augments every epoch).

Running the same command again resumes from WORKDIR/checkpoints (the heads and their optimizer, saved every epoch).
"""

import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

from tf_mocov3 import config_lib
from tf_mocov3.data import order
from tf_mocov3.data import pipelines
from tf_mocov3.data import sources as data
from tf_mocov3.evaluation import features as features_lib
from tf_mocov3.training import callbacks as callbacks_lib
from tf_mocov3.training import distribute
from tf_mocov3.training import trainer as trainer_lib
from tf_mocov3.weights import pretrained

CONFIG_FILE = "linear_config.json"
REPORT_NAME = "linear_probe"
INIT_STD = 0.01
# Keys that must not change when a probe resumes in the same workdir.
_RESUME_KEYS = ("pretrained", "seed", "batch_size", "epochs", "base_lrs", "holdout_examples", "holdout_fraction", "train_examples",
                "cache_features", "dataset.name", "dataset.train_split", "image_size")


class ProbeError(ValueError):
    """A probe that cannot run (bad data set, pretrained path, config); one sentence naming the fix."""


# === Schedule and optimizer ===


def lr_values(base_lrs, batch_size):
    """The absolute initial learning rates: base_lr * batch_size / 256 (main_lincls.py's init_lr)."""
    return [float(lr) * batch_size / 256.0 for lr in base_lrs]


class EpochCosine(keras.optimizers.schedules.LearningRateSchedule):
    """The factor 0.5 * (1 + cos(pi * epoch / epochs)), epoch = step // steps_per_epoch (constant in an epoch).

    Multiplied by each head's initial lr it is main_lincls.py's adjust_learning_rate.
    """

    def __init__(self, steps_per_epoch, epochs):
        self.steps_per_epoch = int(steps_per_epoch)
        self.epochs = int(epochs)

    def __call__(self, step):
        epoch = tf.math.floordiv(tf.cast(step, tf.int64), self.steps_per_epoch)
        epoch = tf.cast(epoch, tf.float32)
        return 0.5 * (1.0 + tf.cos(math.pi * epoch / float(self.epochs)))

    def get_config(self):
        return {"steps_per_epoch": self.steps_per_epoch, "epochs": self.epochs}


class SweepSGD(keras.optimizers.Optimizer):
    """PyTorch's SGD with momentum (v = m v + g; w -= lr v), the lr given per column group of the heads.

    `learning_rate` is the schedule factor; column j of a kernel (and entry j of a bias) is updated with
    factor * column_lrs[j]. Keras' own SGD keeps lr inside the velocity (v = m v - lr g), which differs from
    PyTorch whenever the lr changes (every epoch here).
    """

    def __init__(self, learning_rate, column_lrs, momentum=0.9, name="sweep_sgd", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.column_lrs = [float(v) for v in column_lrs]
        self.momentum = float(momentum)
        self._column_lrs = tf.constant(self.column_lrs, tf.float32)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = [self.add_variable_from_reference(v, "momentum") for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        lr = tf.cast(learning_rate, variable.dtype) * tf.cast(self._column_lrs, variable.dtype)
        velocity = self.momentums[self._get_variable_index(variable)]
        self.assign(velocity, velocity * self.momentum + gradient)
        self.assign_sub(variable, lr * velocity)

    def get_config(self):
        config = super().get_config()
        config.update({"column_lrs": self.column_lrs, "momentum": self.momentum})
        return config


# === Model ===


class TiledNormal(keras.initializers.Initializer):
    """N(0, std) for one [D, C] head, tiled n times along the columns: every head of a sweep starts equal."""

    def __init__(self, num_heads, stddev=INIT_STD, seed=0):
        self.num_heads = int(num_heads)
        self.stddev = float(stddev)
        self.seed = int(seed)

    def __call__(self, shape, dtype=None):
        rows, cols = shape
        one = keras.random.normal((rows, cols // self.num_heads), stddev=self.stddev, seed=self.seed,
                                  dtype=dtype or "float32")
        return keras.ops.tile(one, (1, self.num_heads))

    def get_config(self):
        return {"num_heads": self.num_heads, "stddev": self.stddev, "seed": self.seed}


class LinearProbe(keras.Model):
    """n linear heads (one Dense of width n * num_classes) on a frozen backbone's [CLS] feature.

    With `backbone=None` the inputs are the features themselves (cached-feature probes).
    """

    def __init__(self, feature_dim, num_classes, num_heads, *, backbone=None, seed=0, bn_before_head=False,
                 **kwargs):
        super().__init__(**kwargs)
        self.feature_dim = int(feature_dim)
        self.num_classes = int(num_classes)
        self.num_heads = int(num_heads)
        self.backbone = backbone
        if backbone is not None:
            backbone.trainable = False
        self.classifier = keras.layers.Dense(
            self.num_classes * self.num_heads, kernel_initializer=TiledNormal(self.num_heads, INIT_STD, seed),
            bias_initializer="zeros", name="classifier")
        self.classifier.build((None, self.feature_dim))
        self.head_norm = None
        if bn_before_head:  # MAE: BatchNorm1d(D, affine=False, eps=1e-6)
            self.head_norm = keras.layers.BatchNormalization(center=False, scale=False, epsilon=1e-6, momentum=0.9,
                                                             dtype="float32", name="head_norm")
            self.head_norm.build((None, self.feature_dim))
        self.loss_tracker = keras.metrics.Mean(name="loss")

    def checkpoint_part(self):
        """What the checkpoints hold: the classifier (the official probe) or, with bn_before_head, a module with the
        classifier and the BatchNorm's moving statistics."""
        if self.head_norm is None:
            return self.classifier
        part = tf.Module()
        part.classifier, part.head_norm = self.classifier, self.head_norm
        return part

    @property
    def metrics(self):
        return [self.loss_tracker]

    def features(self, inputs):
        if self.backbone is None:
            return tf.cast(inputs, tf.float32)
        return tf.stop_gradient(tf.cast(self.backbone(inputs, training=False), tf.float32))

    def head_logits(self, features, training=False):
        """[B, D] features -> [B, n, C] logits of the n heads (after the BatchNorm when bn_before_head)."""
        if self.head_norm is not None:
            features = self.head_norm(features, training=training)
        logits = self.classifier(features)
        return tf.reshape(logits, [-1, self.num_heads, self.num_classes])

    def call(self, inputs, training=False):
        return self.head_logits(self.features(inputs), training=training)

    def train_step(self, batch):
        inputs, labels = batch
        features = self.features(inputs)
        labels = tf.cast(labels, tf.int32)
        # Under a strategy each replica holds its rows of the global batch and Keras sums the replicas' gradients:
        # every replica divides its summed loss by the GLOBAL row count (also right for a last, uneven batch).
        ctx = tf.distribute.get_replica_context()
        rows = tf.cast(tf.shape(labels)[0], tf.float32)
        global_rows = ctx.all_reduce(tf.distribute.ReduceOp.SUM, rows) if ctx.num_replicas_in_sync > 1 else rows
        with tf.GradientTape() as tape:
            logits = self.head_logits(features, training=True)
            tiled = tf.tile(labels[:, None], [1, self.num_heads])
            per_head = tf.reduce_sum(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tiled, logits=logits), axis=0) / global_rows
            # The sum's gradient w.r.t. head i is that of head i's own loss: the heads stay independent.
            total = tf.reduce_sum(per_head)
        variables = self.classifier.trainable_variables
        grads = tape.gradient(total, variables)
        factor = tf.identity(self.optimizer.learning_rate)  # the factor this step uses
        self.optimizer.apply_gradients(zip(grads, variables))
        if ctx.num_replicas_in_sync > 1:
            per_head = ctx.all_reduce(tf.distribute.ReduceOp.SUM, per_head)  # the global batch's mean loss
        loss = tf.reduce_mean(per_head)
        self.loss_tracker.update_state(loss)  # the running mean the step log and the epoch's mean are read from
        # "loss": this step's loss, the mean over the heads; "lr": the lr of the first head.
        return {"loss": loss, "lr": factor * self.optimizer.column_lrs[0]}


def build_probe(feature_dim, num_classes, init_lrs, *, steps_per_epoch, epochs, momentum=0.9, backbone=None,
                seed=0, jit_compile=False, bn_before_head=False):
    """A compiled LinearProbe with one head per lr in `init_lrs` (absolute, already scaled by batch/256)."""
    probe = LinearProbe(feature_dim, num_classes, len(init_lrs), backbone=backbone, seed=seed,
                        bn_before_head=bn_before_head, name="linear_probe")
    column_lrs = np.repeat(np.asarray(init_lrs, np.float32), num_classes)
    optimizer = SweepSGD(EpochCosine(steps_per_epoch, epochs), column_lrs, momentum=momentum)
    probe.compile(optimizer=optimizer, jit_compile=jit_compile)
    optimizer.build(probe.classifier.trainable_variables)
    return probe


def heads_top1(probe, features, labels, batch_size=4096):
    """Top-1 (%) of every head on features [N, D] (numpy), labels [N] -> list of n floats."""
    correct = np.zeros(probe.num_heads, np.int64)
    for start in range(0, len(features), batch_size):
        logits = probe.head_logits(tf.constant(features[start:start + batch_size], tf.float32)).numpy()
        correct += (logits.argmax(-1) == labels[start:start + batch_size, None]).sum(0)
    return list(100.0 * correct / max(len(features), 1))


# === Training the heads ===


class _HoldoutCurves(keras.callbacks.Callback):
    """After every epoch: the epoch's mean training loss and the holdout top-1 of every head (logged, and kept for
    the report's curves). Under k steps per host call "after the epoch" is the end of the call that completes it
    (trainer.crossed): the record's step is that call's last step, up to k - 1 steps into the next epoch, whose
    steps ran at the next epoch's lr (the schedule is per step on the device) and count in `train_loss_epoch`."""

    def __init__(self, features, labels, steps_per_epoch, writer, print_fn, lrs):
        super().__init__()
        self.features, self.labels = features, labels
        self.steps_per_epoch = steps_per_epoch
        self.writer, self.print_fn, self.lrs = writer, print_fn, lrs
        self.curves = {}

    def on_train_begin(self, logs=None):
        self._loss = callbacks_lib.LossSince(self.model.loss_tracker)
        self._previous = int(self.model.optimizer.iterations.numpy())

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        reached = trainer_lib.crossed(self._previous, step, self.steps_per_epoch)
        self._previous = step
        if not reached:
            return
        record = {"step": step, "epoch": step // self.steps_per_epoch, "train_loss_epoch": self._loss.take()}
        self.curves.setdefault("train loss (epoch mean)", []).append((step, record["train_loss_epoch"]))
        top1 = heads_top1(self.model, self.features, self.labels) if len(self.labels) else []
        for lr, acc in zip(self.lrs, top1):
            self.curves.setdefault(f"holdout top-1, lr {lr:g}", []).append((step, acc))
            record[f"holdout_top1/lr_{lr:g}"] = acc
        self.writer.write(record)
        if self.print_fn and top1:
            self.print_fn(f"epoch {record['epoch']}: holdout top-1 "
                          + ", ".join(f"{acc:.2f} (lr {lr:g})" for lr, acc in zip(self.lrs, top1)))


def fit_heads(probe, dataset, *, trainer, start_step, steps_per_epoch, holdout, init_lrs):
    """Trains `probe` from `start_step` to trainer.total_steps on `dataset` with the shared trainer (checkpoints
    every epoch when trainer.restore was called); returns {curve name: [(step, value)]}."""
    curves = _HoldoutCurves(holdout[0], holdout[1], steps_per_epoch, trainer.metrics,
                            trainer.say if trainer.workdir else None, init_lrs)
    if trainer.total_steps > start_step:
        trainer.fit(probe, dataset, start_step=start_step, callbacks=[curves], diverged_hint="lower config.base_lrs")
    return curves.curves


def sweep_table(init_lrs, base_lrs, holdout_top1, test_top1):
    """Rows (base_lr, lr, holdout_top1, test_top1) and the index of the head chosen on the holdout."""
    rows = []
    for i, (base, lr) in enumerate(zip(base_lrs, init_lrs)):
        rows.append({"base_lr": float(base), "lr": float(lr),
                     "holdout_top1": float(holdout_top1[i]) if holdout_top1 is not None else None,
                     "test_top1": float(test_top1[i])})
    chosen = int(np.argmax(holdout_top1)) if holdout_top1 is not None else 0  # first max: the smaller lr on ties
    rows[chosen]["chosen"] = True
    return rows, chosen


def probe_on_features(train, holdout, test, num_classes, *, base_lrs, batch_size, epochs, seed=0, momentum=0.9,
                      print_fn=None):
    """A cached-feature probe without a workdir (the demo report): ((f, y) train, holdout, test) numpy pairs.

    Returns {"table": rows, "chosen": index, "top1": test top-1 of the chosen head, "lr": its lr, "curves": ...}.
    """
    init_lrs = lr_values(base_lrs, batch_size)
    spe = math.ceil(len(train[1]) / batch_size)
    probe = build_probe(train[0].shape[1], num_classes, init_lrs, steps_per_epoch=spe, epochs=epochs,
                        momentum=momentum, seed=seed)
    ds = pipelines.cached_feature_dataset(train[0], train[1], batch_size=batch_size, seed=seed, end_epoch=epochs)
    # No progress lines: the caller (the demo report) prints one line per probe.
    trainer = trainer_lib.Trainer(None, total_steps=spe * epochs, global_batch=batch_size, print_fn=lambda _: None)
    curves = fit_heads(probe, ds, trainer=trainer, start_step=0, steps_per_epoch=spe, holdout=holdout,
                       init_lrs=init_lrs)
    hold = heads_top1(probe, *holdout) if len(holdout[1]) else None
    rows, chosen = sweep_table(init_lrs, base_lrs, hold, heads_top1(probe, *test))
    return {"table": rows, "chosen": chosen, "top1": rows[chosen]["test_top1"], "lr": init_lrs[chosen],
            "curves": curves}


# === The command ===


def load_pretrained_backbone(path, config):
    """The frozen backbone at the probe's image size; checks the expected arch / pre-training size first."""
    resolved = pretrained.resolve(path)  # raises: missing path, workdir with no checkpoint
    run = resolved.config
    arch = config.model.arch or None
    if config.model.pretrain_image_size and int(run.dataset.image_size) != int(config.model.pretrain_image_size):
        raise ProbeError(f"Pretrained path {path} was pre-trained at image size {run.dataset.image_size}, not the "
                         f"expected {config.model.pretrain_image_size}; pass weights pre-trained at that size or "
                         f"set --config.model.pretrain_image_size=0.")
    image_size = int(config.dataset.image_size or run.dataset.image_size)
    backbone = pretrained.load_backbone(path, image_size=image_size, arch=arch)
    return backbone, image_size, run


def _check_bn_resume(workdir, config):
    """Refuses to resume a probe of the other bn_before_head mode (a record without the key: off)."""
    saved = config_lib.read_json(os.path.join(workdir, CONFIG_FILE))
    if saved is None:
        return
    was = bool((saved.get("model") or {}).get("bn_before_head", False))
    now = bool(config.model.get("bn_before_head", False))
    if was != now:
        raise ProbeError(f"--workdir={workdir} holds a probe with model.bn_before_head={was}, not {now}; resume with "
                         f"--config.model.bn_before_head={was} or choose a new --workdir.")


def step_intervals(config, steps_per_call):
    """-> ({"log_every_steps"} the probe uses, the line that says what changed or None): trainer.round_intervals
    on the probe's key (its epoch is not rounded: _HoldoutCurves)."""
    return trainer_lib.round_intervals(steps_per_call, log_every_steps=config.log_every_steps)


def run_probe(config, pretrained_path, workdir, *, strategy=None, tpu="", print_fn=None):
    """Runs (or resumes) the linear probe; returns the final metrics dict (also written to metrics.json).

    `strategy` (default: the one config.strategy names): the backbone, the heads and their optimizer live on its
    replicas; each global batch (and each feature-extraction batch) is split over them.
    """
    strategy = strategy or trainer_lib.strategy_for(config, tpu)
    config_lib.validate(config, kind="probe", workdir=workdir, num_replicas=strategy.num_replicas_in_sync)
    train_source = data.open_labelled(config.dataset, config.dataset.train_split)
    test_source = data.open_labelled(config.dataset, config.dataset.eval_split)
    for source in (train_source, test_source):  # array_record on a TPU pod slice: refused before any model is built
        try:
            data.check_source_for(source, strategy)
        except ValueError as err:
            raise ProbeError(str(err)) from err
    with strategy.scope():
        backbone, image_size, run = load_pretrained_backbone(pretrained_path, config)
    record = config_lib.as_record(config)
    record.update(pretrained=config_lib.absolute_path(pretrained_path), image_size=image_size)

    num_classes = train_source.num_classes
    # seed + 1: the subset is independent of the holdout's permutation (seed).
    pool = order.subset_indices(train_source.num_examples, seed=config.seed + 1,
                                max_examples=config.get("train_examples", 0))
    train_pos, hold_pos = order.holdout_split(len(pool), holdout_examples=config.holdout_examples,
                                              holdout_fraction=config.holdout_fraction, seed=config.seed)
    train_idx, hold_idx = pool[train_pos], pool[hold_pos]
    test_idx = order.subset_indices(test_source.num_examples, seed=config.seed + 1,
                                    max_examples=config.get("eval_examples", 0))
    init_lrs = lr_values(config.base_lrs, config.batch_size)
    batch = config.batch_size
    spe = math.ceil(len(train_idx) / batch)
    total_steps = spe * config.epochs
    eval_batch = config.eval_batch_size
    steps_per_call = trainer_lib.resolve_steps_per_execution(config, strategy)
    # The epoch's end (holdout top-1, checkpoint) acts at the end of the call that completes the epoch.
    intervals, intervals_line = step_intervals(config, steps_per_call)
    trainer = trainer_lib.Trainer(workdir, strategy=strategy, total_steps=total_steps, global_batch=batch,
                                  log_every_steps=intervals["log_every_steps"], checkpoint_every_steps=spe,
                                  keep_checkpoints=config.keep_checkpoints, config_file=CONFIG_FILE, kind="probe",
                                  steps_per_execution=steps_per_call, print_fn=print_fn)
    trainer.check_resume(record, _RESUME_KEYS, error_cls=ProbeError, key_prefix="")
    _check_bn_resume(workdir, config)
    record.update(intervals)  # linear_config.json records what the run used
    trainer.write_config(record)
    say = trainer.say
    if intervals_line:
        say(intervals_line)
    say(f"Linear probe of {run.model.arch} ({pretrained_path}) at {image_size}px on {config.dataset.name}: "
        f"{len(train_idx)} train / {len(hold_idx)} holdout (from '{config.dataset.train_split}') / "
        f"{len(test_idx)} test ('{config.dataset.eval_split}'); {len(init_lrs)} head(s), "
        f"lr {', '.join(f'{lr:g}' for lr in init_lrs)}; {config.epochs} epochs of {spe} steps.")

    cached = bool(config.cache_features)
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        probe = build_probe(backbone.output.shape[-1], num_classes, init_lrs, steps_per_epoch=spe,
                            epochs=config.epochs, momentum=config.momentum, seed=config.seed,
                            backbone=None if cached else backbone,
                            # "auto" is off here (the heads are tiny); "true" is refused on mirrored replicas
                            jit_compile=(str(config.jit_compile).lower() == "true"
                                         and trainer_lib.resolve_jit_compile(config, strategy)),
                            bn_before_head=bool(config.model.get("bn_before_head", False)))
    start_step = trainer.restore(probe, checkpoint_model=probe.checkpoint_part())

    t0 = time.perf_counter()
    forward = features_lib.make_forward(backbone, image_size, strategy=strategy)

    def split_features(source, indices, what):
        return features_lib.features_of_source(backbone, source, image_size=image_size, batch_size=eval_batch,
                                               indices=indices, title=f"embedding {what}", print_fn=say,
                                               forward=forward)

    if cached:
        all_f, all_y = split_features(train_source, pool, "train images")
        holdout = (all_f[hold_pos], all_y[hold_pos])
        dataset = pipelines.cached_feature_dataset(all_f[train_pos], all_y[train_pos], batch_size=batch,
                                                   seed=config.seed, start_step=start_step, end_epoch=config.epochs)
        say(f"Cached {len(all_y)} train features in {time.perf_counter() - t0:.0f}s.")
    else:
        holdout = split_features(train_source, hold_idx, "holdout images")
        # Each host augments only its replicas' rows of each global batch (the last one of an epoch may be short).
        dataset = distribute.pipeline_datasets(strategy, lambda ctx: pipelines.labelled_train_dataset(
            train_source, indices=train_idx, global_batch=batch, seed=config.seed, image_size=image_size,
            crop_scale=(config.dataset.crop_min, 1.0), start_step=start_step, keep_partial_batch=True,
            end_epoch=config.epochs, input_context=ctx,
            shuffle_buffer=int(config.dataset.get("shuffle_buffer", pipelines.DEFAULT_SHUFFLE_BUFFER)),
            cycle_length=int(config.dataset.get("cycle_length", pipelines.DEFAULT_CYCLE_LENGTH))),
            replica_rows=batch // strategy.num_replicas_in_sync)
    curves = fit_heads(probe, dataset, trainer=trainer, start_step=start_step, steps_per_epoch=spe,
                       holdout=holdout, init_lrs=init_lrs)

    test = split_features(test_source, test_idx, "test images")
    hold_top1 = heads_top1(probe, *holdout) if len(hold_idx) else None
    rows, chosen = sweep_table(init_lrs, config.base_lrs, hold_top1, heads_top1(probe, *test))
    metrics = {"linear_probe_top1": rows[chosen]["test_top1"], "linear_probe_lr": init_lrs[chosen],
               "linear_probe_base_lr": float(config.base_lrs[chosen]),
               "linear_probe_holdout_top1": rows[chosen]["holdout_top1"], "linear_probe_table": rows,
               "linear_probe_pretrained": config_lib.absolute_path(pretrained_path),
               "linear_probe_epochs": int(config.epochs), "linear_probe_step": int(probe.optimizer.iterations.numpy())}
    trainer.report(name=REPORT_NAME, metrics=metrics, curves=curves, table=rows)
    say(f"Test top-1 {metrics['linear_probe_top1']:.2f}% (lr {metrics['linear_probe_lr']:g}, chosen on the "
        f"holdout); {time.perf_counter() - t0:.0f}s. Report: {os.path.join(workdir, 'metrics.json')}.")
    return metrics

