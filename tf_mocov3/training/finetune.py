r"""Transfer fine-tuning of a pre-trained MoCo v3 backbone (the paper's DeiT recipe), end to end: `FinetuneTask`, a
task of the one run loop (training/loop.py).

  python -m tf_mocov3.finetune --config=configs/finetune_cifar10.py --pretrained=/tmp/mocov3_vit_base \
      --workdir=/tmp/ft_cifar10 [--config.batch_size=256]

Running the same command again resumes from the last checkpoint in --workdir (the pretrained weights are then not
read again, only checked). Writes WORKDIR/checkpoints, metrics.jsonl, tensorboard/, metrics.json (final top-1 and
the per-epoch eval top-1 curve) and finetune.png, and prints a summary table.

The transfer recipe (moco-v3 transfer/README.md, run with DeiT's main.py on 8 GPUs x 128; ViT-B;
config_lib.transfer_config):
* the whole network is trained, the patch projection included (it was random and frozen in pre-training),
  with stochastic depth (config.model.drop_path_rate) and a new Dense(num_classes) head on the [CLS] feature;
* AdamW, lr = 3e-4 * batch / 512 (= base_lr 1.5e-4 per 256 in optim.build_optimizer's convention: 6e-4 at batch
  1024), weight decay (paper convention -lr*wd*w) on all but biases, norms and the [CLS] token (timm's optimizer
  factory skips 1-D parameters and `no_weight_decay()`); the lr per epoch as DeiT steps timm's cosine (below);
* per example: RandomResizedCrop(image_size, scale (crop_min, 1), ratio (3/4, 4/3)) of the image at its own
  size (32 px CIFAR is upsampled by the resize), horizontal flip, ImageNet normalisation (random erasing is an
  option that no transfer recipe uses);
* per group of 128 images (DeiT's per-GPU batch): mixup / cutmix with label smoothing (data/mixup.py),
  soft-target cross-entropy;
* evaluation: resize the shorter side to image_size * 256 / 224, centre crop, top-1.

ImageNet end-to-end fine-tuning (configs/finetune_imagenet_vit_*.py) is DeiT's main.py recipe with its defaults.
Both recipes use these options (config keys in config_lib.finetune_config):
* `model.train_pos_embed`: the position table is a trainable weight, as DeiT loads the converted `pos_embed` into
  its trainable parameter; it starts from the pre-training sin-cos table, bicubically interpolated when the
  fine-tuning grid differs (`interpolate_pos_embed`: PyTorch's F.interpolate(mode="bicubic",
  align_corners=False), i.e. cubic convolution with a = -0.75, as DeiT's main.py; tf.image.resize's bicubic uses
  a = -0.5, so it is not used for this), and it is not decayed (timm's `no_weight_decay()`: pos_embed, cls_token).
  Every configs/finetune_*.py sets it; False keeps the fixed table;
* `optim.schedule="per_epoch"`: DeiT's lr (schedules.EpochWarmupCosine: warmup from 1e-6, cosine to 1e-5, stepped
  after each epoch, so epoch e trains at timm's value for e - 1); "per_step" (finetune_config's default) is the
  MoCo v3 pre-training schedule, warmup from 0 and half-cosine to 0 per step;
* `aug.mixup_group`: one mixup / cutmix lambda per group of rows (DeiT: per 128-image GPU batch; 0 = one per
  global batch, finetune_config's default).
The ImageNet recipes also use:
* `aug.rand_augment` (data/randaugment.py), `aug.repeated_aug` (data/order.py), `aug.interpolation="bicubic"`
  (train crop and eval resize), `eval.crop_pct` (0.875: resize 256, crop 224), random erasing (data/erasing.py);
* `ema.enabled`: model EMA (timm ModelEma, decay 0.99996) evaluated beside the model as `eval_top1_ema`; as in
  DeiT the reported `top1` is the model's.
metrics.json reports `top1` (the final evaluation) and `top1_best` (the maximum over all evaluations), as DeiT
prints both.

Head init (documented choice): N(0, 0.02), zero bias. timm's `trunc_normal_(std=.02)` used by DeiT has absolute
bounds +-2, i.e. +-100 standard deviations, so it is a plain normal; Keras' TruncatedNormal would cut at 2 std.
The transfer recipe has no RandAugment / colour jitter and no repeated augmentation: the official transfer runs
replace DeiT's transform with RandomResizedCrop + flip and pass --no-repeated-aug.

Determinism and resume: epoch e visits the training set in a permutation seeded by (seed, e); the example at
position p of epoch e is augmented with the seed [seed, e * 2**32 + p]; the mixup/cutmix of global step t uses a
seed made from (seed, t); the stochastic-depth generators' states are part of the checkpoint. A run stopped at
step k and restarted gives the weights of an uninterrupted run. A workdir whose run had another position-table or
EMA setting, lr schedule or mixup grouping is refused before any work, with the flags that resume it as it ran
(`check_resume_options`; workdirs recorded before a key existed ran with finetune_config's default).
"""

