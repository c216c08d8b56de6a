r"""Transfer fine-tuning of a pre-trained MoCo v3 backbone (the paper's DeiT recipe), end to end.

  python -m tf_mocov3.finetune --config=configs/finetune_cifar10.py --pretrained=/tmp/mocov3_vit_base \
      --workdir=/tmp/ft_cifar10 [--config.batch_size=256]

Running the same command again resumes from the last checkpoint in --workdir (the pretrained weights are then not
read again, only checked). Writes WORKDIR/checkpoints, metrics.jsonl, tensorboard/, metrics.json (final top-1 and
the per-epoch eval top-1 curve) and finetune.png, and prints a summary table.

The recipe (moco-v3 transfer/README.md, run with DeiT's main.py; ViT-B):
* the whole network is trained, the patch projection included (it was random and frozen in pre-training),
  with stochastic depth (config.model.drop_path_rate) and a new Dense(num_classes) head on the [CLS] feature;
* AdamW, lr = 3e-4 * batch / 512 (= base_lr 1.5e-4 per 256 in optim.build_optimizer's convention), linear
  warmup then half-cosine per step, weight decay (paper convention -lr*wd*w) on all but biases, norms and the
  [CLS] token (timm's optimizer factory skips 1-D parameters and `no_weight_decay()`);
* per example: RandomResizedCrop(image_size, scale (crop_min, 1), ratio (3/4, 4/3)) of the image at its own
  size (32 px CIFAR is upsampled by the resize), horizontal flip, ImageNet normalisation, random erasing;
* per batch: mixup / cutmix with label smoothing (tf_mocov3.mixup), soft-target cross-entropy;
* evaluation: resize the shorter side to image_size * 256 / 224, centre crop, top-1.

Head init (documented choice): N(0, 0.02), zero bias. timm's `trunc_normal_(std=.02)` used by DeiT has absolute
bounds +-2, i.e. +-100 standard deviations, so it is a plain normal; Keras' TruncatedNormal would cut at 2 std.
Differences from DeiT kept on purpose (SPEC.md gives the recipe without them): no RandAugment / colour jitter,
the lr schedule is per step from 0 to 0 (DeiT: per epoch, warmup from 1e-6, floor 1e-5), no repeated augmentation.

Determinism and resume: epoch e visits the training set in a permutation seeded by (seed, e); the example at
position p of epoch e is augmented with the seed [seed, e * 2**32 + p]; the mixup/cutmix of global step t uses a
seed made from (seed, t); the stochastic-depth generators' states are part of the checkpoint. A run stopped at
step k and restarted gives the weights of an uninterrupted run.
"""

import json
import os
import sys

import keras
import ml_collections
import numpy as np
import tensorflow as tf
from absl import app
from absl import flags
from ml_collections import config_flags

from tf_mocov3.data import augment
from tf_mocov3.training import callbacks as callbacks_lib
from tf_mocov3.training import checkpointing
from tf_mocov3 import config_lib
from tf_mocov3.data import sources as data
from tf_mocov3.training import distribute
from tf_mocov3.data import mixup
from tf_mocov3.training import optim
from tf_mocov3.weights import pretrained
from tf_mocov3.training import reports
from tf_mocov3.training import pretrain as training
from tf_mocov3.models import vit

CONFIG_FILE = "config.json"
REPORT_NAME = "finetune"
_RESUME_KEYS = ("seed", "batch_size", "image_size", "model.arch", "dataset.name", "dataset.train_split")
_MIX_SEED_SALT = 0x6D697875  # keeps the per-batch mixup seeds apart from the per-example seeds


class FinetuneError(ValueError):
    """A fine-tuning run that cannot start; the message names the problem and the fix."""


# === Config ===


