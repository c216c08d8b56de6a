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

Both probes are tasks of the one run loop (training/loop.py) over what `HeadsTask` holds (the heads, their
optim.SweepSGD with schedules.EpochCosine, the per-epoch holdout curves, the sweep's table): `ProbeTask` is the
command's (`run_probe`: the data set, the backbone, augmented images or cached features, a workdir),
`FeatureProbeTask` the demo's (`probe_on_features`: numpy features in memory, no workdir).
"""

import math
import os
import time

import keras
import ml_collections
import numpy as np
import tensorflow as tf

from tf_mocov3 import config_lib
from tf_mocov3.data import order
from tf_mocov3.data import pipelines
from tf_mocov3.data import sources as data
from tf_mocov3.evaluation import features as features_lib
from tf_mocov3.training import callbacks as callbacks_lib
from tf_mocov3.training import distribute
from tf_mocov3.training import loop
from tf_mocov3.training import optim
from tf_mocov3.training import schedules
from tf_mocov3.training import trainer as trainer_lib
from tf_mocov3.weights import pretrained

CONFIG_FILE = "linear_config.json"
REPORT_NAME = "linear_probe"
INIT_STD = 0.01
# Keys that must not change when a probe resumes in the same workdir.
_RESUME_KEYS = ("pretrained", "seed", "batch_size", "epochs", "base_lrs", "holdout_examples", "holdout_fraction",
                "train_examples", "cache_features", "dataset.name", "dataset.train_split", "image_size")


class ProbeError(ValueError):
    """A probe that cannot run (bad data set, pretrained path, config); one sentence naming the fix."""


# === Schedule and optimizer (schedules.EpochCosine, optim.SweepSGD) ===


def lr_values(base_lrs, batch_size):
    """The absolute initial learning rates: base_lr * batch_size / 256 (main_lincls.py's init_lr)."""
    return [schedules.lr_for_batch(lr, batch_size) for lr in base_lrs]


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
        # Records the augmented input dropped since fit began (its batches' third element); not checkpointed.
        self.skipped_tracker = keras.metrics.Sum(name="skipped_records")

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
        return [self.loss_tracker, self.skipped_tracker]

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
        inputs, labels, *skipped = batch  # skipped: augmented images (labelled_train_dataset(count_skipped=True))
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
        logs = {"loss": loss, "lr": factor * self.optimizer.column_lrs[0]}
        if skipped:
            logs["skipped_records"] = callbacks_lib.add_skipped_records(self.skipped_tracker, skipped[0])
        return logs


def make_heads_optimizer(num_classes, init_lrs, *, steps_per_epoch, epochs, momentum=0.9):
    """optim.SweepSGD over the heads' columns (head i's columns at init_lrs[i]) with the per-epoch cosine."""
    column_lrs = np.repeat(np.asarray(init_lrs, np.float32), num_classes)
    return optim.SweepSGD(schedules.EpochCosine(steps_per_epoch, epochs), column_lrs, momentum=momentum)


def build_probe(feature_dim, num_classes, init_lrs, *, steps_per_epoch, epochs, momentum=0.9, backbone=None,
                seed=0, jit_compile=False, bn_before_head=False):
    """A compiled LinearProbe with one head per lr in `init_lrs` (absolute, already scaled by batch/256), as a
    probe task builds it (outside the run loop: tests)."""
    probe = LinearProbe(feature_dim, num_classes, len(init_lrs), backbone=backbone, seed=seed,
                        bn_before_head=bn_before_head, name="linear_probe")
    optimizer = make_heads_optimizer(num_classes, init_lrs, steps_per_epoch=steps_per_epoch, epochs=epochs,
                                     momentum=momentum)
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
    was = bool(config_lib.complete(saved, "probe").model.bn_before_head)  # a record from before the key: off
    now = bool(config.model.bn_before_head)
    if was != now:
        raise ProbeError(f"--workdir={workdir} holds a probe with model.bn_before_head={was}, not {now}; resume with "
                         f"--config.model.bn_before_head={was} or choose a new --workdir.")


def intervals_of(config):
    """The probe's step interval that is rounded to the steps per host call (its epoch is not: _HoldoutCurves)."""
    return {"log_every_steps": config.log_every_steps}


def step_intervals(config, steps_per_call):
    """-> ({"log_every_steps"} the probe uses, the line that says what changed or None): trainer.round_intervals
    on intervals_of(config), as loop.run does it."""
    return trainer_lib.round_intervals(steps_per_call, **intervals_of(config))


class HeadsTask(loop.Task):
    """What both probes share as a loop.Task: the heads (LinearProbe) and their SweepSGD, the per-epoch holdout
    curves, the sweep's table. A subclass sets, in `setup` at the latest: seed, feature_dim, num_classes, init_lrs,
    base_lrs, steps_per_epoch, epochs, bn_before_head, backbone (None: the inputs are features), total_steps,
    global_batch, checkpoint_every_steps (one epoch); and, by the end of `restored`, holdout (features, labels) and
    train_data (the training batches from the restored step)."""

    kind = "probe"
    config_kind = "probe"
    config_file = CONFIG_FILE
    diverged_hint = "lower config.base_lrs"

    def __init__(self, config):
        super().__init__(config)
        self.backbone = None
        self.curves = None
        self.holdout = self.train_data = None

    def precision(self):
        return None  # probe_config has no mixed_precision: Keras' dtype policy is left as it is

    def jit_compile(self, strategy):
        return False

    def make_model(self):
        return LinearProbe(self.feature_dim, self.num_classes, len(self.init_lrs), backbone=self.backbone,
                           seed=self.seed, bn_before_head=self.bn_before_head, name="linear_probe")

    def make_optimizer(self):
        return make_heads_optimizer(self.num_classes, self.init_lrs, steps_per_epoch=self.steps_per_epoch,
                                    epochs=self.epochs, momentum=self.config.momentum)

    def checkpoint_part(self, model, trainer):
        return model.checkpoint_part()

    def dataset(self, start_step):
        return self.train_data

    def callbacks(self, model, trainer):
        self.curves = _HoldoutCurves(self.holdout[0], self.holdout[1], self.steps_per_epoch, trainer.metrics,
                                     trainer.say if trainer.workdir else None, self.init_lrs)
        return [self.curves]

    def sweep(self, model, test):
        """(rows, chosen) of sweep_table: every head's holdout and `test` top-1, the head chosen on the holdout."""
        hold = heads_top1(model, *self.holdout) if len(self.holdout[1]) else None
        return sweep_table(self.init_lrs, self.base_lrs, hold, heads_top1(model, *test))


class FeatureProbeTask(HeadsTask):
    """The demo's probe: heads trained in memory (no workdir) on features given as numpy arrays; the config is the
    few keys the run loop reads (its seed None: the global random state is left alone, the heads' initializer has
    its own seed)."""

    config_kind = None

    def __init__(self, train, holdout, test, num_classes, *, base_lrs, batch_size, epochs, seed, momentum,
                 steps_per_execution):
        super().__init__(ml_collections.ConfigDict(dict(
            seed=None, momentum=momentum, steps_per_execution=steps_per_execution, keep_checkpoints=0,
            log_every_steps=50)))
        self.seed = seed
        self.train, self.holdout, self.test = train, holdout, test
        self.feature_dim, self.num_classes, self.bn_before_head = train[0].shape[1], num_classes, False
        self.base_lrs, self.init_lrs = base_lrs, lr_values(base_lrs, batch_size)
        self.steps_per_epoch, self.epochs = math.ceil(len(train[1]) / batch_size), epochs
        self.total_steps, self.global_batch = self.steps_per_epoch * epochs, batch_size
        self.checkpoint_every_steps = self.steps_per_epoch  # no workdir: nothing is saved

    def setup(self, strategy, workdir):
        self.train_data = pipelines.cached_feature_dataset(self.train[0], self.train[1],
                                                           batch_size=self.global_batch, seed=self.seed,
                                                           end_epoch=self.epochs)

    def step_intervals(self):
        return {"log_every_steps": self.config.log_every_steps}

    def report(self, model, trainer, start_step, history):
        rows, chosen = self.sweep(model, self.test)
        return {"table": rows, "chosen": chosen, "top1": rows[chosen]["test_top1"], "lr": self.init_lrs[chosen],
                "curves": self.curves.curves if self.curves else {}, "model": model}


def probe_on_features(train, holdout, test, num_classes, *, base_lrs, batch_size, epochs, seed=0, momentum=0.9,
                      steps_per_execution=1):
    """A cached-feature probe without a workdir (the demo report): ((f, y) train, holdout, test) numpy pairs, on
    the current (default) strategy; loop.run of a FeatureProbeTask, printing nothing (the demo prints one line per
    probe).

    Returns {"table": rows, "chosen": index, "top1": test top-1 of the chosen head, "lr": its lr, "curves": ...,
    "model": the trained LinearProbe}.
    """
    task = FeatureProbeTask(train, holdout, test, num_classes, base_lrs=base_lrs, batch_size=batch_size,
                            epochs=epochs, seed=seed, momentum=momentum, steps_per_execution=steps_per_execution)
    return loop.run(task, None, strategy=tf.distribute.get_strategy(), print_fn=lambda _: None)


class ProbeTask(HeadsTask):
    """The linear probe command as a loop.Task: the frozen pre-trained backbone, the training split (augmented every
    epoch, or embedded once: config.cache_features), a holdout of it to choose the lr, the evaluation split."""

    resume_keys = _RESUME_KEYS
    resume_error = ProbeError
    resume_key_prefix = ""

    def __init__(self, config, pretrained_path):
        super().__init__(config)
        self.pretrained_path = pretrained_path
        self.seed = config.seed

    def setup(self, strategy, workdir):
        config = self.config
        self.train_source = data.open_labelled(config.dataset, config.dataset.train_split)
        self.test_source = data.open_labelled(config.dataset, config.dataset.eval_split)
        self.check_sources(strategy, self.train_source, self.test_source)
        with strategy.scope():
            backbone, self.image_size, self.run_config = load_pretrained_backbone(self.pretrained_path, config)
        self.record = config_lib.as_record(config)
        self.record.update(pretrained=config_lib.absolute_path(self.pretrained_path), image_size=self.image_size)
        self.feature_dim, self.num_classes = backbone.output.shape[-1], self.train_source.num_classes
        self.cached = bool(config.cache_features)
        self.full_backbone = backbone
        self.backbone = None if self.cached else backbone
        self.bn_before_head = bool(config.model.bn_before_head)
        # seed + 1: the subset is independent of the holdout's permutation (seed).
        self.pool = order.subset_indices(self.train_source.num_examples, seed=config.seed + 1,
                                         max_examples=config.train_examples)
        self.train_pos, self.hold_pos = order.holdout_split(
            len(self.pool), holdout_examples=config.holdout_examples, holdout_fraction=config.holdout_fraction,
            seed=config.seed)
        self.train_idx, self.hold_idx = self.pool[self.train_pos], self.pool[self.hold_pos]
        self.test_idx = order.subset_indices(self.test_source.num_examples, seed=config.seed + 1,
                                             max_examples=config.eval_examples)
        self.base_lrs, self.init_lrs = config.base_lrs, lr_values(config.base_lrs, config.batch_size)
        self.steps_per_epoch, self.epochs = math.ceil(len(self.train_idx) / config.batch_size), config.epochs
        self.total_steps, self.global_batch = self.steps_per_epoch * config.epochs, config.batch_size
        # Checkpoints every epoch; the epoch's end (holdout top-1, checkpoint) acts at the end of the call that
        # completes the epoch.
        self.checkpoint_every_steps = self.steps_per_epoch

    def step_intervals(self):
        return intervals_of(self.config)

    def use_intervals(self, intervals):
        self.record.update(intervals)  # linear_config.json records what the run used

    def check_resume(self, workdir):
        _check_bn_resume(workdir, self.config)

    def announce(self, trainer):
        config = self.config
        trainer.say(
            f"Linear probe of {self.run_config.model.arch} ({self.pretrained_path}) at {self.image_size}px on "
            f"{config.dataset.name}: {len(self.train_idx)} train / {len(self.hold_idx)} holdout (from "
            f"'{config.dataset.train_split}') / {len(self.test_idx)} test ('{config.dataset.eval_split}'); "
            f"{len(self.init_lrs)} head(s), lr {', '.join(f'{lr:g}' for lr in self.init_lrs)}; {config.epochs} "
            f"epochs of {self.steps_per_epoch} steps.")

    def jit_compile(self, strategy):
        # "auto" is off here (the heads are tiny); "true" is refused on mirrored replicas
        return str(self.config.jit_compile).lower() == "true" and trainer_lib.resolve_jit_compile(self.config,
                                                                                                   strategy)

    def embed(self, source, indices, what, say):
        return features_lib.features_of_source(self.full_backbone, source, image_size=self.image_size,
                                               batch_size=self.config.eval_batch_size, indices=indices,
                                               title=f"embedding {what}", print_fn=say, forward=self.forward)

    def restored(self, model, trainer, start_step):
        """Embeds the holdout (and, cached, the training images) and makes the training batches from start_step."""
        config, say, batch = self.config, trainer.say, self.global_batch
        self.t0 = time.perf_counter()
        self.forward = features_lib.make_forward(self.full_backbone, self.image_size, strategy=self.strategy)
        if self.cached:
            all_f, all_y = self.embed(self.train_source, self.pool, "train images", say)
            self.holdout = (all_f[self.hold_pos], all_y[self.hold_pos])
            self.train_data = pipelines.cached_feature_dataset(
                all_f[self.train_pos], all_y[self.train_pos], batch_size=batch, seed=config.seed,
                start_step=start_step, end_epoch=config.epochs)
            say(f"Cached {len(all_y)} train features in {time.perf_counter() - self.t0:.0f}s.")
        else:
            self.holdout = self.embed(self.train_source, self.hold_idx, "holdout images", say)
            # Each host augments only its replicas' rows of each global batch (the last one of an epoch may be
            # short).
            self.train_data = distribute.pipeline_datasets(self.strategy, lambda ctx: pipelines.labelled_train_dataset(
                self.train_source, indices=self.train_idx, global_batch=batch, seed=config.seed,
                image_size=self.image_size, crop_scale=(config.dataset.crop_min, 1.0), start_step=start_step,
                keep_partial_batch=True, end_epoch=config.epochs, input_context=ctx,
                shuffle_buffer=int(config.dataset.shuffle_buffer), cycle_length=int(config.dataset.cycle_length),
                count_skipped=True),
                replica_rows=batch // self.strategy.num_replicas_in_sync)

    def report(self, model, trainer, start_step, history):
        config, say = self.config, trainer.say
        test = self.embed(self.test_source, self.test_idx, "test images", say)
        rows, chosen = self.sweep(model, test)
        metrics = {"linear_probe_top1": rows[chosen]["test_top1"], "linear_probe_lr": self.init_lrs[chosen],
                   "linear_probe_base_lr": float(config.base_lrs[chosen]),
                   "linear_probe_holdout_top1": rows[chosen]["holdout_top1"], "linear_probe_table": rows,
                   "linear_probe_pretrained": config_lib.absolute_path(self.pretrained_path),
                   "linear_probe_epochs": int(config.epochs),
                   "linear_probe_step": int(model.optimizer.iterations.numpy())}
        trainer.report(name=REPORT_NAME, metrics=metrics, curves=self.curves.curves if self.curves else {},
                       table=rows)
        say(f"Test top-1 {metrics['linear_probe_top1']:.2f}% (lr {metrics['linear_probe_lr']:g}, chosen on the "
            f"holdout); {time.perf_counter() - self.t0:.0f}s. Report: "
            f"{os.path.join(self.workdir, 'metrics.json')}.")
        return metrics


def run_probe(config, pretrained_path, workdir, *, strategy=None, tpu="", print_fn=None):
    """Runs (or resumes) the linear probe (loop.run of a ProbeTask); returns the final metrics dict (also written
    to metrics.json).

    `strategy` (default: the one config.strategy names): the backbone, the heads and their optimizer live on its
    replicas; each global batch (and each feature-extraction batch) is split over them.
    """
    return loop.run(ProbeTask(config, pretrained_path), workdir, strategy=strategy, tpu=tpu, print_fn=print_fn)