import os

import keras
import numpy as np
import tensorflow as tf

from tf_mocov3 import config_lib
from tf_mocov3.data import pipelines
from tf_mocov3.data import sources as data
from tf_mocov3.evaluation import features as features_lib
from tf_mocov3.models import backbones
from tf_mocov3.models import vit
from tf_mocov3.training import callbacks as callbacks_lib
from tf_mocov3.training import distribute
from tf_mocov3.training import loop
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


def build_train_dataset(config, source, *, start_step=0, num_replicas=1, input_context=None, count_skipped=False):
    """Infinite dataset of global batches (images [B, S, S, 3], soft targets [B, C]; with count_skipped also the
    records dropped before each row, int32 [B], which the train step counts) from global step start_step:
    pipelines.labelled_train_dataset with this recipe's crop (interpolation, RandAugment), random erasing, repeated
    augmentation (spread over `num_replicas`) and mixup / cutmix (per global batch or per aug.mixup_group rows).
    With an `input_context`, this input pipeline's rows of each global batch (labelled_train_dataset)."""
    aug = config.aug
    mix = dict(num_classes=source.num_classes, mixup_alpha=float(aug.mixup_alpha),
               cutmix_alpha=float(aug.cutmix_alpha), prob=float(aug.mix_prob), switch_prob=float(aug.switch_prob),
               smoothing=float(aug.label_smoothing))
    try:
        return pipelines.labelled_train_dataset(
            source, global_batch=int(config.batch_size), seed=int(config.seed), image_size=int(config.image_size),
            crop_scale=(float(aug.crop_min), 1.0), random_erasing=float(aug.random_erasing), start_step=start_step,
            mix=mix, threads=int(config.dataset.threads),
            interpolation=str(aug.interpolation), rand_augment=aug.rand_augment or None,
            repeats=int(aug.repeated_aug), num_replicas=int(num_replicas),
            mix_group=int(aug.mixup_group),
            shuffle_buffer=int(config.dataset.shuffle_buffer),
            cycle_length=int(config.dataset.cycle_length),
            input_context=input_context, count_skipped=count_skipped)
    except ValueError as err:
        raise FinetuneError(str(err)) from err


def distributed_train_dataset(config, source, strategy, start_step, end_step):
    """The training batches of global steps [start_step, end_step) for `strategy`: on several replicas each input
    pipeline (host) reads and augments only its replicas' rows (distribute_datasets_from_function), not the whole
    global batch to keep a share of it."""
    steps = int(end_step) - int(start_step)
    return distribute.pipeline_datasets(strategy, lambda ctx: build_train_dataset(
        config, source, start_step=start_step, input_context=ctx, count_skipped=True).take(steps))