def base_config():
    """The official transfer recipe (ViT-B, DeiT's main.py) as used for CIFAR-10; the configs/ files adapt it."""

    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 1024               # global
    c.epochs = 100
    c.max_steps = 0                   # > 0: stop after this many steps (schedules then span them)
    c.image_size = 224
    c.strategy = "auto"
    c.num_cpu_devices = 0
    c.mixed_precision = "float32"
    c.jit_compile = "auto"            # auto (XLA on TPU and one GPU, not on CPU) | true | false
    c.log_every_steps = 50
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3

    c.model = ml_collections.ConfigDict()
    c.model.arch = "vit_base"         # the architecture the pretrained weights must have ("" = any)
    c.model.drop_path_rate = 0.1
    c.model.head_init_std = 0.02

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"
    c.optim.base_lr = 1.5e-4          # per 256 images = the recipe's 3e-4 per 512
    c.optim.weight_decay = 0.1
    c.optim.warmup_epochs = 3
    c.optim.beta_1 = 0.9
    c.optim.beta_2 = 0.999
    c.optim.epsilon = 1e-8
    c.optim.decay_convention = "lr_scaled"
    c.optim.decay_exclude = "bias_norm_cls"  # timm: no decay on 1-D params and the [CLS] token

    c.aug = ml_collections.ConfigDict()
    c.aug.crop_min = 0.05
    c.aug.random_erasing = 0.0
    c.aug.mixup_alpha = 0.8
    c.aug.cutmix_alpha = 1.0
    c.aug.mix_prob = 1.0
    c.aug.switch_prob = 0.5
    c.aug.label_smoothing = 0.1

    c.dataset = ml_collections.ConfigDict()
    c.dataset.name = "cifar10"
    c.dataset.path = ""
    c.dataset.data_dir = ""
    c.dataset.train_split = "train"   # "a+b" concatenates splits (Flowers: train+validation)
    c.dataset.eval_split = "test"
    c.dataset.in_memory = True
    c.dataset.validate_files = True
    c.dataset.threads = 0

    c.eval = ml_collections.ConfigDict()
    c.eval.every_epochs = 1
    c.eval.batch_size = 256
    c.eval.max_examples = 0           # 0 = the whole eval split
    return c


# === Data ===


def _concat_sources(sources):

    first = sources[0]
    if any(s.kind != first.kind or s.kind == "stream" for s in sources):
        raise FinetuneError(f"Cannot concatenate the splits of {first.name} (streamed or mixed sources); set "
                            f"config.dataset.in_memory=True.")
    images = tf.concat([s.images for s in sources], axis=0)
    labels = np.concatenate([s.labels for s in sources])
    return type(first)(first.name, first.kind, len(labels), max(s.num_classes for s in sources), images, labels)


def _check_has_labels(dataset_config, split):
    """An image folder whose images sit directly in it (no class sub-folders) has no labels."""
    if dataset_config.name != "image_folder" or not dataset_config.path:
        return

    path = dataset_config.path
    if os.path.isdir(os.path.join(path, split)):
        path = os.path.join(path, split)
    if not os.path.isdir(path):
        return  # data.py gives the error for a missing folder
    entries = os.listdir(path)
    has_classes = any(os.path.isdir(os.path.join(path, e)) for e in entries)
    loose = [e for e in entries if e.lower().endswith(data.IMAGE_EXTENSIONS)]
    if loose and not has_classes:
        raise FinetuneError(f"Image folder {path} has no labels: its images sit directly in it; put them in one "
                            f"sub-folder per class (e.g. {path}/cat/{loose[0]}).")


def load_split(dataset_config, split):
    """data.Source of `split` ("a+b" concatenates), checked to be a labelled set with >= 2 classes."""

    parts = [s.strip() for s in str(split).split("+")]
    for part in parts:
        _check_has_labels(dataset_config, part)
    try:
        sources = [data.load_source(dataset_config, part) for part in parts]
    except ValueError as err:
        raise FinetuneError(str(err)) from err
    source = sources[0] if len(sources) == 1 else _concat_sources(sources)
    if source.num_classes < 2:
        raise FinetuneError(f"Data set {dataset_config.name} split {split} has {source.num_classes} class(es); "
                            f"fine-tuning needs labels of at least 2 classes (image folders: one sub-folder each).")
    return source


def _example_seed(seed, epoch, position):

    return tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64) * (1 << 32) + position])


