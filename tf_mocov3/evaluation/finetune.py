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
* per batch: mixup / cutmix with label smoothing (data/mixup.py), soft-target cross-entropy;
* evaluation: resize the shorter side to image_size * 256 / 224, centre crop, top-1.

Head init (documented choice): N(0, 0.02), zero bias. timm's `trunc_normal_(std=.02)` used by DeiT has absolute
bounds +-2, i.e. +-100 standard deviations, so it is a plain normal; Keras' TruncatedNormal would cut at 2 std.
Differences from DeiT kept on purpose (the official transfer runs replace DeiT's transform with RandomResizedCrop + flip,
and the transfer recipe lists none of these): no RandAugment / colour jitter,
the lr schedule is per step from 0 to 0 (DeiT: per epoch, warmup from 1e-6, floor 1e-5), no repeated augmentation.

Determinism and resume: epoch e visits the training set in a permutation seeded by (seed, e); the example at
position p of epoch e is augmented with the seed [seed, e * 2**32 + p]; the mixup/cutmix of global step t uses a
seed made from (seed, t); the stochastic-depth generators' states are part of the checkpoint. A run stopped at
step k and restarted gives the weights of an uninterrupted run.
"""

import os

import keras
import numpy as np
import tensorflow as tf

from tf_mocov3 import config_lib
from tf_mocov3.data import pipelines
from tf_mocov3.data import sources as data
from tf_mocov3.models import vit
from tf_mocov3.training import optim
from tf_mocov3.training import reports
from tf_mocov3.training import trainer as trainer_lib
from tf_mocov3.weights import pretrained

CONFIG_FILE = "config.json"
REPORT_NAME = "finetune"
_RESUME_KEYS = ("seed", "batch_size", "image_size", "model.arch", "dataset.name", "dataset.train_split")


class FinetuneError(ValueError):
    """A fine-tuning run that cannot start; the message names the problem and the fix."""


# === Data ===


def load_split(dataset_config, split):
    """sources.open_labelled(dataset_config, split) ("a+b" joins splits), its errors as FinetuneError."""
    try:
        return data.open_labelled(dataset_config, split)
    except data.LabelledSplitError as err:
        raise FinetuneError(str(err)) from err


def build_train_dataset(config, source, *, start_step=0):
    """Infinite dataset of global batches (images [B, S, S, 3], soft targets [B, C]) from global step start_step:
    pipelines.labelled_train_dataset with this recipe's crop, random erasing and mixup / cutmix."""
    aug = config.aug
    mix = dict(num_classes=source.num_classes, mixup_alpha=float(aug.mixup_alpha),
               cutmix_alpha=float(aug.cutmix_alpha), prob=float(aug.mix_prob), switch_prob=float(aug.switch_prob),
               smoothing=float(aug.label_smoothing))
    try:
        return pipelines.labelled_train_dataset(
            source, global_batch=int(config.batch_size), seed=int(config.seed), image_size=int(config.image_size),
            crop_scale=(float(aug.crop_min), 1.0), random_erasing=float(aug.random_erasing), start_step=start_step,
            mix=mix, threads=int(config.dataset.get("threads", 0) or 0))
    except ValueError as err:
        raise FinetuneError(str(err)) from err


def build_eval_dataset(config, source):
    """(images [b, S, S, 3] by augment.eval_preprocess, int labels [b]) of the eval split (the first
    config.eval.max_examples, 0 = all), in order."""
    limit = int(config.eval.max_examples)
    indices = np.arange(min(limit, source.num_examples)) if limit > 0 else None
    return pipelines.eval_dataset(source, int(config.image_size), int(config.eval.batch_size), indices)


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
    arch, overrides = pre_config.model.arch, vit.config_overrides(pre_config.model)
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