def build_eval_dataset(config, source):
    """(images [b, S, S, 3] by augment.eval_preprocess, int labels [b]) of the eval split (the first
    config.eval.max_examples, 0 = all), in order."""
    limit = int(config.eval.max_examples)
    indices = np.arange(min(limit, source.num_examples)) if limit > 0 else None
    return pipelines.eval_dataset(source, int(config.image_size), int(config.eval.batch_size), indices,
                                  interpolation=str(config.aug.interpolation),
                                  crop_pct=float(config.eval.crop_pct) or None)


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
    want = str(config.model.arch)
    if want and want != arch:
        raise FinetuneError(f"Pretrained path {path} holds a {arch} backbone but the config fine-tunes {want}; "
                            f"pass {want} weights or set --config.model.arch={arch}.")
    problems = backbones.option_problems(arch, overrides={"drop_path_rate": float(config.model.drop_path_rate)})
    if problems:
        raise FinetuneError(f"Cannot fine-tune the {arch} of {path}: {problems[0]}")
    try:
        backbones.resolve_config(arch, int(config.image_size),
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


    pos = {"train_pos_embed": True} if backbones.is_vit(arch) and config.model.train_pos_embed else {}
    backbone = backbones.build_backbone(arch, int(config.image_size), train_patch_embed=backbones.is_vit(arch),
                                        name="backbone",
                                        **dict(overrides, drop_path_rate=float(config.model.drop_path_rate)), **pos)
    head = keras.layers.Dense(num_classes, kernel_initializer=keras.initializers.RandomNormal(
        stddev=float(config.model.head_init_std)), bias_initializer="zeros", dtype="float32", name="head")
    inputs = keras.Input((int(config.image_size), int(config.image_size), 3), name="images")
    model = keras.Model(inputs, head(backbone(inputs)), name="classifier")
    for i, state in enumerate(drop_path_states(backbone)):
        state.assign(tf.constant([int(config.seed), 1_000_003 * (i + 1)], state.dtype))
        setattr(model, f"drop_path_rng_{i}", state)
    return model


def bicubic_resize(grid, new_h, new_w, a=-0.75):
    """PyTorch's F.interpolate(mode="bicubic", align_corners=False) of a numpy [H, W, C] grid (float64 math).

    Output index i samples the input at (i + 0.5) * H / new_h - 0.5 with Keys' cubic convolution of parameter a
    (PyTorch: -0.75) over the 4 nearest rows, indices clamped at the border; no antialiasing. Separable: rows,
    then columns.
    """
    def weights(t):
        near = lambda x: ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0  # |x| <= 1
        far = lambda x: ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a  # 1 < |x| < 2
        return np.stack([far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)], axis=-1)

    def along(x, new, axis):
        old = x.shape[axis]
        src = (np.arange(new, dtype=np.float64) + 0.5) * (old / new) - 0.5
        base = np.floor(src)
        w = weights(src - base)  # [new, 4]
        idx = np.clip(base[:, None].astype(np.int64) + np.arange(-1, 3)[None, :], 0, old - 1)  # [new, 4]
        taken = np.take(x, idx, axis=axis)  # axis -> (new, 4)
        shape = [1] * taken.ndim
        shape[axis], shape[axis + 1] = new, 4
        return np.sum(taken * w.reshape(shape), axis=axis + 1)

    grid = np.asarray(grid, np.float64)
    return along(along(grid, int(new_h), 0), int(new_w), 1)


def interpolate_pos_embed(table, old_grid, new_grid, cls_rows=1):
    """DeiT main.py's pos_embed interpolation: [1, 1 + h*w, D] -> [1, 1 + H*W, D], the [CLS] row kept, the patch
    rows resized as an (h, w) image with `bicubic_resize` (PyTorch's bicubic). Same grid: unchanged.
    `cls_rows=0` for a table without a [CLS] slot (the pooling="gap*" ablations)."""
    table = np.asarray(table)
    if tuple(old_grid) == tuple(new_grid):
        return table.astype(np.float32)
    dim = table.shape[-1]
    patches = table[0, cls_rows:].reshape(old_grid[0], old_grid[1], dim)
    resized = bicubic_resize(patches, new_grid[0], new_grid[1]).reshape(1, -1, dim)
    return np.concatenate([table[:, :cls_rows], resized], axis=1).astype(np.float32)


def pretrain_image_size(path):
    """The image size the weights at `path` were pre-trained at (its run config's dataset.image_size)."""
    try:
        return int(pretrained.resolve(path).config.dataset.image_size)
    except (ValueError, AttributeError, KeyError, TypeError) as err:
        raise FinetuneError(f"Cannot read the pre-training image size of {path} ({err}); pass a pre-training "
                            f"workdir or a tf_mocov3.convert_official directory.") from err