def train_example(image, seed, *, image_size, crop_min, is_encoded, random_erasing=0.0):
    """One training image: RandomResizedCrop + flip + normalise + random erasing, all from `seed` ([2] ints)."""


    fold = tf.random.experimental.stateless_fold_in
    crop_seed = fold(seed, 0)
    scale = (crop_min, 1.0)

    def from_decoded(img):
        shape = tf.shape(img)
        window = augment.random_resized_crop_window(crop_seed, shape[0], shape[1], scale)
        return augment.crop_and_resize(img, window, image_size)

    if is_encoded:
        data_bytes = tf.convert_to_tensor(image, tf.string)

        def from_jpeg():
            shape = tf.io.extract_jpeg_shape(data_bytes)
            window = augment.random_resized_crop_window(crop_seed, shape[0], shape[1], scale)
            return augment.decode_crop_and_resize_jpeg(data_bytes, window, image_size)

        crop = tf.cond(tf.io.is_jpeg(data_bytes), from_jpeg,
                       lambda: from_decoded(augment.decode_image(data_bytes)))
    else:
        crop = from_decoded(augment.to_rgb_uint8(image))
    crop.set_shape([image_size, image_size, 3])
    flip = tf.random.stateless_uniform([], fold(seed, 1)) < 0.5
    crop = tf.cond(flip, lambda: tf.reverse(crop, axis=[1]), lambda: crop)
    out = augment.normalize(crop)
    if random_erasing > 0:
        out = mixup.random_erasing(out, fold(seed, 2), p=random_erasing)
    return out


