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

`config.cache_features=True` embeds every image once (eval preprocessing, no augmentation) and trains the heads
on those features: a fast probe for small data sets (not the official protocol, which augments every epoch).

Running the same command again resumes from WORKDIR/checkpoints (the heads and their optimizer, saved every epoch).
"""

import json
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

from tf_mocov3.data import augment
from tf_mocov3.training import callbacks as callbacks_lib
from tf_mocov3.training import checkpointing
from tf_mocov3 import config_lib
from tf_mocov3.data import sources as data
from tf_mocov3.weights import pretrained
from tf_mocov3.training import reports

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

    def __init__(self, feature_dim, num_classes, num_heads, *, backbone=None, seed=0, **kwargs):
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
        self.loss_tracker = keras.metrics.Mean(name="loss")

    @property
    def metrics(self):
        return [self.loss_tracker]

    def features(self, inputs):
        if self.backbone is None:
            return tf.cast(inputs, tf.float32)
        return tf.stop_gradient(tf.cast(self.backbone(inputs, training=False), tf.float32))

    def head_logits(self, features):
        """[B, D] features -> [B, n, C] logits of the n heads."""
        logits = self.classifier(features)
        return tf.reshape(logits, [-1, self.num_heads, self.num_classes])

    def call(self, inputs, training=False):
        return self.head_logits(self.features(inputs))

    def train_step(self, batch):
        inputs, labels = batch
        features = self.features(inputs)
        labels = tf.cast(labels, tf.int32)
        with tf.GradientTape() as tape:
            logits = self.head_logits(features)
            tiled = tf.tile(labels[:, None], [1, self.num_heads])
            per_head = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tiled, logits=logits), axis=0)  # [n]
            # The sum's gradient w.r.t. head i is that of head i's own loss: the heads stay independent.
            total = tf.reduce_sum(per_head)
        variables = self.classifier.trainable_variables
        grads = tape.gradient(total, variables)
        factor = tf.identity(self.optimizer.learning_rate)  # the factor this step uses
        self.optimizer.apply_gradients(zip(grads, variables))
        self.loss_tracker.update_state(tf.reduce_mean(per_head))
        # "loss": mean over the heads, averaged since the epoch began; "lr": the lr of the first head.
        return {"loss": self.loss_tracker.result(), "lr": factor * self.optimizer.column_lrs[0]}


def build_probe(feature_dim, num_classes, init_lrs, *, steps_per_epoch, epochs, momentum=0.9, backbone=None,
                seed=0, jit_compile=False):
    """A compiled LinearProbe with one head per lr in `init_lrs` (absolute, already scaled by batch/256)."""
    probe = LinearProbe(feature_dim, num_classes, len(init_lrs), backbone=backbone, seed=seed, name="linear_probe")
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


# === Data ===


def holdout_split(num_examples, *, holdout_examples=0, holdout_fraction=0.0, seed=0):
    """(train indices, holdout indices), both sorted, of the TRAINING split: a seeded random holdout."""
    count = int(holdout_examples) if holdout_examples else int(round(num_examples * float(holdout_fraction)))
    if count < 0 or count >= num_examples:
        raise ProbeError(f"The holdout of {count} examples does not fit the {num_examples} training examples; "
                         f"lower config.holdout_examples / config.holdout_fraction.")
    order = np.random.default_rng(seed).permutation(num_examples)
    return np.sort(order[count:]), np.sort(order[:count])


def _subset(source, indices):
    """(image, label) of `indices` (sorted) of a source, in index order."""
    if source.kind == "stream":
        mask = np.zeros(source.num_examples, bool)
        mask[indices] = True
        mask = tf.constant(mask)
        ds = source.stream().enumerate().filter(lambda i, ex: tf.gather(mask, i))
        return ds.map(lambda i, ex: ex)
    labels = tf.constant(source.labels)
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(indices, tf.int64))
    return ds.map(lambda i: (source.fetch(i), tf.gather(labels, i)), num_parallel_calls=tf.data.AUTOTUNE,
                  deterministic=True)


def eval_images(source, indices, image_size, batch_size):
    """Batches of eval-preprocessed images (resize S*256/224, centre crop S) and labels of `indices`."""
    ds = _subset(source, indices)
    ds = ds.map(lambda img, y: (augment.eval_preprocess(img, image_size), y), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def train_crop(image, seed, image_size, scale=(0.08, 1.0)):
    """RandomResizedCrop(S, scale) + horizontal flip (p=0.5) + normalise, from a stateless seed [2]."""
    image = tf.convert_to_tensor(image)
    image = augment.decode_image(image) if image.dtype == tf.string else augment.to_rgb_uint8(image)
    shape = tf.shape(image)
    window = augment.random_resized_crop_window(tf.random.experimental.stateless_fold_in(seed, 0),
                                                shape[0], shape[1], scale=scale)
    image = augment.crop_and_resize(image, window, image_size)
    flip = tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(seed, 1)) < 0.5
    image = tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)
    image.set_shape([image_size, image_size, 3])
    return augment.normalize(image)


def _epoch_order(indices, seed, epoch):
    """`indices` shuffled by a permutation seeded by (seed, epoch) (a tensor op, usable inside tf.data)."""
    keys = tf.random.stateless_uniform([len(indices)], tf.stack([tf.cast(seed, tf.int64), epoch]))
    return tf.gather(tf.constant(indices, tf.int64), tf.argsort(keys))


def augmented_train_dataset(source, indices, *, image_size, batch_size, seed, start_step, steps_per_epoch,
                            epochs, scale=(0.08, 1.0), shuffle_buffer=10000):
    """Epochs start_step // steps_per_epoch .. epochs-1 of augmented (image, label) batches (last batch partial).

    Epoch e visits `indices` in a permutation seeded by (seed, e); example i of epoch e is augmented with the
    seed [seed, e * 2**32 + i]. Streamed sources are filtered and shuffled with a seeded buffer instead.
    """
    start_epoch = start_step // steps_per_epoch
    labels = None if source.kind == "stream" else tf.constant(source.labels)

    def one_epoch(epoch):
        if source.kind == "stream":
            ds = _subset(source, indices).enumerate().shuffle(shuffle_buffer, seed=seed * 100003 + epoch)
            ds = ds.map(lambda i, ex: (i, ex[0], ex[1]))
        else:
            ds = tf.data.Dataset.from_tensor_slices(_epoch_order(indices, seed, epoch))
            ds = ds.map(lambda i: (i, source.fetch(i), tf.gather(labels, i)), num_parallel_calls=tf.data.AUTOTUNE)

        def crop(i, img, y):
            example_seed = tf.stack([tf.cast(seed, tf.int64), epoch * (2 ** 32) + tf.cast(i, tf.int64)])
            return train_crop(img, example_seed, image_size, scale), y

        ds = ds.map(crop, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.batch(batch_size)

    ds = tf.data.Dataset.range(start_epoch, epochs).flat_map(one_epoch)
    return ds.skip(start_step - start_epoch * steps_per_epoch).prefetch(tf.data.AUTOTUNE)


def cached_train_dataset(features, labels, *, batch_size, seed, start_step, steps_per_epoch, epochs):
    """As augmented_train_dataset, on cached features [N, D]."""
    start_epoch = start_step // steps_per_epoch
    features = tf.constant(features, tf.float32)
    labels = tf.constant(labels, tf.int64)
    positions = np.arange(len(labels))

    def one_epoch(epoch):
        order = _epoch_order(positions, seed, epoch)
        return tf.data.Dataset.from_tensor_slices((tf.gather(features, order), tf.gather(labels, order))).batch(
            batch_size)

    ds = tf.data.Dataset.range(start_epoch, epochs).flat_map(one_epoch)
    return ds.skip(start_step - start_epoch * steps_per_epoch).prefetch(tf.data.AUTOTUNE)


def embed(backbone, batches, *, print_fn=None, what="images", total=None):
    """[CLS] features (numpy float32 [N, D]) and labels of a dataset of (image batch, label batch)."""

    @tf.function
    def forward(images):
        return tf.cast(backbone(images, training=False), tf.float32)

    feats, labels, done, start, last = [], [], 0, time.perf_counter(), time.perf_counter()
    for images, y in batches:
        feats.append(forward(images).numpy())
        labels.append(y.numpy())
        done += len(y)
        if print_fn and time.perf_counter() - last > 30:
            last = time.perf_counter()
            print_fn(f"  embedded {done}{'/' + str(total) if total else ''} {what} "
                     f"({done / (last - start):.0f}/s)")
    dim = backbone.output.shape[-1]
    if not feats:
        return np.zeros((0, dim), np.float32), np.zeros((0,), np.int64)
    return np.concatenate(feats), np.concatenate(labels).astype(np.int64)


# === Training the heads ===


class _HoldoutCurves(keras.callbacks.Callback):
    """After every epoch: holdout top-1 of every head (logged, kept for the report's curves)."""

    def __init__(self, features, labels, steps_per_epoch, writer, print_fn, lrs):
        super().__init__()
        self.features, self.labels = features, labels
        self.steps_per_epoch = steps_per_epoch
        self.writer, self.print_fn, self.lrs = writer, print_fn, lrs
        self.curves = {}

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step % self.steps_per_epoch:
            return
        self.model.loss_tracker.reset_state()
        if not len(self.labels):
            return
        top1 = heads_top1(self.model, self.features, self.labels)
        record = {"step": step, "epoch": step // self.steps_per_epoch}
        for lr, acc in zip(self.lrs, top1):
            self.curves.setdefault(f"holdout top-1, lr {lr:g}", []).append((step, acc))
            record[f"holdout_top1/lr_{lr:g}"] = acc
        if self.writer is not None:
            self.writer.write(record)
        if self.print_fn:
            self.print_fn(f"epoch {record['epoch']}: holdout top-1 "
                          + ", ".join(f"{acc:.2f} (lr {lr:g})" for lr, acc in zip(self.lrs, top1)))


def fit_heads(probe, dataset, *, total_steps, start_step, steps_per_epoch, holdout, init_lrs, workdir=None,
              checkpointer=None, log_every_steps=50, batch_size=1024, print_fn=None):
    """Trains `probe` from `start_step` to `total_steps` on `dataset`; returns {curve name: [(step, value)]}."""
    guard = callbacks_lib.NonFiniteLossGuard()
    writer = None
    cbs = [guard]
    if workdir is not None:
        writer = callbacks_lib.MetricsWriter(workdir, log_every_steps, total_steps, batch_size)
        cbs.append(writer)
    if print_fn is not None:
        cbs.append(callbacks_lib.ProgressLogger(total_steps, batch_size, log_every_steps, print_fn=print_fn))
    curves = _HoldoutCurves(holdout[0], holdout[1], steps_per_epoch, writer, print_fn, init_lrs)
    cbs.append(curves)
    if checkpointer is not None:
        cbs.append(callbacks_lib.CheckpointSaver(checkpointer, steps_per_epoch, guard))
    if total_steps > start_step:
        history = probe.fit(dataset, epochs=1, steps_per_epoch=total_steps - start_step, callbacks=cbs, verbose=0,
                             shuffle=False)
        if guard.bad_step is not None:
            raise ProbeError(f"The probe's loss became NaN or Inf at step {guard.bad_step}; lower config.base_lrs.")
        losses = history.history.get("loss", [])
        if losses:
            curves.curves["train loss (last)"] = [(total_steps, float(losses[-1]))]
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
    ds = cached_train_dataset(train[0], train[1], batch_size=batch_size, seed=seed, start_step=0,
                              steps_per_epoch=spe, epochs=epochs)
    curves = fit_heads(probe, ds, total_steps=spe * epochs, start_step=0, steps_per_epoch=spe, holdout=holdout,
                       init_lrs=init_lrs, batch_size=batch_size, print_fn=None)
    hold = heads_top1(probe, *holdout) if len(holdout[1]) else None
    rows, chosen = sweep_table(init_lrs, base_lrs, hold, heads_top1(probe, *test))
    return {"table": rows, "chosen": chosen, "top1": rows[chosen]["test_top1"], "lr": init_lrs[chosen],
            "curves": curves}


# === The command ===


def _check_config(config):
    problems = []
    if not config.base_lrs or any(float(lr) <= 0 for lr in config.base_lrs):
        problems.append(f"config.base_lrs must be a non-empty list of positive rates, got {config.base_lrs!r}.")
    if config.batch_size <= 0 or config.epochs <= 0:
        problems.append("config.batch_size and config.epochs must be positive.")
    has_holdout = config.holdout_examples > 0 or config.holdout_fraction > 0
    if len(config.base_lrs) > 1 and not has_holdout:
        problems.append("An lr sweep (several config.base_lrs) needs a holdout of the training split to choose "
                        "the lr: set config.holdout_fraction (e.g. 0.1) or config.holdout_examples.")
    if not 0 <= config.holdout_fraction < 1:
        problems.append(f"config.holdout_fraction must be in [0, 1), got {config.holdout_fraction}.")
    if config.dataset.eval_split == config.dataset.train_split:
        problems.append(f"config.dataset.eval_split equals the train split {config.dataset.train_split!r}: the "
                        f"test top-1 must come from another split.")
    if config.dataset.name not in data.SOURCE_NAMES:
        problems.append(f"config.dataset.name={config.dataset.name!r} is unknown; choose one of "
                        f"{', '.join(data.SOURCE_NAMES)}.")
    if problems:
        raise ProbeError(" ".join(problems))


def _limit(num_examples, count, seed):
    """Sorted indices of a seeded subset of `count` examples (0 = all): quick probes and tests."""
    if not count or count >= num_examples:
        return np.arange(num_examples)
    return np.sort(np.random.default_rng(seed + 1).permutation(num_examples)[:int(count)])


def _open_labeled(dataset_config, split):
    try:
        source = data.load_source(dataset_config, split)
    except KeyError as err:
        raise ProbeError(f"Data set {dataset_config.name} ({split}) has no labels ({err}); a linear probe needs a "
                         f"labelled data set.") from err
    if source.num_classes < 2 or (source.kind != "stream" and (source.labels is None or len(source.labels) == 0)):
        raise ProbeError(f"Data set {dataset_config.name} ({split}) has no labels (found {source.num_classes} "
                         f"classes); a linear probe needs a labelled data set, e.g. an image folder with one "
                         f"sub-folder per class.")
    return source


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


def run_probe(config, pretrained_path, workdir, *, print_fn=None):
    """Runs (or resumes) the linear probe; returns the final metrics dict (also written to metrics.json)."""
    say = print_fn or (lambda line: print(line, flush=True))
    _check_config(config)
    train_source = _open_labeled(config.dataset, config.dataset.train_split)
    test_source = _open_labeled(config.dataset, config.dataset.eval_split)
    backbone, image_size, run = load_pretrained_backbone(pretrained_path, config)
    os.makedirs(workdir, exist_ok=True)

    record = json.loads(config.to_json_best_effort())
    record.update(pretrained=os.path.abspath(pretrained_path), image_size=image_size)
    config_lib.check_resume_compatible(workdir, record, _RESUME_KEYS, config_file=CONFIG_FILE, kind="probe",
                                       error_cls=ProbeError, key_prefix="")
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
        json.dump(record, f, indent=2)

    keras.utils.set_random_seed(config.seed)
    num_classes = train_source.num_classes
    pool = _limit(train_source.num_examples, config.get("train_examples", 0), config.seed)
    train_pos, hold_pos = holdout_split(len(pool), holdout_examples=config.holdout_examples,
                                        holdout_fraction=config.holdout_fraction, seed=config.seed)
    train_idx, hold_idx = pool[train_pos], pool[hold_pos]
    test_idx = _limit(test_source.num_examples, config.get("eval_examples", 0), config.seed)
    init_lrs = lr_values(config.base_lrs, config.batch_size)
    batch = config.batch_size
    spe = math.ceil(len(train_idx) / batch)
    total_steps = spe * config.epochs
    eval_batch = config.eval_batch_size
    say(f"Linear probe of {run.model.arch} ({pretrained_path}) at {image_size}px on {config.dataset.name}: "
        f"{len(train_idx)} train / {len(hold_idx)} holdout (from '{config.dataset.train_split}') / "
        f"{len(test_idx)} test ('{config.dataset.eval_split}'); {len(init_lrs)} head(s), "
        f"lr {', '.join(f'{lr:g}' for lr in init_lrs)}; {config.epochs} epochs of {spe} steps.")

    cached = bool(config.cache_features)
    probe = build_probe(backbone.output.shape[-1], num_classes, init_lrs, steps_per_epoch=spe,
                        epochs=config.epochs, momentum=config.momentum, seed=config.seed,
                        backbone=None if cached else backbone,
                        jit_compile=str(config.jit_compile).lower() == "true")
    checkpointer = checkpointing.Checkpointer(workdir, model=probe.classifier, optimizer=probe.optimizer,
                                              keep=config.keep_checkpoints)
    start_step = checkpointer.restore_latest()
    if start_step:
        say(f"Resuming from step {start_step} ({checkpointer.latest_path()}).")

    t0 = time.perf_counter()
    if cached:
        all_f, all_y = embed(backbone, eval_images(train_source, pool, image_size, eval_batch), print_fn=say,
                             what="train images", total=len(pool))
        holdout = (all_f[hold_pos], all_y[hold_pos])
        dataset = cached_train_dataset(all_f[train_pos], all_y[train_pos], batch_size=batch, seed=config.seed,
                                       start_step=start_step, steps_per_epoch=spe, epochs=config.epochs)
        say(f"Cached {len(all_y)} train features in {time.perf_counter() - t0:.0f}s.")
    else:
        holdout = embed(backbone, eval_images(train_source, hold_idx, image_size, eval_batch), print_fn=say,
                        what="holdout images", total=len(hold_idx))
        dataset = augmented_train_dataset(train_source, train_idx, image_size=image_size, batch_size=batch,
                                          seed=config.seed, start_step=start_step, steps_per_epoch=spe,
                                          epochs=config.epochs, scale=(config.dataset.crop_min, 1.0))
    curves = fit_heads(probe, dataset, total_steps=total_steps, start_step=start_step, steps_per_epoch=spe,
                       holdout=holdout, init_lrs=init_lrs, workdir=workdir, checkpointer=checkpointer,
                       log_every_steps=config.log_every_steps, batch_size=batch, print_fn=say)

    test = embed(backbone, eval_images(test_source, test_idx, image_size, eval_batch), print_fn=say,
                 what="test images", total=len(test_idx))
    hold_top1 = heads_top1(probe, *holdout) if len(hold_idx) else None
    rows, chosen = sweep_table(init_lrs, config.base_lrs, hold_top1, heads_top1(probe, *test))
    metrics = {"linear_probe_top1": rows[chosen]["test_top1"], "linear_probe_lr": init_lrs[chosen],
               "linear_probe_base_lr": float(config.base_lrs[chosen]),
               "linear_probe_holdout_top1": rows[chosen]["holdout_top1"], "linear_probe_table": rows,
               "linear_probe_pretrained": os.path.abspath(pretrained_path),
               "linear_probe_epochs": int(config.epochs), "linear_probe_step": int(probe.optimizer.iterations.numpy())}
    summary = reports.write_report(workdir, name=REPORT_NAME, metrics=metrics, curves=curves, table=rows)
    say(summary)
    say(f"Test top-1 {metrics['linear_probe_top1']:.2f}% (lr {metrics['linear_probe_lr']:g}, chosen on the "
        f"holdout); {time.perf_counter() - t0:.0f}s. Report: {os.path.join(workdir, 'metrics.json')}.")
    return metrics


def main(argv):
    import sys  # pylint: disable=import-outside-toplevel
    from absl import app  # pylint: disable=import-outside-toplevel

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    try:
        run_probe(_CONFIG.value, _PRETRAINED.value, _WORKDIR.value)
    except (ValueError, OSError) as err:  # ProbeError, pretrained.py's and data.py's one-sentence errors
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    from absl import app as _app
    from absl import flags as _flags
    from ml_collections import config_flags as _config_flags

    _CONFIG = _config_flags.DEFINE_config_file("config", None, "Config file (configs/linear_*.py).",
                                               lock_config=True)
    _PRETRAINED = _flags.DEFINE_string("pretrained", None, "Pre-training workdir, checkpoint prefix or "
                                       "converted official directory.")
    _WORKDIR = _flags.DEFINE_string("workdir", None, "Directory for the probe's checkpoints and report.")
    _flags.mark_flags_as_required(["config", "pretrained", "workdir"])
    _app.run(main)
