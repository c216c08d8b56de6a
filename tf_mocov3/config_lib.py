"""Every run's configuration: the defaults of pre-training, fine-tuning and the linear probe, and their checks.

The recipe files in configs/ start from one of the three defaults here (`base_config` for pre-training,
`finetune_config`, `probe_config`; `transfer_config` is the official transfer recipe on top of `finetune_config`)
and change what the recipe changes; the command line overrides any key (`--config.batch_size=1024`).
`validate(config, kind=...)` is the one place that checks a config before any work: each problem is one sentence
that names the key and the fix, and ConfigError carries all of them. `complete(config)` is the one place a missing
key gets its value: it fills a partial config or an old config.json record (a resume check, a --pretrained run)
from these defaults, and what runs recorded before a key existed ran with, so the rest of the code reads keys
directly.

Where this module sits: it reads the names that models/ (architectures) and data/ (data sets) define, and the
training code (optimizers, strategies) reads the names defined here, so imports keep pointing one way. It imports
no TensorFlow itself (models/ and data/ are imported when a check needs them), so configs and `--help` stay fast.
"""

import copy
import json
import os
import re
import uuid

import ml_collections

OPTIMIZERS = ("adamw", "lamb", "lars")
DECAY_CONVENTIONS = ("lr_scaled", "decoupled")
DECAY_EXCLUDE_MODES = ("none", "bias_norm_cls")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")
KINDS = ("pretrain", "finetune", "probe")


class ConfigError(ValueError):
    """A configuration that cannot run; the message says which key to change and how."""


# === Defaults ===


def _run_defaults(c):
    """The keys every training loop shares: seed, batch, length, strategy, precision, logging, checkpoints."""
    c.seed = 0
    c.max_steps = 0                   # > 0: stop after this many steps (the schedules then span them)
    c.strategy = "auto"               # auto | one_device | mirrored | multi_worker | tpu
    c.num_cpu_devices = 0             # mirrored on a machine without GPUs: split the CPU into this many devices
    c.mixed_precision = "float32"     # float32 | mixed_bfloat16 (TPU) | mixed_float16 (GPU, with loss scaling)
    c.jit_compile = "auto"            # auto (XLA on TPU and one GPU, not on CPU) | true | false
    # Steps per host call: "auto" (training/trainer.py: 1 on CPU and GPU, 32 on TPU) or a number; the log,
    # checkpoint and kNN intervals are rounded up to multiples of it (one printed line), epoch intervals act at the
    # end of the call that completes them (trainer.round_intervals, trainer.crossed).
    c.steps_per_execution = "auto"
    c.log_every_steps = 50
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3
    return c