def build_train_dataset(config, source, *, start_step=0):
    """Infinite dataset of global batches (images [B, S, S, 3], soft targets [B, C]) from global step start_step."""


    batch, seed, num = int(config.batch_size), int(config.seed), source.num_examples
    steps = num // batch
    if steps == 0:
        raise FinetuneError(f"The training split has {num} examples, fewer than one batch of {batch}; lower "
                            f"config.batch_size.")
    start_epoch, first_step = divmod(int(start_step), steps)
    labels = tf.constant(source.labels)
    aug = config.aug

    @tf.autograph.experimental.do_not_convert
    def epoch_examples(epoch):
        first = tf.where(epoch == start_epoch, tf.constant(first_step * batch, tf.int64), 0)
        position = tf.range(first, steps * batch, dtype=tf.int64)
        order = tf.random.experimental.stateless_shuffle(tf.range(num, dtype=tf.int64),
                                                         seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
        return tf.data.Dataset.from_tensor_slices((tf.gather(order, position), position,
                                                   tf.fill(tf.shape(position), epoch)))

    @tf.autograph.experimental.do_not_convert
    def example(index, position, epoch):
        image = train_example(source.fetch(index), _example_seed(seed, epoch, position),
                              image_size=int(config.image_size), crop_min=float(aug.crop_min),
                              is_encoded=source.is_encoded, random_erasing=float(aug.random_erasing))
        return image, tf.gather(labels, index)

    @tf.autograph.experimental.do_not_convert
    def mix(step, images_labels):
        images, y = images_labels
        mix_seed = tf.random.experimental.stateless_fold_in(
            tf.stack([tf.constant(seed, tf.int64), step]), _MIX_SEED_SALT)
        images, targets, _ = mixup.mix_batch(
            images, y, mix_seed, num_classes=source.num_classes, mixup_alpha=float(aug.mixup_alpha),
            cutmix_alpha=float(aug.cutmix_alpha), prob=float(aug.mix_prob), switch_prob=float(aug.switch_prob),
            smoothing=float(aug.label_smoothing))
        return images, targets

    ds = tf.data.Dataset.range(start_epoch, np.iinfo(np.int64).max).flat_map(epoch_examples)
    ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch, drop_remainder=True)
    ds = tf.data.Dataset.zip(tf.data.Dataset.range(int(start_step), np.iinfo(np.int64).max), ds)
    ds = ds.map(mix, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    if int(config.dataset.get("threads", 0) or 0) > 0:
        options.threading.private_threadpool_size = int(config.dataset.threads)
    return ds.with_options(options)


def build_eval_dataset(config, source):
    """(images [b, S, S, 3] by augment.eval_preprocess, int labels [b]) of the eval split, in order."""


    ds = source.labeled_dataset()
    if int(config.eval.max_examples) > 0:
        ds = ds.take(int(config.eval.max_examples))
    size = int(config.image_size)
    preprocess = tf.autograph.experimental.do_not_convert(
        lambda image, label: (augment.eval_preprocess(image, size), label))
    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(int(config.eval.batch_size)).prefetch(tf.data.AUTOTUNE)


# === Model ===


def check_pretrained(config, path):
    """Reads the pretrained run's config (cheap) and checks arch and image size; returns (arch, overrides)."""

    if not path:
        raise FinetuneError("--pretrained is required: pass a pre-training workdir, a checkpoint prefix or a "
                            "directory written by tf_mocov3.convert_official.")
    try:
        pre_config = pretrained.resolve(path).config
    except ValueError as err:
        raise FinetuneError(str(err)) from err
    arch, overrides = pre_config.model.arch, config_lib.backbone_overrides(pre_config.model)
    want = str(config.model.get("arch", "") or "")
    if want and want != arch:
        raise FinetuneError(f"Pretrained path {path} holds a {arch} backbone but the config fine-tunes {want}; "
                            f"pass {want} weights or set --config.model.arch={arch}.")
    try:
        vit.resolve_config(arch, int(config.image_size),
                           dict(overrides, drop_path_rate=float(config.model.drop_path_rate)))
    except ValueError as err:
        raise FinetuneError(f"Cannot fine-tune {path} at image_size={config.image_size}: {err}") from err
    return arch, overrides


def drop_path_states(backbone):
    """The random-generator state variables of the backbone's stochastic-depth layers, in block order."""
    states = []
    for layer in backbone.layers:
        drop = getattr(layer, "drop_path", None)
        if layer.name.startswith("block_") and drop is not None and drop.seed_generator is not None:
            states.append(drop.seed_generator.state)
    return states


def build_classifier(config, *, arch, overrides, num_classes):
    """Backbone (all layers trainable, stochastic depth) + Dense head: images [B, S, S, 3] -> logits [B, C].

    The stochastic-depth generator states are attached to the model as attributes `drop_path_rng_I`, so that
    tf.train.Checkpoint saves and restores them (Keras does not hand SeedGenerators to TF checkpoints).
    """


    backbone = vit.build_backbone(arch, int(config.image_size), train_patch_embed=True, name="backbone",
                                  **dict(overrides, drop_path_rate=float(config.model.drop_path_rate)))
    head = keras.layers.Dense(num_classes, kernel_initializer=keras.initializers.RandomNormal(
        stddev=float(config.model.head_init_std)), bias_initializer="zeros", dtype="float32", name="head")
    inputs = keras.Input((int(config.image_size), int(config.image_size), 3), name="images")
    model = keras.Model(inputs, head(backbone(inputs)), name="classifier")
    for i, state in enumerate(drop_path_states(backbone)):
        state.assign(tf.constant([int(config.seed), 1_000_003 * (i + 1)], state.dtype))
        setattr(model, f"drop_path_rng_{i}", state)
    return model


def copy_pretrained_weights(backbone, path):
    """Copies the weights of pretrained.load_backbone(path) into `backbone` (same arch, any image size)."""

    try:
        source = pretrained.load_backbone(path, image_size=int(backbone.input.shape[1]))
    except ValueError as err:
        raise FinetuneError(str(err)) from err
    src = {w.path: w for w in source.weights}
    dst = list(backbone.weights)
    if sorted(src) != sorted(w.path for w in dst):
        raise FinetuneError(f"The backbone of {path} has weights {sorted(set(src) ^ {w.path for w in dst})[:3]} "
                            f"that the fine-tuning backbone lacks (or the reverse); this is a tf_mocov3 bug.")
    for w in dst:
        value = src[w.path]
        assert tuple(value.shape) == tuple(w.shape), (w.path, value.shape, w.shape)
        w.assign(value)
    return len(dst)


def _make_top1_fn(model):

    @tf.function(reduce_retracing=True)
    def correct(images, labels):
        logits = model(images, training=False)
        pred = tf.argmax(logits, axis=-1, output_type=tf.int64)
        return tf.reduce_sum(tf.cast(pred == tf.cast(labels, tf.int64), tf.int64)), tf.size(labels, tf.int64)

    return correct


def evaluate_top1(correct_fn, dataset):
    """Top-1 accuracy in percent of the compiled `correct_fn` over `dataset`."""
    right = total = 0
    for images, labels in dataset:
        r, n = correct_fn(images, labels)
        right, total = right + int(r), total + int(n)
    return 100.0 * right / max(total, 1)


# === Callbacks ===


class LearningRateLogger(keras.callbacks.Callback):
    """Adds the lr the step used to the logs (for the progress line and TensorBoard)."""

    def on_train_batch_begin(self, batch, logs=None):
        self._lr = float(self.model.optimizer.learning_rate)  # the schedule at the current step

    def on_train_batch_end(self, batch, logs=None):
        if logs is not None:
            logs["lr"] = self._lr


class IntervalMeanLoss(keras.callbacks.Callback):
    """Resets Keras' running loss after each logged step, so each logged loss is the interval's mean."""

    def __init__(self, every_steps):
        super().__init__()
        self.every_steps = max(int(every_steps), 1)

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) % self.every_steps == 0:
            self.model.reset_metrics()