def init_pos_embed(backbone, path, table=None):
    """Sets a trainable position table (if the backbone has one) to the pre-training table of `path` (`table`: a
    learned one, pos_embed="learned"; None: the sin-cos table), interpolated to this backbone's grid as DeiT does;
    returns the pre-training grid, or None (no such table)."""
    layer = next((candidate for candidate in backbone.layers if candidate.name == "cls_pos_embed"), None)  # ViTs only
    if not getattr(layer, "train_pos_embed", False):
        return None
    patch = int(backbone.input.shape[1]) // layer.grid_h
    old = pretrain_image_size(path) // patch
    cls_rows = int(getattr(layer, "use_cls_token", True))
    if table is None:
        table = vit.sincos_2d_position_embedding(old, old, layer.dim)[:, 1 - cls_rows:]
    layer.pos_embed.assign(interpolate_pos_embed(table, (old, old), (layer.grid_h, layer.grid_w), cls_rows))
    return (old, old)


def copy_pretrained_weights(backbone, path):
    """Copies the weights of pretrained.load_backbone(path) into `backbone` (same arch, any image size) and starts
    a trainable position table from the pre-training table (init_pos_embed); returns the weights copied."""

    try:
        source = pretrained.load_backbone(path, image_size=int(backbone.input.shape[1]))
    except ValueError as err:
        raise FinetuneError(str(err)) from err
    is_table = lambda p: p.endswith("cls_pos_embed/pos_embed")  # init_pos_embed sets it (interpolated)
    learned = next((w.numpy() for w in source.weights if is_table(w.path)), None)  # pos_embed="learned"
    src = {w.path: w for w in source.weights if not is_table(w.path)}
    dst = [w for w in backbone.weights if not is_table(w.path)]
    if sorted(src) != sorted(w.path for w in dst):
        raise FinetuneError(f"The backbone of {path} has weights {sorted(set(src) ^ {w.path for w in dst})[:3]} "
                            f"that the fine-tuning backbone lacks (or the reverse); this is a tf_mocov3 bug.")
    for w in dst:
        value = src[w.path]
        assert tuple(value.shape) == tuple(w.shape), (w.path, value.shape, w.shape)
        w.assign(value)
    init_pos_embed(backbone, path, table=learned)
    return len(dst) + int(learned is not None)


def build_optimizer(config, *, steps_per_epoch, total_steps):
    """The fine-tuning optimizer of a finetune config: optim.build_optimizer, whose decay_exclude=bias_norm_cls also
    spares the trainable pos_embed and whose optim.schedule="per_epoch" is DeiT's schedule."""
    return optim.build_optimizer(config.optim, global_batch=int(config.batch_size), steps_per_epoch=steps_per_epoch,
                                 total_steps=total_steps)


def _make_predict_fn(model, image_size):
    """Images -> predicted class ([B, 1], float32), split over the replicas of the model's strategy."""
    def predicted(logits):
        return tf.cast(tf.argmax(logits, axis=-1), tf.float32)[:, None]

    return features_lib.make_forward(model, image_size, jit_compile=False, strategy=model.distribute_strategy,
                                     postprocess=predicted)


def evaluate_top1(predict_fn, dataset, total=0):
    """Top-1 accuracy in percent of `predict_fn` (_make_predict_fn) over the (images, labels) batches of `dataset`."""
    predictions, labels = features_lib.features_of(predict_fn, dataset, total, progress=False)
    return 100.0 * float(np.sum(predictions[:, 0].astype(np.int64) == labels)) / max(len(labels), 1)


# === Callbacks ===