def base_config():
    """The defaults shared by every pre-training recipe (the official ViT-B/16 recipe, batch 4096)."""
    c = _run_defaults(ml_collections.ConfigDict())
    c.batch_size = 4096               # global, over all replicas
    c.epochs = 300
    # Start from these weights (a workdir, a checkpoint or a tf_mocov3.convert_official directory) instead of a
    # random initialisation: continued pre-training. Ignored when the workdir already has a checkpoint (resume).
    c.pretrained = ""
    # After pre-training, evaluate as the demo does (tf_mocov3/evaluation/demo.py): kNN and a linear probe of the
    # backbone beside raw-pixel kNN and a randomly initialised backbone. Needs a labelled data set.
    c.demo_eval = False
    # The framework (paper Table 4, Fig. 6; models/moco.METHODS): mocov3 | simclr (no momentum encoder, no
    # predictor, NT-Xent over the 2N views with tau = model.temperature) | byol (momentum encoder and predictor,
    # BN on hidden head layers only, loss 2 - 2 cos). Same backbones, heads, optimizers, data and commands.
    c.method = "mocov3"

    c.model = ml_collections.ConfigDict()
    c.model.arch = "vit_base"         # models/backbones.py ARCHS: vit_* or resnet50 / resnet_tiny
    # ViT overrides passed to backbones.build_backbone; None keeps the architecture's value (a ResNet takes none).
    # (typed placeholders, so that --config.model.overrides.depth=6 works on the command line).
    placeholder = ml_collections.config_dict.placeholder
    c.model.overrides = ml_collections.ConfigDict(dict(
        patch_size=placeholder(int), embed_dim=placeholder(int), depth=placeholder(int),
        num_heads=placeholder(int), mlp_ratio=placeholder(float),
        # Under mixed precision: False runs the residual stream in bfloat16 / float16 (default True keeps float32).
        float32_residual=placeholder(bool)))
    c.model.train_patch_embed = False  # False: the paper's random, frozen patch projection
    # The paper's ablations (section 6.2; configs/ablation_*.py), ViT only except head_bn and predictor:
    c.model.pos_embed = "sincos"      # Table 5: sincos (fixed) | learned | none
    c.model.pooling = "cls"           # Table 6: cls | gap_ln (no [CLS], final LN, average) | gap (no [CLS], no LN)
    c.model.head_bn = "auto"          # Table 7: auto (the method's: all; BYOL hidden) | all | projector | hidden | none
    c.model.predictor = placeholder(bool)  # Table 8: None = the method's (True; SimCLR False) | True | False
    c.model.moco_dim = 256
    c.model.mlp_dim = 4096
    c.model.temperature = 0.2
    c.model.momentum = 0.99
    c.model.momentum_cosine = True
    c.model.monitor_grad_norms = True

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"
    c.optim.base_lr = 1.5e-4          # lr = base_lr * batch_size / 256
    c.optim.weight_decay = 0.1
    c.optim.warmup_epochs = 40.0      # may be fractional: warmup_steps = warmup_epochs * steps_per_epoch
    c.optim.beta_1 = 0.9
    c.optim.beta_2 = 0.999
    c.optim.epsilon = 1e-8
    # 'lr_scaled': w -= lr_t * wd * w (the paper, PyTorch, JAX).  'decoupled': w -= wd_t * w (TF Addons), with
    # wd_t = weight_decay * lr_t built for you, so both give the same run; training/optim.py says how to convert.
    c.optim.decay_convention = "lr_scaled"
    c.optim.decay_exclude = "none"    # none (official: decay all) | bias_norm_cls
    c.optim.momentum = 0.9            # LARS only (moco/optimizer.py): mu = momentum * mu + d
    c.optim.trust_coefficient = 0.001  # LARS only: eta of the layer-wise trust ratio

    # kNN monitor (paper appendix): weighted kNN top-1 of the backbone's [CLS] features every `every_steps`
    # steps, against a fixed memory bank from a labelled share of the training split; logged as knn_top1.
    c.knn = ml_collections.ConfigDict()
    c.knn.enabled = False
    c.knn.every_steps = 200
    c.knn.k = 200
    c.knn.temperature = 0.07
    c.knn.train_fraction = 0.1        # memory bank: this share of train_split, fixed for the whole run
    c.knn.dataset = ml_collections.ConfigDict(dict(name="", path="", data_dir=""))  # "" = config.dataset
    c.knn.train_split = "train"
    c.knn.eval_split = "validation"   # held-out labelled split ("test" for Fashion-MNIST and CIFAR)
    c.knn.image_size = 0              # 0 = config.dataset.image_size
    c.knn.dip_margin = 5.0            # a fall of this many points below the best so far prints a WARNING
    c.knn.max_eval_examples = 2000    # fixed subset of eval_split (0 = all of it)
    c.knn.batch_size = 256
    # The bank: "images" (the fixed train_fraction above, embedded again at each evaluation) or "queue" (the
    # paper's: the last queue_size training samples' backbone features, filled by the train step, no extra forward
    # pass; queue_size 0 = 10% of the training split; queue_encoder "momentum" or "query").
    c.knn.bank = "images"
    c.knn.queue_size = 0
    c.knn.queue_encoder = "momentum"

    c.dataset = ml_collections.ConfigDict()
    c.dataset.name = "imagenet2012"
    c.dataset.path = ""               # image_folder / fashion_mnist_idx / prepared (prepare_data's DIR): to read
    c.dataset.data_dir = ""           # TFDS data_dir ("" = TFDS default)
    c.dataset.split = "train"
    c.dataset.image_size = 224
    c.dataset.crop_min = 0.08
    c.dataset.threads = 0             # 0 = tf.data's default thread pool
    c.dataset.jpeg_decode_once = True   # decode a JPEG once, crop both views (False: decode_and_crop each view)
    c.dataset.jpeg_dct_scaling = False  # True: decode large crops at 1/2, 1/4, 1/8 JPEG scale (mean diff 1.2/255)
    c.dataset.validate_files = True   # image_folder: check every file's header at start and skip the bad ones
    # TFDS: "auto" holds a TFRecord split under 2 GiB in memory, streams a larger one, and reads an array_record
    # build from disk by random access (bounded memory); "true" / "false" force memory / disk (sources.py).
    c.dataset.in_memory = "auto"
    c.dataset.shuffle_buffer = 10000  # streamed TFDS sources (TFRecord builds too large to hold): shuffle buffer
    c.dataset.cycle_length = 16       # streamed TFDS sources: files read at a time (file-level shuffle, order.py)
    # "grpc://HOST:PORT": a tf.data service dispatcher runs the pre-training input pipeline on its workers
    # (training/pretrain.py); "" = on this host.
    c.dataset.data_service = ""
    return c