class Evaluator(keras.callbacks.Callback):
    """Top-1 on the eval split every `every_steps` steps and at the end; logged as `eval_top1`."""

    def __init__(self, evaluate, every_steps, total_steps, steps_per_epoch, writer, say):
        super().__init__()
        self.evaluate, self.every_steps, self.total_steps = evaluate, max(int(every_steps), 1), total_steps
        self.steps_per_epoch, self.writer, self.say = steps_per_epoch, writer, say
        self.last = None  # (step, top1)

    def run(self, step):
        top1 = self.evaluate()
        self.last = (step, top1)
        self.writer.write({"step": step, "epoch": step / self.steps_per_epoch, "eval_top1": top1})
        self.say(f"eval step {step} (epoch {step / self.steps_per_epoch:.2f}): top-1 {top1:.2f}%")

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step % self.every_steps == 0 or step == self.total_steps:
            self.run(step)


# === The run ===


def _validate(config, workdir):
    """Raises FinetuneError listing every problem of `config` (one sentence each) before any work."""
    problems = []
    if not isinstance(config.batch_size, int) or config.batch_size <= 0:
        problems.append(f"config.batch_size must be a positive integer, got {config.batch_size!r}.")
    if config.max_steps < 0 or (config.max_steps == 0 and config.epochs <= 0):
        problems.append("config.epochs must be positive (or config.max_steps > 0).")
    if config.dataset.name not in data.SOURCE_NAMES:
        problems.append(f"config.dataset.name={config.dataset.name!r} is unknown; choose one of "
                        f"{', '.join(data.SOURCE_NAMES)}.")
    if not 0.0 <= config.model.drop_path_rate < 1.0:
        problems.append(f"config.model.drop_path_rate must be in [0, 1), got {config.model.drop_path_rate}.")
    for key in ("mixup_alpha", "cutmix_alpha", "label_smoothing", "random_erasing"):
        if config.aug[key] < 0:
            problems.append(f"config.aug.{key} must be >= 0, got {config.aug[key]}.")
    if not 0 < config.aug.crop_min <= 1:
        problems.append(f"config.aug.crop_min must be in (0, 1], got {config.aug.crop_min}.")
    if config.mixed_precision not in config_lib.PRECISIONS:
        problems.append(f"config.mixed_precision={config.mixed_precision!r} is unknown; choose one of "
                        f"{', '.join(config_lib.PRECISIONS)}.")
    problem = config_lib.check_workdir(workdir)
    if problem:
        problems.append(problem)
    if problems:
        raise FinetuneError(" ".join(problems))


