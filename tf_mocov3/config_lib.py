"""Checks of a pre-training config before any work starts, and the shared defaults every recipe builds on.

Each problem is one sentence that names the config key and the fix; `validate` raises ConfigError with all of them.
"""

import json
import os
import tempfile

import ml_collections

OPTIMIZERS = ("adamw", "lamb", "lars")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


class ConfigError(ValueError):
    """A configuration that cannot run; the message says which key to change and how."""


def base_config():
    """The defaults shared by every pre-training recipe (the official ViT-B/16 recipe, batch 4096)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 4096               # global, over all replicas
    c.epochs = 300
    c.max_steps = 0                   # > 0: stop after this many steps (the schedules then span them)
    c.strategy = "auto"               # auto | one_device | mirrored | multi_worker | tpu
    c.num_cpu_devices = 0             # mirrored on a machine without GPUs: split the CPU into this many devices
    c.mixed_precision = "float32"     # float32 | mixed_bfloat16 (TPU) | mixed_float16 (GPU, with loss scaling)
    c.jit_compile = "auto"            # auto (XLA on TPU and one GPU, not on CPU) | true | false
    c.log_every_steps = 50
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3
    # Start from these weights (a workdir, a checkpoint or a tf_mocov3.convert_official directory) instead of a
    # random initialisation: continued pre-training. Ignored when the workdir already has a checkpoint (resume).
    c.pretrained = ""
    # After pre-training, evaluate as the demo does (tf_mocov3/demo_eval.py): kNN and a linear probe of the
    # backbone beside raw-pixel kNN and a randomly initialised backbone. Needs a labelled data set.
    c.demo_eval = False

    c.model = ml_collections.ConfigDict()
    c.model.arch = "vit_base"
    # Backbone overrides passed to vit.build_backbone; None keeps the architecture's value.
    # (typed placeholders, so that --config.model.overrides.depth=6 works on the command line).
    placeholder = ml_collections.config_dict.placeholder
    c.model.overrides = ml_collections.ConfigDict(dict(
        patch_size=placeholder(int), embed_dim=placeholder(int), depth=placeholder(int),
        num_heads=placeholder(int), mlp_ratio=placeholder(float)))
    c.model.train_patch_embed = False  # False: the paper's random, frozen patch projection
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
    # wd_t = weight_decay * lr_t built for you, so both give the same run; tf_mocov3/optim.py says how to convert.
    c.optim.decay_convention = "lr_scaled"
    c.optim.decay_exclude = "none"    # none (official: decay all) | bias_norm_cls

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

    c.dataset = ml_collections.ConfigDict()
    c.dataset.name = "imagenet2012"
    c.dataset.path = ""               # image_folder / fashion_mnist_idx: the directory to read
    c.dataset.data_dir = ""           # TFDS data_dir ("" = TFDS default)
    c.dataset.split = "train"
    c.dataset.image_size = 224
    c.dataset.crop_min = 0.08
    c.dataset.threads = 0             # 0 = tf.data's default thread pool
    c.dataset.jpeg_decode_once = False  # True: decode a JPEG once and crop both views (same pixels, ~10% faster)
    c.dataset.jpeg_dct_scaling = False  # True: decode large crops at 1/2, 1/4, 1/8 JPEG scale (mean diff 1.2/255)
    c.dataset.validate_files = True   # image_folder: check every file's header at start and skip the bad ones
    c.dataset.in_memory = True        # TFDS (not imagenet2012): hold the encoded images in memory, random access
    c.dataset.shuffle_buffer = 10000  # streamed TFDS sources (imagenet2012): per-epoch seeded shuffle buffer
    return c


def _lookup(tree, dotted):
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def check_resume_compatible(workdir, config, keys, *, config_file="config.json", kind="run",
                            error_cls=ConfigError, key_prefix="config."):
    """Raises `error_cls` if WORKDIR/config_file records a run whose `keys` (dotted) differ from `config`'s.

    `config` is a ConfigDict or a plain dict (what the command writes to config_file).
    """
    path = os.path.join(workdir, config_file)
    if not os.path.exists(path):
        return
    with open(path) as f:
        saved = json.load(f)
    current = config if isinstance(config, dict) else json.loads(config.to_json_best_effort())
    for key in keys:
        if _lookup(saved, key) != _lookup(current, key):
            raise error_cls(f"--workdir={workdir} holds a {kind} with {key_prefix}{key}={_lookup(saved, key)!r}, "
                            f"not {_lookup(current, key)!r}; resume with the same config or choose a new --workdir.")


def backbone_overrides(model_config):
    """config.model.overrides without the unset (None) entries: the keyword arguments for vit.build_backbone."""
    return {k: v for k, v in dict(model_config.get("overrides", {}) or {}).items() if v is not None}


def check_workdir(workdir):
    """None when `workdir` can be created and written, else one sentence saying why not."""
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir):
            pass
    except OSError as err:
        return f"--workdir={workdir} is not writable ({err.strerror}); choose a directory you can write to."
    return None


def validate(config, *, num_replicas=1, workdir=None):
    """Raises ConfigError listing every problem of `config` (one sentence each)."""
    from tf_mocov3.data import sources as data  # pylint: disable=import-outside-toplevel
    from tf_mocov3.training import distribute  # pylint: disable=import-outside-toplevel
    from tf_mocov3.models import vit  # pylint: disable=import-outside-toplevel

    problems = []
    if not isinstance(config.batch_size, int) or config.batch_size <= 0:
        problems.append(f"config.batch_size must be a positive integer, got {config.batch_size!r}.")
    elif config.batch_size % num_replicas:
        problems.append(f"config.batch_size={config.batch_size} is not divisible by the {num_replicas} replicas; "
                        f"set --config.batch_size to a multiple of {num_replicas}.")
    if config.max_steps < 0:
        problems.append(f"config.max_steps must be >= 0 (0 trains for config.epochs), got {config.max_steps}.")
    if config.max_steps == 0 and config.epochs <= 0:
        problems.append(f"config.epochs must be positive when config.max_steps is 0, got {config.epochs}.")
    if config.model.arch not in vit.ARCHS:
        problems.append(f"config.model.arch={config.model.arch!r} is unknown; choose one of "
                        f"{', '.join(sorted(vit.ARCHS))}.")
    if config.optim.name not in OPTIMIZERS:
        problems.append(f"config.optim.name={config.optim.name!r} is unknown; choose one of {', '.join(OPTIMIZERS)}.")
    if not config.optim.base_lr > 0:
        problems.append(f"config.optim.base_lr must be positive, got {config.optim.base_lr}; the ViT recipes use 1.5e-4.")
    if config.optim.weight_decay < 0:
        problems.append(f"config.optim.weight_decay must be >= 0, got {config.optim.weight_decay}.")
    if config.optim.warmup_epochs < 0:
        problems.append(f"config.optim.warmup_epochs must be >= 0, got {config.optim.warmup_epochs}.")
    if config.mixed_precision not in PRECISIONS:
        problems.append(f"config.mixed_precision={config.mixed_precision!r} is unknown; choose one of "
                        f"{', '.join(PRECISIONS)}.")
    if config.strategy not in distribute.STRATEGIES:
        problems.append(f"config.strategy={config.strategy!r} is unknown; choose one of "
                        f"{', '.join(distribute.STRATEGIES)}.")
    if config.dataset.name not in data.SOURCE_NAMES:
        problems.append(f"config.dataset.name={config.dataset.name!r} is unknown; choose one of "
                        f"{', '.join(data.SOURCE_NAMES)}.")
    if not 0 < config.model.temperature:
        problems.append(f"config.model.temperature must be positive, got {config.model.temperature}.")
    if not 0 <= config.model.momentum <= 1:
        problems.append(f"config.model.momentum must be in [0, 1], got {config.model.momentum}.")
    if str(config.jit_compile).lower() not in ("auto", "true", "false"):
        problems.append(f"config.jit_compile={config.jit_compile!r} is unknown; use auto, true or false.")
    for key in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
        if config[key] <= 0:
            problems.append(f"config.{key} must be positive, got {config[key]}.")
    if workdir is not None:
        problem = check_workdir(workdir)
        if problem:
            problems.append(problem)
    if problems:
        raise ConfigError(" ".join(problems))