class ModelEma:
    """timm's ModelEma: ema = decay * ema + (1 - decay) * w after every step, over the trainable weights and the
    float non-trainable ones (BatchNorm statistics), seed-generator states excluded; starts equal to the model.

    `checkpoint_root` is what the trainer saves instead of the model when the EMA is on (the model under "model"
    as before is not possible, so EMA runs have their own checkpoint layout: classifier + ema variables).
    """

    def __init__(self, model, decay):
        self.decay = float(decay)
        self.weights = [w for w in model.weights
                        if "seed_generator" not in w.path and "drop_path_rng" not in w.path
                        and "float" in str(w.dtype)]
        self.values = [tf.Variable(tf.convert_to_tensor(w), trainable=False, name=f"ema_{i}")
                       for i, w in enumerate(self.weights)]
        self.checkpoint_root = tf.Module()
        self.checkpoint_root.classifier = model
        self.checkpoint_root.ema = self.values

        @tf.function
        def update(decay):
            for e, w in zip(self.values, self.weights):
                e.assign(decay * e + (1.0 - decay) * tf.cast(tf.convert_to_tensor(w), e.dtype))

        self._update = update

    def update(self, steps=1):
        """One EMA step per training step; `steps` > 1 (several steps per host call) applies decay ** steps to the
        weights at the end of the call (the intermediate weights are not seen)."""
        self._update(tf.constant(self.decay ** max(int(steps), 1), tf.float32))

    def reset(self):
        """Sets the EMA to the model's current weights (after the pretrained weights are loaded)."""
        for e, w in zip(self.values, self.weights):
            e.assign(tf.convert_to_tensor(w))

    def evaluate_with(self, evaluate):
        """evaluate() with the EMA weights swapped into the model, the model's own restored afterwards."""
        saved = [tf.identity(tf.convert_to_tensor(w)) for w in self.weights]
        for e, w in zip(self.values, self.weights):
            w.assign(tf.convert_to_tensor(e))
        try:
            return evaluate()
        finally:
            for s_, w in zip(saved, self.weights):
                w.assign(s_)


class EmaUpdate(keras.callbacks.Callback):
    """Updates a ModelEma after every training step."""

    def __init__(self, ema):
        super().__init__()
        self.ema = ema
        self.last = 0

    def on_train_begin(self, logs=None):
        self.last = int(self.model.optimizer.iterations.numpy())

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        self.ema.update(step - self.last)
        self.last = step


class Evaluator(keras.callbacks.Callback):
    """Top-1 on the eval split every `every_steps` steps and at the end; logged as `eval_top1` (and the EMA's as
    `eval_top1_ema` when `ema` is given). `best` is the maximum over this process's evaluations. Under several
    steps per host call it evaluates at the end of the call that reaches a multiple of `every_steps`
    (trainer.crossed; `epoch` in the record is then a little past the whole number)."""

    def __init__(self, evaluate, every_steps, total_steps, steps_per_epoch, writer, say, ema=None):
        super().__init__()
        self.evaluate, self.every_steps, self.total_steps = evaluate, max(int(every_steps), 1), total_steps
        self.steps_per_epoch, self.writer, self.say = steps_per_epoch, writer, say
        self.ema = ema
        self.last = None  # (step, top1)
        self.last_ema = None

    def run(self, step):
        top1 = self.evaluate()
        self.last = (step, top1)
        record = {"step": step, "epoch": step / self.steps_per_epoch, "eval_top1": top1}
        line = f"eval step {step} (epoch {step / self.steps_per_epoch:.2f}): top-1 {top1:.2f}%"
        if self.ema is not None:
            self.last_ema = self.ema.evaluate_with(self.evaluate)
            record["eval_top1_ema"] = self.last_ema
            line += f", EMA {self.last_ema:.2f}%"
        self.writer.write(record)
        self.say(line)

    def on_train_begin(self, logs=None):
        self._previous = int(self.model.optimizer.iterations.numpy())

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        reached = trainer_lib.crossed(self._previous, step, self.every_steps)
        self._previous = step
        if reached or step == self.total_steps:
            self.run(step)


# === The run ===


# Options a run cannot change and stay the same run, with what a record written before the option existed ran with
# (such a record resumes with that value): the position-table and EMA variables, the lr schedule, the mixup groups.
_RESUME_OPTIONS = (("model.train_pos_embed", False), ("ema.enabled", False), ("optim.schedule", "per_step"),
                   ("aug.mixup_group", 0))
_PER_EPOCH_OPTIONS = (("optim.warmup_lr_init", 1e-6), ("optim.min_lr", 1e-5))  # read by the per_epoch lr only


def _option(record, key, default):
    for part in key.split("."):
        record = record.get(part) if isinstance(record, dict) else None
    return default if record is None else record