def resnet50_config():
    """What the official ResNet-50 recipes share (main_moco.py with --moco-m-cos --crop-min=.2): LARS (momentum 0.9,
    trust 0.001), batch 4096, warmup 10 epochs, tau 1.0, cosine momentum, crop scale (0.2, 1), MoCo_ResNet heads.
    configs/r50_{100,300,1000}ep.py set the epochs, base lr, weight decay and m0."""
    c = base_config()
    c.batch_size = 4096
    c.model.arch = "resnet50"         # torchvision ResNet-50, zero_init_residual, SyncBN
    c.model.moco_dim = 256
    c.model.mlp_dim = 4096
    c.model.temperature = 1.0
    c.model.momentum_cosine = True
    c.optim.name = "lars"
    c.optim.warmup_epochs = 10.0
    c.optim.momentum = 0.9
    c.optim.trust_coefficient = 0.001
    c.dataset.crop_min = 0.2
    return c


def finetune_config():
    """The defaults of every fine-tuning run: the transfer recipe's optimizer and augmentation (ViT-B, DeiT's main.py,
    CIFAR-10's values) with the per-step lr and one mixup lambda per global batch, which any batch size can run.
    `transfer_config()` (the four transfer recipes) and configs/finetune_imagenet_vit_base.py `recipe()` switch to
    DeiT's per-epoch lr and per-GPU-batch lambda; configs/finetune_fashion_mnist.py keeps these defaults."""
    c = _run_defaults(ml_collections.ConfigDict())
    c.batch_size = 1024               # global
    c.epochs = 100
    c.image_size = 224

    c.model = ml_collections.ConfigDict()
    c.model.arch = "vit_base"         # the architecture the pretrained weights must have ("" = any)
    c.model.drop_path_rate = 0.1
    c.model.head_init_std = 0.02
    # True: DeiT's trainable pos_embed, started from the sin-cos table (bicubically interpolated when the grid
    # differs from pre-training) and not decayed. Every configs/finetune_*.py recipe sets True; the default here
    # stays False so that fine-tuning workdirs written before this key resume as they were run.
    c.model.train_pos_embed = False

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"
    c.optim.base_lr = 1.5e-4          # per 256 images = the recipe's 3e-4 per 512
    c.optim.weight_decay = 0.1
    c.optim.warmup_epochs = 3
    c.optim.beta_1 = 0.9
    c.optim.beta_2 = 0.999
    c.optim.epsilon = 1e-8
    c.optim.decay_convention = "lr_scaled"
    c.optim.decay_exclude = "bias_norm_cls"  # timm: no decay on 1-D params, the [CLS] token and pos_embed
    # per_step: warmup from 0 + half-cosine to 0, per step (the MoCo v3 convention). per_epoch: DeiT's timm
    # CosineLRScheduler stepped after each epoch (warmup from warmup_lr_init, cosine to min_lr; schedules.py).
    c.optim.schedule = "per_step"
    c.optim.warmup_lr_init = 1e-6     # per_epoch only (DeiT --warmup-lr)
    c.optim.min_lr = 1e-5             # per_epoch only (DeiT --min-lr)

    c.aug = ml_collections.ConfigDict()
    c.aug.crop_min = 0.05
    c.aug.random_erasing = 0.0
    c.aug.mixup_alpha = 0.8
    c.aug.cutmix_alpha = 1.0
    c.aug.mix_prob = 1.0
    c.aug.switch_prob = 0.5
    c.aug.label_smoothing = 0.1
    c.aug.mixup_group = 0             # rows per mixup lambda: 0 = one per global batch; DeiT: 128 (one per GPU batch)
    c.aug.rand_augment = ""           # "" = none; DeiT ImageNet: "rand-m9-mstd0.5-inc1" (data/randaugment.py)
    c.aug.repeated_aug = 1            # 1 = none; DeiT ImageNet: 3 (RASampler, data/order.py)
    c.aug.interpolation = "bilinear"  # train crop and eval resize: bilinear | bicubic (DeiT ImageNet)

    # Model EMA (timm ModelEma, DeiT --model-ema): an exponential moving average of the weights, updated after
    # every step and evaluated beside the model (logged as eval_top1_ema; DeiT reports the model, not the EMA).
    c.ema = ml_collections.ConfigDict()
    c.ema.enabled = False
    c.ema.decay = 0.99996

    c.dataset = ml_collections.ConfigDict()
    c.dataset.name = "cifar10"
    c.dataset.path = ""
    c.dataset.data_dir = ""
    c.dataset.train_split = "train"   # "a+b" concatenates splits (Flowers: train+validation)
    c.dataset.eval_split = "test"
    c.dataset.in_memory = "auto"      # as in base_config: TFDS TFRecord splits under 2 GiB in memory
    c.dataset.shuffle_buffer = 10000  # streamed TFDS sources (TFRecord builds too large to hold): shuffle buffer
    c.dataset.cycle_length = 16       # streamed TFDS sources: files read at a time (file-level shuffle, order.py)
    c.dataset.validate_files = True
    c.dataset.threads = 0

    c.eval = ml_collections.ConfigDict()
    c.eval.every_epochs = 1
    c.eval.batch_size = 256
    c.eval.max_examples = 0           # 0 = the whole eval split
    c.eval.crop_pct = 0.0             # > 0: resize the shorter side to int(S / crop_pct) (DeiT: 0.875); 0 = S*256/224
    return c