def run_finetune(config, workdir, pretrained_path, *, strategy=None, tpu="", print_fn=None, extra_callbacks=()):
    """Fine-tunes (or resumes) as `config` says; returns {"step", "top1", "model", "curve"}.

    Raises FinetuneError (one sentence) for every problem found before training starts.
    """


    say = print_fn or (lambda line: print(line, flush=True))
    # --- every check before any work ---
    _validate(config, workdir)
    arch, overrides = check_pretrained(config, pretrained_path)
    config_lib.check_resume_compatible(workdir, config, _RESUME_KEYS, config_file=CONFIG_FILE,
                                       kind="fine-tuning run", error_cls=FinetuneError)
    train_source = load_split(config.dataset, config.dataset.train_split)
    eval_source = load_split(config.dataset, config.dataset.eval_split)
    if eval_source.num_classes != train_source.num_classes:
        raise FinetuneError(f"The eval split {config.dataset.eval_split} has {eval_source.num_classes} classes but "
                            f"the training split {train_source.num_classes}; use splits of the same data set.")
    steps_per_epoch = train_source.num_examples // int(config.batch_size)
    if steps_per_epoch == 0:
        raise FinetuneError(f"The training split has {train_source.num_examples} examples, fewer than one batch "
                            f"of {config.batch_size}; lower config.batch_size.")
    total_steps = training.total_steps_of(config, steps_per_epoch)
    if strategy is None:
        try:
            strategy = distribute.make_strategy(config.strategy, tpu=tpu, num_cpu_devices=config.num_cpu_devices)
        except ValueError as err:
            raise FinetuneError(str(err)) from err
    if config.batch_size % strategy.num_replicas_in_sync:
        raise FinetuneError(f"config.batch_size={config.batch_size} is not divisible by the "
                            f"{strategy.num_replicas_in_sync} replicas; choose a multiple.")
    chief = distribute.is_chief(strategy)

    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(config.mixed_precision)
    try:
        keras.utils.set_random_seed(int(config.seed))
        with strategy.scope():
            model = build_classifier(config, arch=arch, overrides=overrides, num_classes=train_source.num_classes)
            optimizer = optim.build_optimizer(config.optim, global_batch=int(config.batch_size),
                                              steps_per_epoch=steps_per_epoch, total_steps=total_steps)
            model.compile(optimizer=optimizer,
                          loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                          jit_compile=training.resolve_jit_compile(config, strategy))
            model.optimizer.build(model.trainable_variables)
        checkpointer = checkpointing.Checkpointer(
            workdir, model=model, optimizer=model.optimizer, keep=config.keep_checkpoints, is_chief=chief,
            worker_index=distribute.worker_index(strategy))
        start_step = checkpointer.restore_latest()
        if start_step:
            say(f"Resuming from step {start_step} ({checkpointer.latest_path()}).")
        else:
            count = copy_pretrained_weights(model.get_layer("backbone"), pretrained_path)
            say(f"Loaded {count} pretrained backbone weights of {arch} from {pretrained_path}.")
        if chief:
            with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
                record = json.loads(config.to_json_best_effort())
                record["pretrained"] = os.path.abspath(pretrained_path)
                json.dump(record, f, indent=2)

        correct_fn = _make_top1_fn(model)
        eval_ds = build_eval_dataset(config, eval_source)
        evaluate = lambda: evaluate_top1(correct_fn, eval_ds)  # noqa: E731
        metrics = callbacks_lib.MetricsWriter(workdir, config.log_every_steps, total_steps, config.batch_size,
                                              enabled=chief)
        evaluator = Evaluator(evaluate, steps_per_epoch * max(int(config.eval.every_epochs), 1), total_steps,
                                  steps_per_epoch, metrics, say if chief else (lambda line: None))
        if start_step < total_steps:
            if chief:
                say(f"Fine-tuning {arch} on {config.dataset.name} ({train_source.num_examples} images, "
                    f"{train_source.num_classes} classes) at {config.image_size} px: {total_steps} steps "
                    f"({steps_per_epoch} per epoch), global batch {config.batch_size} on "
                    f"{strategy.num_replicas_in_sync} replica(s), workdir {workdir}.")
            guard = callbacks_lib.NonFiniteLossGuard()
            cbs = [LearningRateLogger(), guard, metrics]
            if chief:
                cbs.append(callbacks_lib.ProgressLogger(total_steps, config.batch_size, config.log_every_steps,
                                                        print_fn=print_fn))
            cbs += [evaluator, *extra_callbacks,
                    callbacks_lib.CheckpointSaver(checkpointer, config.checkpoint_every_steps, guard),
                    IntervalMeanLoss(config.log_every_steps)]
            dataset = build_train_dataset(config, train_source, start_step=start_step)
            model.fit(dataset, epochs=1, steps_per_epoch=total_steps - start_step, callbacks=cbs, verbose=0, shuffle=False)
            if guard.bad_step is not None:
                raise training.TrainingDiverged(
                    f"The loss became NaN or Inf at step {guard.bad_step}; the last good checkpoint "
                    f"({checkpointer.latest_path()}) is kept. Lower config.optim.base_lr, then run the same command "
                    f"again to resume.")
        else:
            say(f"Fine-tuning already finished: step {start_step} of {total_steps}.")
        step = int(model.optimizer.iterations.numpy())
        if evaluator.last is None or evaluator.last[0] != step:
            evaluator.run(step)
        top1 = evaluator.last[1]
        curve, loss_curve = _read_curves(workdir)
        summary = None
        if chief:
            summary = reports.write_report(
                workdir, name=REPORT_NAME,
                metrics={"finetune": {"top1": top1, "step": step, "epochs": step / steps_per_epoch,
                                      "dataset": config.dataset.name, "arch": arch, "image_size": config.image_size,
                                      "pretrained": os.path.abspath(pretrained_path),
                                      "eval_top1_curve": [[s, v] for s, v in curve]}},
                curves={"eval top-1 (%)": curve, "train loss": loss_curve},
                table=[{"dataset": config.dataset.name, "arch": arch, "image size": config.image_size,
                        "epochs": round(step / steps_per_epoch, 2), "steps": step, "top-1": top1}])
            say(summary)
        return {"step": step, "top1": top1, "model": model, "curve": curve, "summary": summary}
    finally:
        keras.config.set_dtype_policy(previous_policy)