def check_resume_options(workdir, config):
    """Refuses to resume a workdir whose run used another position-embedding mode or EMA setting (their variables
    differ), another lr schedule (optim.schedule; with per_epoch also warmup_lr_init and min_lr; epochs when neither
    run sets max_steps; base_lr may change, as the divergence message advises) or other mixup groups, in one
    sentence that lists every difference and the flags that resume the run as it ran. A record without a key was
    written before it existed: a fixed table, no EMA, the per-step lr, one mixup lambda per global batch (what
    config_lib.finetune_config() still defaults to)."""
    saved = config_lib.read_json(os.path.join(workdir, CONFIG_FILE))
    if saved is None:
        return
    current = config_lib.as_record(config)
    options = list(_RESUME_OPTIONS)
    if _option(saved, "optim.schedule", "per_step") == "per_epoch" == _option(current, "optim.schedule", "per_step"):
        options += _PER_EPOCH_OPTIONS
    if not _option(saved, "max_steps", 0) and not _option(current, "max_steps", 0):  # the length sets the cosine
        options.append(("epochs", _option(current, "epochs", 0)))
    differ = [(key, _option(saved, key, default), _option(current, key, default)) for key, default in options
              if _option(saved, key, default) != _option(current, key, default)]
    if differ:
        shown = lambda value: repr(value) if isinstance(value, str) else str(value)
        was = " and ".join(f"config.{key}={shown(old)}" for key, old, _ in differ)
        now = " and ".join(shown(new) for _, _, new in differ)
        flags = " ".join(f"--config.{key}={old}" for key, old, _ in differ)
        raise FinetuneError(f"--workdir={workdir} holds a fine-tuning run with {was}, not {now}; resume with "
                            f"{flags} or choose a new --workdir.")


def step_intervals(config, steps_per_call):
    """-> ({"log_every_steps", "checkpoint_every_steps"} the run uses, the line that says what changed or None):
    trainer.round_intervals on the fine-tuning keys."""
    return trainer_lib.round_intervals(steps_per_call, log_every_steps=config.log_every_steps,
                                       checkpoint_every_steps=config.checkpoint_every_steps)