def transfer_config():
    """The official transfer recipe that configs/finetune_{cifar10,cifar100,flowers102,pets}.py share; each sets its
    data set, weight decay, drop-path, mixup and cutmix.

    moco-v3 transfer/README.md runs DeiT's main.py on 8 GPUs with `--batch-size 128 --lr 3e-4 --warmup-epochs 3
    --epochs 100` and DeiT's defaults otherwise: a global batch of 1024; lr 3e-4 * 1024 / 512 (DeiT scales by 512;
    base_lr 1.5e-4 per 256 is the same 6e-4); timm's cosine stepped after each epoch (warmup from --warmup-lr 1e-6,
    floor --min-lr 1e-5); timm's Mixup called on each GPU's batch of 128, so one lambda per 128 images; DeiT's
    trainable pos_embed.
    """
    c = finetune_config()
    c.batch_size = 1024               # 8 GPUs x --batch-size 128
    c.epochs = 100
    c.model.train_pos_embed = True    # DeiT trains pos_embed from the sin-cos start (not decayed)
    c.optim.base_lr = 1.5e-4          # per 256 = DeiT's --lr 3e-4 per 512: 6e-4 at batch 1024
    c.optim.warmup_epochs = 3
    c.optim.schedule = "per_epoch"
    c.optim.warmup_lr_init = 1e-6
    c.optim.min_lr = 1e-5
    c.aug.mixup_group = 128           # DeiT's per-GPU batch
    return c