def run_finetune(config, workdir, pretrained_path, *, strategy=None, tpu="", print_fn=None, extra_callbacks=()):
    """Fine-tunes (or resumes) as `config` says; returns {"step", "top1", "model", "curve", "summary"}.

    Raises config_lib.ConfigError for a bad config and FinetuneError (one sentence) for a pretrained path or data
    set that cannot be used, both before training starts; TrainingDiverged when the loss stops being finite.
    """
    # --- every check before any work ---
    config_lib.validate(config, kind="finetune", workdir=workdir)
    arch, overrides = check_pretrained(config, pretrained_path)
    record = config_lib.as_record(config)
    record["pretrained"] = os.path.abspath(pretrained_path)
    config_lib.check_resume_compatible(workdir, record, _RESUME_KEYS, config_file=CONFIG_FILE,
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
    total_steps = trainer_lib.total_steps_of(config, steps_per_epoch)
    strategy = strategy or trainer_lib.strategy_for(config, tpu)
    config_lib.validate(config, kind="finetune", num_replicas=strategy.num_replicas_in_sync)

    trainer = trainer_lib.Trainer(
        workdir, strategy=strategy, total_steps=total_steps, global_batch=config.batch_size,
        log_every_steps=config.log_every_steps, checkpoint_every_steps=config.checkpoint_every_steps,
        keep_checkpoints=config.keep_checkpoints, config_file=CONFIG_FILE, kind="fine-tuning run",
        print_fn=print_fn)
    with trainer_lib.precision(config.mixed_precision):
        model = trainer.build(
            lambda: build_classifier(config, arch=arch, overrides=overrides, num_classes=train_source.num_classes),
            lambda: optim.build_optimizer(config.optim, global_batch=int(config.batch_size),
                                          steps_per_epoch=steps_per_epoch, total_steps=total_steps),
            seed=config.seed, jit_compile=trainer_lib.resolve_jit_compile(config, strategy),
            loss=keras.losses.CategoricalCrossentropy(from_logits=True))
        start_step = trainer.restore(model)
        if not start_step:
            count = copy_pretrained_weights(model.get_layer("backbone"), pretrained_path)
            trainer.say(f"Loaded {count} pretrained backbone weights of {arch} from {pretrained_path}.")
        trainer.write_config(record)

        correct_fn = _make_top1_fn(model)
        eval_ds = build_eval_dataset(config, eval_source)
        evaluator = Evaluator(lambda: evaluate_top1(correct_fn, eval_ds),
                              steps_per_epoch * max(int(config.eval.every_epochs), 1), total_steps,
                              steps_per_epoch, trainer.metrics, trainer.say)
        if start_step < total_steps:
            trainer.say(f"Fine-tuning {arch} on {config.dataset.name} ({train_source.num_examples} images, "
                        f"{train_source.num_classes} classes) at {config.image_size} px: {total_steps} steps "
                        f"({steps_per_epoch} per epoch), global batch {config.batch_size} on "
                        f"{strategy.num_replicas_in_sync} replica(s), workdir {workdir}.")
            trainer.fit(model, build_train_dataset(config, train_source, start_step=start_step),
                        start_step=start_step, callbacks=[evaluator, *extra_callbacks],
                        diverged_hint="lower config.optim.base_lr")
        else:
            trainer.say(f"Fine-tuning already finished: step {start_step} of {total_steps}.")
        step = int(model.optimizer.iterations.numpy())
        if evaluator.last is None or evaluator.last[0] != step:
            evaluator.run(step)
    top1 = evaluator.last[1]
    curves = reports.log_curves(trainer.read_log(), ("eval_top1", "loss"))
    curve = curves.get("eval_top1", [])
    summary = trainer.report(
        name=REPORT_NAME,
        metrics={"finetune": {"top1": top1, "step": step, "epochs": step / steps_per_epoch,
                              "dataset": config.dataset.name, "arch": arch, "image_size": config.image_size,
                              "pretrained": os.path.abspath(pretrained_path),
                              "eval_top1_curve": [[s, v] for s, v in curve]}},
        curves={"eval top-1 (%)": curve, "train loss": curves.get("loss", [])},
        table=[{"dataset": config.dataset.name, "arch": arch, "image size": config.image_size,
                "epochs": round(step / steps_per_epoch, 2), "steps": step, "top-1": top1}])
    return {"step": step, "top1": top1, "model": model, "curve": curve, "summary": summary}