class FinetuneTask(loop.Task):
    """Fine-tuning as a loop.Task: the classifier (backbone + head) and its optimizer, the augmented and mixed
    batches, the EMA and the evaluator's callbacks, the resume keys and options, the fine-tuning report."""

    kind = "fine-tuning run"
    config_kind = "finetune"
    resume_keys = _RESUME_KEYS
    resume_error = FinetuneError
    diverged_hint = "lower config.optim.base_lr"

    def __init__(self, config, pretrained_path):
        super().__init__(config)
        self.pretrained_path = pretrained_path
        self.loss = keras.losses.CategoricalCrossentropy(from_logits=True)
        self.ema = self.evaluator = None

    def check(self, workdir):
        self.arch, self.overrides = check_pretrained(self.config, self.pretrained_path)

    def setup(self, strategy, workdir):
        config = self.config
        self.record = config_lib.as_record(config)
        self.record["pretrained"] = config_lib.absolute_path(self.pretrained_path)
        self.train_source = load_split(config.dataset, config.dataset.train_split)
        self.eval_source = load_split(config.dataset, config.dataset.eval_split)
        if self.eval_source.num_classes != self.train_source.num_classes:
            raise FinetuneError(f"The eval split {config.dataset.eval_split} has {self.eval_source.num_classes} "
                                f"classes but the training split {self.train_source.num_classes}; use splits of the "
                                f"same data set.")
        self.steps_per_epoch = self.train_source.num_examples // int(config.batch_size)
        if self.steps_per_epoch == 0:
            raise FinetuneError(f"The training split has {self.train_source.num_examples} examples, fewer than one "
                                f"batch of {config.batch_size}; lower config.batch_size.")
        self.total_steps = trainer_lib.total_steps_of(config, self.steps_per_epoch)
        self.global_batch = config.batch_size
        self.check_sources(strategy, self.train_source, self.eval_source)

    def use_intervals(self, intervals):
        # The evaluation interval (epochs) acts at the end of the call that completes it (Evaluator).
        self.record.update(intervals)  # config.json records what the run used

    def check_resume(self, workdir):
        check_resume_options(workdir, self.config)

    def make_model(self):
        # Its train step also counts the records the input pipeline drops (build_train_dataset's third element).
        return callbacks_lib.count_skipped_records(build_classifier(
            self.config, arch=self.arch, overrides=self.overrides, num_classes=self.train_source.num_classes))

    def make_optimizer(self):
        return build_optimizer(self.config, steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps)

    def checkpoint_part(self, model, trainer):
        if self.config.ema.enabled:
            with self.strategy.scope():
                self.ema = ModelEma(model, self.config.ema.decay)
            return self.ema.checkpoint_root
        return None

    def restored(self, model, trainer, start_step):
        if not start_step:
            count = copy_pretrained_weights(model.get_layer("backbone"), self.pretrained_path)
            if self.ema is not None:
                self.ema.reset()
            trainer.say(f"Loaded {count} pretrained backbone weights of {self.arch} from {self.pretrained_path}.")
        correct_fn = _make_predict_fn(model, int(self.config.image_size))
        eval_ds = build_eval_dataset(self.config, self.eval_source)
        self.evaluator = Evaluator(lambda: evaluate_top1(correct_fn, eval_ds),
                                   self.steps_per_epoch * max(int(self.config.eval.every_epochs), 1),
                                   self.total_steps, self.steps_per_epoch, trainer.metrics, trainer.say,
                                   ema=self.ema)

    def start_line(self, start_step):
        config, train = self.config, self.train_source
        return (f"Fine-tuning {self.arch} on {config.dataset.name} ({train.num_examples} images, "
                f"{train.num_classes} classes) at {config.image_size} px: {self.total_steps} steps "
                f"({self.steps_per_epoch} per epoch), global batch {config.batch_size} on "
                f"{self.strategy.num_replicas_in_sync} replica(s), workdir {self.workdir}.")

    def finished_line(self, start_step):
        return f"Fine-tuning already finished: step {start_step} of {self.total_steps}."

    def dataset(self, start_step):
        # Ends at total_steps, so that several steps per host call stop there.
        return distributed_train_dataset(self.config, self.train_source, self.strategy, start_step, self.total_steps)

    def callbacks(self, model, trainer):
        return [*([EmaUpdate(self.ema)] if self.ema else []), self.evaluator]

    def report(self, model, trainer, start_step, history):
        config, evaluator, ema = self.config, self.evaluator, self.ema
        step = int(model.optimizer.iterations.numpy())
        if evaluator.last is None or evaluator.last[0] != step:
            evaluator.run(step)
        top1 = evaluator.last[1]
        curves = reports.log_curves(trainer.read_log(), ("eval_top1", "eval_top1_ema", "loss"))
        curve = curves.get("eval_top1", [])
        top1_best = max([v for _, v in curve] + [top1])  # every evaluation of the run, before a resume included
        extra = {}
        if ema is not None:
            ema_curve = curves.get("eval_top1_ema", [])
            extra = {"top1_ema": evaluator.last_ema,
                     "top1_ema_best": max([v for _, v in ema_curve] + [evaluator.last_ema])}
        spe = self.steps_per_epoch
        summary = trainer.report(
            name=REPORT_NAME,
            metrics={"finetune": {"top1": top1, "top1_best": top1_best, **extra,
                                  "step": step, "epochs": step / spe,
                                  "dataset": config.dataset.name, "arch": self.arch, "image_size": config.image_size,
                                  "pretrained": config_lib.absolute_path(self.pretrained_path),
                                  "eval_top1_curve": [[s, v] for s, v in curve]}},
            curves={"eval top-1 (%)": curve, "train loss": curves.get("loss", [])},
            table=[{"dataset": config.dataset.name, "arch": self.arch, "image size": config.image_size,
                    "epochs": round(step / spe, 2), "steps": step, "top-1": top1, "best top-1": top1_best,
                    **({"EMA top-1": extra["top1_ema"]} if extra else {})}])
        return {"step": step, "top1": top1, "top1_best": top1_best, "model": model, "curve": curve,
                "summary": summary, **extra}


def run_finetune(config, workdir, pretrained_path, *, strategy=None, tpu="", print_fn=None, extra_callbacks=()):
    """Fine-tunes (or resumes) as `config` says (loop.run of a FinetuneTask); returns {"step", "top1", "top1_best",
    "model", "curve", "summary"} (and "top1_ema", "top1_ema_best" with config.ema.enabled).

    Raises config_lib.ConfigError for a bad config and FinetuneError (one sentence) for a pretrained path or data
    set that cannot be used, both before training starts; TrainingDiverged when the loss stops being finite.
    """
    return loop.run(FinetuneTask(config, pretrained_path), workdir, strategy=strategy, tpu=tpu, print_fn=print_fn,
                    extra_callbacks=extra_callbacks)