def probe_config():
    """The official linear probe (main_lincls.py for ViTs) on ImageNet; configs/linear_*.py adapt it."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 1024
    c.eval_batch_size = 256
    c.epochs = 90
    c.base_lrs = (3.0,)               # lr = base_lr * batch_size / 256; several: one head each, side by side
    c.momentum = 0.9
    c.holdout_examples = 0            # > 0: this many training images choose the lr (wins over the fraction)
    c.holdout_fraction = 0.0
    c.train_examples = 0              # > 0: a seeded subset of the training split (quick probes, tests)
    c.eval_examples = 0               # > 0: a seeded subset of the evaluation split (smoke tests only)
    c.cache_features = False          # True: embed once without augmentation (fast, not the official protocol)
    c.strategy = "auto"               # the replicas the heads train on and the features are embedded on
    c.num_cpu_devices = 0             # mirrored on a machine without GPUs: split the CPU into this many devices
    c.jit_compile = "false"
    c.steps_per_execution = "auto"    # as in pre-training; an epoch ends at the end of the call that completes it
    c.log_every_steps = 100
    c.keep_checkpoints = 3

    c.model = ml_collections.ConfigDict()
    c.model.arch = ""                 # "" = any; e.g. "vit_base" refuses weights of another architecture
    c.model.pretrain_image_size = 0   # 0 = any; else refuse weights pre-trained at another size
    # True: BatchNorm without affine parameters (eps 1e-6) on the features before the linear heads (the MAE
    # protocol; the moco-v3 maintainers suggest it to make the lr search easier). False: the official plain layer.
    c.model.bn_before_head = False

    c.dataset = ml_collections.ConfigDict()
    c.dataset.name = "imagenet2012"
    c.dataset.path = ""
    c.dataset.data_dir = ""
    c.dataset.train_split = "train"
    c.dataset.eval_split = "validation"
    c.dataset.image_size = 224        # 0 = the pre-training size
    c.dataset.crop_min = 0.08         # RandomResizedCrop scale (0.08, 1), torchvision's default
    c.dataset.validate_files = True
    c.dataset.in_memory = "auto"      # as in base_config: ImageNet is read from disk (array_record) or streamed
    c.dataset.shuffle_buffer = 10000  # streamed TFDS sources (TFRecord builds too large to hold): shuffle buffer
    c.dataset.cycle_length = 16       # streamed TFDS sources: files read at a time (file-level shuffle, order.py)
    return c


# === Checks ===


def optim_problems(optim_config):
    """The problems of `config.optim` (one sentence each); build_optimizer and validate both use this.

    `optim_config` may lack keys (a test's few): the checks read it completed (complete(..., part="optim")).
    """
    optim = complete(optim_config, "pretrain", part="optim")
    problems = []
    name = str(optim.name).lower()
    if name not in OPTIMIZERS:
        problems.append(f"config.optim.name={name!r} is unknown; choose one of {', '.join(OPTIMIZERS)}.")
    base_lr = float(optim.base_lr)
    if not base_lr > 0:
        problems.append(f"config.optim.base_lr must be positive, got {base_lr}; it is the learning rate for a "
                        f"batch of 256 (the ViT recipes use 1.5e-4).")
    weight_decay = float(optim.weight_decay)
    if weight_decay < 0:
        problems.append(f"config.optim.weight_decay must be >= 0, got {weight_decay}; e.g. 0.1 for ViT AdamW "
                        f"(paper convention).")
    warmup = float(optim.warmup_epochs)
    if warmup < 0:
        problems.append(f"config.optim.warmup_epochs must be >= 0, got {warmup}.")
    convention = str(optim.decay_convention)
    if convention not in DECAY_CONVENTIONS:
        problems.append(f"config.optim.decay_convention={convention!r} is unknown; choose one of "
                        f"{', '.join(DECAY_CONVENTIONS)}.")
    exclude = str(optim.decay_exclude)
    if exclude not in DECAY_EXCLUDE_MODES:
        problems.append(f"config.optim.decay_exclude={exclude!r} is unknown; choose one of "
                        f"{', '.join(DECAY_EXCLUDE_MODES)}.")
    return problems


def check_workdir(workdir):
    """None when `workdir` can be created and written, else one sentence saying why not.

    Through tf.io.gfile, so a gs:// (or ram://) workdir is checked where the run will write: the directory is made
    and a uniquely named empty file is written and removed in it.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    try:
        tf.io.gfile.makedirs(workdir)
        probe = os.path.join(workdir, f".write_check_{uuid.uuid4().hex}")
        with tf.io.gfile.GFile(probe, "w") as f:
            f.write("")
        tf.io.gfile.remove(probe)
    except (OSError, tf.errors.OpError) as err:
        reason = err.message if isinstance(err, tf.errors.OpError) else err.strerror
        return f"--workdir={workdir} is not writable ({reason}); choose a directory you can write to."
    return None


def absolute_path(path):
    """`path` made absolute when it is a local path; a URL (gs://, ram://, ...) is returned as it is.

    os.path.abspath would turn gs://bucket/run into CWD/gs:/bucket/run.
    """
    path = os.fspath(path)
    return path if "://" in path else os.path.abspath(path)


def _steps_per_execution_problems(config):
    value = str(config.steps_per_execution).strip().lower()  # the flag gives a string
    if value == "auto" or (value.isdigit() and int(value) >= 1):
        return []
    return [f"config.steps_per_execution={value!r} must be 'auto' or a positive integer (e.g. 32 on a TPU)."]


def _run_problems(config, num_replicas):
    """Checks of the keys that _run_defaults adds (every loop but the probe, which has fewer keys)."""
    problems = []
    if config.mixed_precision not in PRECISIONS:
        problems.append(f"config.mixed_precision={config.mixed_precision!r} is unknown; choose one of "
                        f"{', '.join(PRECISIONS)}.")
    if config.strategy not in STRATEGIES:
        problems.append(f"config.strategy={config.strategy!r} is unknown; choose one of {', '.join(STRATEGIES)}.")
    if str(config.jit_compile).lower() not in ("auto", "true", "false"):
        problems.append(f"config.jit_compile={config.jit_compile!r} is unknown; use auto, true or false.")
    for key in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
        if config[key] <= 0:
            problems.append(f"config.{key} must be positive, got {config[key]}.")
    if config.max_steps < 0:
        problems.append(f"config.max_steps must be >= 0 (0 trains for config.epochs), got {config.max_steps}.")
    if config.max_steps == 0 and config.epochs <= 0:
        problems.append(f"config.epochs must be positive when config.max_steps is 0, got {config.epochs}.")
    if isinstance(config.batch_size, int) and config.batch_size > 0 and config.batch_size % num_replicas:
        problems.append(f"config.batch_size={config.batch_size} is not divisible by the {num_replicas} replicas; "
                        f"set --config.batch_size to a multiple of {num_replicas}.")
    return problems + optim_problems(config.optim)


def _pretrain_problems(config):
    from tf_mocov3.models import backbones  # pylint: disable=import-outside-toplevel
    from tf_mocov3.models import moco  # pylint: disable=import-outside-toplevel
    from tf_mocov3.models import vit  # pylint: disable=import-outside-toplevel

    problems = []
    service = str(config.dataset.data_service or "")
    if service and not re.fullmatch(r"grpc://[^/:]+:[0-9]+", service):
        problems.append(f"config.dataset.data_service={service!r} is not a tf.data service dispatcher address; "
                        f"give it as grpc://HOST:PORT or leave it empty to read on this host.")
    method = config.method
    if method not in moco.METHODS:
        problems.append(f"config.method={method!r} is unknown; choose one of {', '.join(moco.METHODS)}.")
    model = config.model
    for key, choices in (("pos_embed", vit.POS_EMBEDS), ("pooling", vit.POOLINGS),
                         ("head_bn", ("auto",) + moco.HEAD_BNS)):
        value = model[key]
        if value not in choices:
            problems.append(f"config.model.{key}={value!r} is unknown; choose one of {', '.join(choices)}.")
    if config.model.arch not in backbones.ARCHS:
        problems.append(f"config.model.arch={config.model.arch!r} is unknown; choose one of "
                        f"{', '.join(backbones.ARCHS)}.")
    else:
        problems += backbones.option_problems(
            config.model.arch, train_patch_embed=bool(model.train_patch_embed),
            overrides=dict(model.overrides, pos_embed=model.pos_embed, pooling=model.pooling))
    if not 0 < config.model.temperature:
        problems.append(f"config.model.temperature must be positive, got {config.model.temperature}.")
    if not 0 <= config.model.momentum <= 1:
        problems.append(f"config.model.momentum must be in [0, 1], got {config.model.momentum}.")
    return problems + knn_problems(config)


KNN_BANKS = ("images", "queue")
KNN_QUEUE_ENCODERS = ("momentum", "query")


def knn_problems(config):
    """What stops config.knn.bank / queue_size / queue_encoder from working (one sentence each; [] = fine).

    `config` is a pre-training config; one whose config.knn holds a few keys is read completed (complete()).
    """
    config = complete(config, "pretrain")
    knn = config.knn
    if not knn.enabled:
        return []
    problems = []
    bank, encoder = knn.bank, knn.queue_encoder
    if bank not in KNN_BANKS:
        problems.append(f"config.knn.bank={bank!r} is unknown; choose one of {', '.join(KNN_BANKS)}.")
    if encoder not in KNN_QUEUE_ENCODERS:
        problems.append(f"config.knn.queue_encoder={encoder!r} is unknown; choose one of "
                        f"{', '.join(KNN_QUEUE_ENCODERS)}.")
    if bank != "queue":
        return problems
    other = knn.dataset.name or config.dataset.name
    if other != config.dataset.name:
        problems.append(f"config.knn.bank='queue' fills the bank from the training batches of {config.dataset.name}, "
                        f"so the kNN data set cannot be {other}; leave config.knn.dataset.name empty or use "
                        f"config.knn.bank='images'.")
    size = int(knn.queue_size)
    if size < 0 or 0 < size < int(config.batch_size):
        problems.append(f"config.knn.queue_size={size} must hold at least one global batch ({config.batch_size}); "
                        f"set it to 0 (10% of the training split) or a larger number.")
    return problems


def _finetune_problems(config):
    problems = []
    if not 0.0 <= config.model.drop_path_rate < 1.0:
        problems.append(f"config.model.drop_path_rate must be in [0, 1), got {config.model.drop_path_rate}.")
    for key in ("mixup_alpha", "cutmix_alpha", "label_smoothing", "random_erasing"):
        if config.aug[key] < 0:
            problems.append(f"config.aug.{key} must be >= 0, got {config.aug[key]}.")
    if not 0 < config.aug.crop_min <= 1:
        problems.append(f"config.aug.crop_min must be in (0, 1], got {config.aug.crop_min}.")
    schedule = str(config.optim.schedule)
    if schedule not in ("per_step", "per_epoch"):
        problems.append(f"config.optim.schedule={schedule!r} is unknown; choose per_step or per_epoch (DeiT).")
    aug = config.aug
    if str(aug.interpolation) not in ("bilinear", "bicubic"):
        problems.append(f"config.aug.interpolation={aug.interpolation!r} is unknown; choose bilinear or bicubic.")
    if int(aug.repeated_aug) < 1:
        problems.append(f"config.aug.repeated_aug must be >= 1 (1 = off, DeiT: 3), got {aug.repeated_aug}.")
    group = int(aug.mixup_group)
    if group < 0 or (group and isinstance(config.batch_size, int) and config.batch_size % group):
        problems.append(f"config.aug.mixup_group={group} must be 0 (one lambda per batch) or divide "
                        f"config.batch_size={config.batch_size}; e.g. the per-replica batch.")
    if aug.rand_augment:
        from tf_mocov3.data import randaugment  # pylint: disable=import-outside-toplevel
        try:
            randaugment.RandAugmentSpec(aug.rand_augment)
        except ValueError as err:
            problems.append(str(err))
    if config.ema.enabled and not 0 < float(config.ema.decay) < 1:
        problems.append(f"config.ema.decay must be in (0, 1), got {config.ema.decay}; DeiT uses 0.99996.")
    crop_pct = float(config.eval.crop_pct)
    if not 0 <= crop_pct <= 1:
        problems.append(f"config.eval.crop_pct must be in (0, 1] (or 0 for S*256/224), got {crop_pct}.")
    return problems


def _probe_problems(config, num_replicas):
    problems = []
    if config.strategy not in STRATEGIES:
        problems.append(f"config.strategy={config.strategy!r} is unknown; choose one of {', '.join(STRATEGIES)}.")
    if config.batch_size > 0 and config.batch_size % num_replicas:
        problems.append(f"config.batch_size={config.batch_size} is not divisible by the {num_replicas} replicas; "
                        f"set --config.batch_size to a multiple of {num_replicas}.")
    if not config.base_lrs or any(float(lr) <= 0 for lr in config.base_lrs):
        problems.append(f"config.base_lrs must be a non-empty list of positive rates, got {config.base_lrs!r}.")
    if config.epochs <= 0:
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
    return problems


def validate(config, *, kind="pretrain", num_replicas=1, workdir=None):
    """Raises ConfigError listing every problem of `config` (one sentence each) before any work.

    Args:
      config: a config of `kind` (base_config, finetune_config or probe_config and what a recipe changed).
      kind: "pretrain", "finetune" or "probe".
      num_replicas: the strategy's replicas; the global batch must split evenly over them.
      workdir: when given, it must be creatable and writable.
    """
    from tf_mocov3.data import sources  # pylint: disable=import-outside-toplevel

    if kind not in KINDS:
        raise ValueError(f"validate(kind={kind!r}): kind must be one of {', '.join(KINDS)}.")
    config = complete(config, kind)  # a key the config lacks is checked at its default
    problems = []
    if not isinstance(config.batch_size, int) or config.batch_size <= 0:
        problems.append(f"config.batch_size must be a positive integer, got {config.batch_size!r}.")
    if config.dataset.name not in sources.SOURCE_NAMES:
        problems.append(f"config.dataset.name={config.dataset.name!r} is unknown; choose one of "
                        f"{', '.join(sources.SOURCE_NAMES)}.")
    problems += _steps_per_execution_problems(config)
    if kind == "probe":
        problems += _probe_problems(config, num_replicas)
    else:
        problems += _run_problems(config, num_replicas)
        problems += _pretrain_problems(config) if kind == "pretrain" else _finetune_problems(config)
    if workdir is not None:
        problem = check_workdir(workdir)
        if problem:
            problems.append(problem)
    if problems:
        raise ConfigError(" ".join(problems))


# === Resuming ===


def _lookup(tree, dotted):
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def as_record(config):
    """A config as the plain dict that a run writes to its config file."""
    return config if isinstance(config, dict) else json.loads(config.to_json_best_effort())


# === Completing a config or a record ===

# What a run that recorded no such key ran with, by kind and dotted key: complete() fills these before the defaults,
# so that a default may change without changing what an old workdir resumes as (today each equals its default).
_DEFAULT_WHEN_UNRECORDED = {
    "pretrain": {"method": "mocov3", "model.pos_embed": "sincos", "model.pooling": "cls", "model.head_bn": "auto"},
    "finetune": {"model.train_pos_embed": False},
    "probe": {"model.bn_before_head": False},
}


def defaults(kind="pretrain"):
    """Every key of a `kind` config with its default: base_config(), finetune_config() or probe_config()."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is unknown; choose one of {', '.join(KINDS)}.")
    return {"pretrain": base_config, "finetune": finetune_config, "probe": probe_config}[kind]()


def kind_of(config):
    """The kind of a config or record: "probe" (it has base_lrs), "finetune" (it has aug) or "pretrain"."""
    return "probe" if "base_lrs" in config else "finetune" if "aug" in config else "pretrain"


def complete(config, kind=None, *, part=""):
    """`config` with every key of `kind`'s defaults that it lacks filled in, so that code reads keys directly.

    A new ConfigDict; `config` is left as it is. `config` is a ConfigDict (a recipe, a test's config) or a plain
    dict (a config.json record read back: a resume check, a --pretrained run, the kNN command). A key it lacks
    takes what runs ran with before the key existed (_DEFAULT_WHEN_UNRECORDED), else the default of `kind`; a
    sub-config recorded as None takes the default one; keys the defaults do not have (convert_official's `source`,
    a probe record's `pretrained`) are kept.

    Args:
      config: the config, or the part of one named by `part`.
      kind: "pretrain", "finetune" or "probe"; None: kind_of(config) (with `part`: "pretrain").
      part: "" for a whole config, or the dotted name of the part `config` is ("dataset", "model", "knn").
    """
    kind = kind or ("pretrain" if part else kind_of(config))
    tree = defaults(kind)
    for name in filter(None, part.split(".")):
        tree = tree[name]
    out = ml_collections.ConfigDict(config) if isinstance(config, dict) else copy.deepcopy(config)
    unrecorded = _DEFAULT_WHEN_UNRECORDED[kind]
    with out.unlocked():
        _fill(out, tree, unrecorded, f"{part}." if part else "")
    return out


def _fill(target, default_tree, unrecorded, prefix):
    for key, default in default_tree.items():
        dotted = prefix + key
        if key not in target or (target[key] is None and isinstance(default, ml_collections.ConfigDict)):
            target[key] = unrecorded[dotted] if dotted in unrecorded else copy.deepcopy(default)
        elif isinstance(default, ml_collections.ConfigDict) and isinstance(target[key], ml_collections.ConfigDict):
            _fill(target[key], default, unrecorded, f"{dotted}.")


def read_text(path):
    """The text of the file at `path`, read through tf.io.gfile (a local path, gs:// or ram://); None when absent.

    Absence is the read's NotFoundError, not tf.io.gfile.exists: on ram:// `exists` is true for any prefix of a
    stored path (WORKDIR/metrics.json "exists" once WORKDIR/metrics.jsonl does), and on GCS one read is one request.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    try:
        with tf.io.gfile.GFile(path) as f:
            return f.read()
    except tf.errors.NotFoundError:
        return None


def read_json(path):
    """The JSON file at `path` read through tf.io.gfile (read_text); None when it is absent."""
    text = read_text(path)
    return None if text is None else json.loads(text)


def write_file(path, content):
    """Replaces the file at `path` by `content` (str or bytes) through tf.io.gfile (a local path, gs:// or ram://).

    Written to a uniquely named sibling first, then renamed over `path`: atomic on a local disk; on GCS the rename is
    a copy and a delete, and an object is only ever visible whole, so a reader sees the old or the new file. (On
    TensorFlow's ram:// file system a plain GFile(path, "w") would even append to an existing file: it does not
    truncate.)
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with tf.io.gfile.GFile(tmp, "wb" if isinstance(content, bytes) else "w") as f:
        f.write(content)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def write_json(path, data, **dump_kwargs):
    """Writes `data` as JSON to `path` (write_file: through tf.io.gfile, replacing the file whole)."""
    write_file(path, json.dumps(data, **dump_kwargs))


def check_resume_compatible(workdir, config, keys, *, config_file="config.json", kind="run",
                            error_cls=ConfigError, key_prefix="config."):
    """Raises `error_cls` if WORKDIR/config_file records a run whose `keys` (dotted) differ from `config`'s.

    `config` is a ConfigDict or a plain dict (what the command writes to config_file). The file is read through
    tf.io.gfile, so a gs:// workdir is checked against the config it really records.
    """
    saved = read_json(os.path.join(workdir, config_file))
    if saved is None:
        return
    current = as_record(config)
    saved = as_record(complete(saved, kind_of(current)))  # a record from before a key existed: what it ran with
    for key in keys:
        was = _lookup(saved, key)
        if was != _lookup(current, key):
            raise error_cls(f"--workdir={workdir} holds a {kind} with {key_prefix}{key}={was!r}, "
                            f"not {_lookup(current, key)!r}; resume with the same config or choose a new --workdir.")