def _read_curves(workdir):
    """(eval top-1 [(step, value)], train loss [(step, value)]) from metrics.jsonl, last record per step wins."""
    evals, losses = {}, {}
    path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                record = json.loads(line)
                if "eval_top1" in record:
                    evals[record["step"]] = record["eval_top1"]
                if "loss" in record:
                    losses[record["step"]] = record["loss"]
    return sorted(evals.items()), sorted(losses.items())


# === Command ===


def _define_flags():

    config = config_flags.DEFINE_config_file("config", None, "Config file (configs/finetune_*.py).",
                                             lock_config=True)
    workdir = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.")
    pretrained = flags.DEFINE_string("pretrained", None, "Pre-training workdir, checkpoint prefix or converted "
                                     "official directory.")
    strategy = flags.DEFINE_enum("strategy", None, ["auto", "one_device", "mirrored", "multi_worker", "tpu"],
                                 "Overrides config.strategy.")
    tpu = flags.DEFINE_string("tpu", "", "Cloud TPU name; implies --strategy=tpu.")
    flags.mark_flags_as_required(["config", "workdir", "pretrained"])
    return config, workdir, pretrained, strategy, tpu


def main(argv, flag_values):


    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    config_flag, workdir, pretrained_flag, strategy, tpu = flag_values
    config = config_flag.value
    with config.unlocked():
        if strategy.value:
            config.strategy = strategy.value
        elif tpu.value:
            config.strategy = "tpu"
    try:
        run_finetune(config, workdir.value, pretrained_flag.value, tpu=tpu.value)
    except (FinetuneError, training.TrainingDiverged) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    _FLAGS = _define_flags()
    app.run(lambda argv: main(argv, _FLAGS))
