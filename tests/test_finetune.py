"""Transfer fine-tuning end to end on tiny models: weights loaded, other resolution, resume, image folder, errors."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
from PIL import Image
import pytest

from conftest import ROOT
from conftest import checkpoint_tensors
from conftest import needs_fmnist
from finetune_helpers import TINY
from finetune_helpers import build
from finetune_helpers import tiny_config
from finetune_helpers import write_pretrained_dir
import roundoff
from tf_mocov3 import config_lib
from tf_mocov3.data import sources
from tf_mocov3.models import vit
from tf_mocov3.testing.fixtures_data import write_image_folder as _write_folder
from tf_mocov3.training import finetune
from tf_mocov3.weights import pretrained


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory):
    return write_pretrained_dir(tmp_path_factory.mktemp("pre"))


def test_pretrained_weights_are_loaded_at_another_resolution(pretrained_dir):
    source = pretrained.load_backbone(pretrained_dir)  # at 16 px
    config = tiny_config()
    config.image_size = 32
    model = build(config, pretrained_dir)
    backbone = model.get_layer("backbone")
    assert backbone.get_layer("patch_embed").trainable  # fine-tuning trains the patch projection
    assert finetune.copy_pretrained_weights(backbone, pretrained_dir) == len(source.weights)
    want = {w.path: w.numpy() for w in source.weights}
    for w in backbone.weights:
        np.testing.assert_array_equal(w.numpy(), want[w.path], err_msg=w.path)
    # The 32 px model computes what the pretrained backbone computes at 32 px (position embedding recomputed).
    images = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
    at32 = pretrained.load_backbone(pretrained_dir, image_size=32)
    np.testing.assert_allclose(backbone(images, training=False).numpy(), at32(images).numpy(), atol=1e-5)
    assert model(images).shape == (2, 10)


def test_drop_path_is_identity_at_inference():
    keras.utils.set_random_seed(0)
    with_dp = vit.build_backbone("vit_micro", 16, train_patch_embed=True, drop_path_rate=0.5, **TINY)
    without = vit.build_backbone("vit_micro", 16, train_patch_embed=True, **TINY)
    for a, b in zip(without.weights, with_dp.weights):
        a.assign(b)
    images = np.random.default_rng(2).normal(size=(4, 16, 16, 3)).astype(np.float32)
    np.testing.assert_array_equal(with_dp(images, training=False).numpy(), without(images, training=False).numpy())
    assert not np.allclose(with_dp(images, training=True).numpy(), without(images, training=True).numpy())


def test_head_init_is_normal_002_with_zero_bias(pretrained_dir):
    config = tiny_config()
    config.model.drop_path_rate = 0.0
    head = build(config, pretrained_dir).get_layer("head")
    kernel, bias = head.kernel.numpy(), head.bias.numpy()
    assert np.all(bias == 0) and abs(kernel.std() - 0.02) < 0.01


def _weights(workdir):
    return checkpoint_tensors(workdir)  # every tensor: the trained weights live under optimizer/ in Keras 3


@needs_fmnist
def test_resume_gives_the_same_weights_and_report(pretrained_dir, tmp_path):
    config = tiny_config()  # mixup + cutmix + drop-path 0.1 + label smoothing: all randomness exercised
    lines = []
    full = finetune.run_finetune(config, str(tmp_path / "full"), pretrained_dir, print_fn=lines.append)
    assert full["step"] == 4 and any(line.startswith("step 4/4") for line in lines)
    half = tiny_config()  # the same 4-step schedule, interrupted after step 2 by a callback

    class StopAt2(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) >= 2:
                self.model.stop_training = True

    resumed_dir = str(tmp_path / "resumed")
    first = finetune.run_finetune(half, resumed_dir, pretrained_dir, print_fn=lambda _: None,
                                  extra_callbacks=[StopAt2()])
    assert first["step"] == 2
    second = finetune.run_finetune(half, resumed_dir, pretrained_dir, print_fn=lines.append)
    assert second["step"] == 4 and "Resuming from step 2" in " ".join(lines)
    a, b = _weights(str(tmp_path / "full")), _weights(resumed_dir)
    assert a.keys() == b.keys() and any("drop_path_rng" in k for k in a)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    metrics = json.load(open(os.path.join(resumed_dir, "metrics.json")))["finetune"]
    assert metrics["top1"] == second["top1"] == full["top1"] and metrics["step"] == 4
    assert metrics["eval_top1_curve"][-1] == [4, full["top1"]]
    assert os.path.exists(os.path.join(resumed_dir, "finetune.png"))


@pytest.mark.roundoff
@needs_fmnist
def test_two_replicas_fine_tune_as_one(pretrained_dir, tmp_path):
    """On 2 mirrored CPU replicas each replica gets its rows of the global batch from the input pipeline
    (distribute_datasets_from_function) and the weights after 3 steps equal one replica's (mixup, cutmix, label
    smoothing on; drop-path off, its masks are drawn per replica)."""
    from tf_mocov3.training import distribute  # pylint: disable=import-outside-toplevel

    runs, models = {}, {}
    for name, strategy in (("one", None), ("two", distribute.mirrored_strategy(["/cpu:0", "/cpu:1"]))):
        config = tiny_config()
        config.max_steps, config.model.drop_path_rate = 3, 0.0
        result = finetune.run_finetune(config, str(tmp_path / name), pretrained_dir, strategy=strategy,
                                       print_fn=lambda _: None)
        assert result["step"] == 3
        runs[name], models[name] = _weights(str(tmp_path / name)), result["model"]
    assert runs["one"].keys() == runs["two"].keys()
    floats = {key for key in runs["one"] if runs["one"][key].dtype.kind == "f"}
    # 2e-5 as before (3 AdamW steps at eps 1e-8), and the qkv key bias, whose gradient is zero in exact arithmetic,
    # within Adam's bound for the 3 steps' learning rates (tests/roundoff.py).
    model = models["one"]
    roundoff.assert_runs_agree({k: runs["one"][k] for k in floats}, {k: runs["two"][k] for k in floats},
                               roundoff.checkpoint_variables(str(tmp_path / "one" / "checkpoints"), model),
                               model=model, lrs=roundoff.learning_rates(model, 3), what="3 steps, 2 replicas vs 1",
                               atol=2e-5)


def test_image_folder_run_of_two_steps(pretrained_dir, tmp_path):
    folder = str(tmp_path / "images")
    _write_folder(folder)
    config = tiny_config(name="image_folder", path=folder, train_split="train", eval_split="train")
    config.max_steps = 2
    result = finetune.run_finetune(config, str(tmp_path / "ft"), pretrained_dir, print_fn=lambda _: None)
    assert result["step"] == 2 and result["model"].output.shape[-1] == 2
    assert 0.0 <= result["top1"] <= 100.0


def test_errors_before_any_work(pretrained_dir, tmp_path):
    workdir = str(tmp_path / "ft")
    other_arch = tiny_config()
    other_arch.model.arch = "vit_base"
    with pytest.raises(finetune.FinetuneError, match="holds a vit_micro backbone"):
        finetune.run_finetune(other_arch, workdir, pretrained_dir)
    bad_size = tiny_config()
    bad_size.image_size = 18  # patch 4
    with pytest.raises(finetune.FinetuneError, match="not divisible by patch_size"):
        finetune.run_finetune(bad_size, workdir, pretrained_dir)
    empty = tmp_path / "empty_run"
    empty.mkdir()
    (empty / "config.json").write_text(open(os.path.join(pretrained_dir, "config.json")).read())
    with pytest.raises(finetune.FinetuneError, match="holds no checkpoint"):
        finetune.run_finetune(tiny_config(), workdir, str(empty))
    unlabeled = tmp_path / "unlabeled"
    unlabeled.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(unlabeled / "a.png")
    with pytest.raises(finetune.FinetuneError, match="has no labels"):
        finetune.run_finetune(tiny_config(name="image_folder", path=str(unlabeled)), workdir, pretrained_dir)
    one_class = tmp_path / "one_class"
    _write_folder(str(one_class), classes=("cat",))
    with pytest.raises(finetune.FinetuneError, match="at least 2 classes"):
        finetune.run_finetune(tiny_config(name="image_folder", path=str(one_class)), workdir, pretrained_dir)
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))


def test_command_prints_one_error_line_and_exits_1(pretrained_dir, tmp_path):
    config = tmp_path / "cfg.py"
    config.write_text("from tf_mocov3 import config_lib\n"
                      "def get_config():\n"
                      "    c = config_lib.finetune_config()\n"
                      "    c.model.arch = 'vit_base'\n"
                      "    return c\n")
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-m", "tf_mocov3.finetune", f"--config={config}",
                           f"--pretrained={pretrained_dir}", f"--workdir={tmp_path / 'ft'}"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "holds a vit_micro backbone" in errors[0]


TRANSFER = ("cifar10", "cifar100", "flowers102", "pets")


def load_recipe(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"finetune_{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.mark.parametrize("name", TRANSFER + ("fashion_mnist",))
def test_recipe_configs(name):
    c = load_recipe(name)
    config_lib.validate(c, kind="finetune")
    # moco-v3 transfer/README.md: --weight-decay, --drop-path, --mixup, --cutmix, --reprob of each command (Flowers:
    # no random erasing, issue 13: its --reprob 0.25 is never read by the official transfer/datasets.py).
    want = {"cifar10": (0.8, 1.0, 0.1, 0.1, 0.0), "cifar100": (0.5, 1.0, 0.1, 0.1, 0.0),
            "flowers102": (0.0, 0.0, 0.3, 0.1, 0.0), "pets": (0.8, 0.0, 0.1, 0.0, 0.0)}
    if name in want:
        assert (c.aug.mixup_alpha, c.aug.cutmix_alpha, c.optim.weight_decay, c.model.drop_path_rate,
                c.aug.random_erasing) == want[name]
        assert (c.batch_size, c.epochs, c.optim.warmup_epochs, c.image_size) == (1024, 100, 3, 224)
        # DeiT's defaults for the rest: timm's cosine per epoch from --warmup-lr 1e-6 to --min-lr 1e-5, Mixup on
        # each GPU's batch of 128.
        assert (c.optim.schedule, c.optim.warmup_lr_init, c.optim.min_lr) == ("per_epoch", 1e-6, 1e-5)
        assert c.aug.mixup_group == 128
        assert (c.aug.label_smoothing, c.aug.crop_min, c.aug.switch_prob, c.aug.mix_prob) == (0.1, 0.05, 0.5, 1.0)
        assert c.model.train_pos_embed
    if name == "flowers102":
        assert c.dataset.train_split == "train+validation"


def timm_cosine_of_epoch(t, peak, warmup_epochs=3, epochs=100, warmup_lr=1e-6, min_lr=1e-5):
    """timm's CosineLRScheduler(t_initial=epochs, lr_min=min_lr, warmup_lr_init=warmup_lr, warmup_t=warmup_epochs,
    t_in_epochs=True) at epoch t, as DeiT's create_scheduler builds it (warmup_prefix False: the cosine counts from
    epoch 0; one cycle)."""
    if t < warmup_epochs:
        return warmup_lr + t * (peak - warmup_lr) / warmup_epochs
    if t < epochs:
        return min_lr + 0.5 * (peak - min_lr) * (1.0 + math.cos(math.pi * t / epochs))
    return min_lr


def deit_lr_at_step(step, steps_per_epoch, peak):
    """DeiT main.py builds the scheduler (lr = f(0)), trains epoch 0, then calls lr_scheduler.step(epoch) after each
    epoch: epoch e trains at f(max(e - 1, 0))."""
    return timm_cosine_of_epoch(max(step // steps_per_epoch - 1, 0), peak)


@pytest.mark.parametrize("name", TRANSFER)
def test_transfer_lr_is_deits_per_epoch_cosine_at_6e4(name):
    c = load_recipe(name)
    spe = 2  # a tiny epoch; the recipe's 100 epochs of it
    opt = finetune.build_optimizer(c, steps_per_epoch=spe, total_steps=c.epochs * spe)
    lr = opt._learning_rate
    # The absolute lr the optimizer gets: DeiT's --lr 3e-4 x (8 GPUs x 128) / 512.
    assert lr.peak_lr == pytest.approx(3e-4 * 1024 / 512, rel=1e-12)  # float64 products; 6e-4
    peak = 6e-4
    want = {0: 1e-6, 1: 1e-6,            # epoch 0: f(0) = --warmup-lr
            2: 1e-6, 3: 1e-6,            # epoch 1: still f(0), DeiT steps the scheduler after the epoch
            4: 1e-6 + (peak - 1e-6) / 3,  # epoch 2: f(1), a third of the warmup
            7: 1e-6 + 2 * (peak - 1e-6) / 3,  # epoch 3: f(2)
            8: 1e-5 + 0.5 * (peak - 1e-5) * (1 + math.cos(math.pi * 3 / 100)),  # epoch 4: f(3), cosine from epoch 0
            101: 1e-5 + 0.5 * (peak - 1e-5) * (1 + math.cos(math.pi * 49 / 100)),  # epoch 50: f(49)
            199: 1e-5 + 0.5 * (peak - 1e-5) * (1 + math.cos(math.pi * 98 / 100))}  # the last step: f(98)
    for step, value in want.items():
        assert value == pytest.approx(deit_lr_at_step(step, spe, peak), rel=1e-12)  # the table is the formula
        # float32 schedule arithmetic: a few ulps (~1e-7 relative) of terms no larger than the result.
        assert float(lr(step)) == pytest.approx(value, rel=1e-5), (name, step)


def test_flowers_trains_one_step_per_epoch_at_the_per_epoch_lr():
    c = load_recipe("flowers102")
    spe = 2040 // c.batch_size  # train+validation at batch 1024, the remainder dropped (run_finetune, DeiT drop_last)
    assert spe == 1
    opt = finetune.build_optimizer(c, steps_per_epoch=spe, total_steps=c.epochs * spe)
    got = [float(opt._learning_rate(step)) for step in range(5)] + [float(opt._learning_rate(99))]
    # One value per step: f(0), f(0), f(1), f(2), f(3), ..., f(98) (deit_lr_at_step's formula, evaluated by hand).
    want = [1e-6, 1e-6, 2.0066667e-4, 4.0033333e-4, 5.9869078e-4, 1.0582115e-5]
    assert got == pytest.approx(want, rel=1e-5)  # float32 schedule arithmetic; 8 digits written above
    assert want == pytest.approx([deit_lr_at_step(s, 1, 6e-4) for s in (0, 1, 2, 3, 4, 99)], rel=1e-7)


def test_transfer_batch_draws_one_mixup_lambda_per_128_rows():
    c = load_recipe("cifar10")  # mixup 0.8 / cutmix 1.0, label smoothing 0.1, mixup_group 128, batch 1024
    c.image_size = 32  # the crop size only (a 1024 x 224 px batch is 600 MB); the grouping does not depend on it
    n = c.batch_size
    images = np.random.default_rng(0).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    source = sources.Source("unique", "array", n, n, images, np.arange(n))  # every image is its own class
    plain = load_recipe("cifar10")
    plain.image_size, plain.aug.mixup_alpha, plain.aug.cutmix_alpha = 32, 0.0, 0.0
    _, unmixed = next(iter(finetune.build_train_dataset(plain, source)))  # the same rows in the same order, unmixed
    own = np.argmax(unmixed.numpy(), axis=1)
    _, targets = next(iter(finetune.build_train_dataset(c, source)))
    targets = targets.numpy().astype(np.float64)
    off = 0.1 / n  # timm's smoothed one-hot: off = s / C, on = 1 - s + off
    rows = np.arange(n)
    partner = 128 * (rows // 128) + 127 - rows % 128  # timm's Mixup on a 128-image batch mixes it with its flip
    lam = (targets[rows, own] - off) / 0.9
    # Every row is lam * smooth(own) + (1 - lam) * smooth(partner's own), lam shared by its 128-row group; float32
    # targets (values <= 1, a few ulps).
    np.testing.assert_allclose(targets[rows, own[partner]], (1 - lam) * 0.9 + off, atol=1e-6)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-5)
    groups = lam.reshape(n // 128, 128)
    np.testing.assert_allclose(groups, groups[:, :1] * np.ones((1, 128)), atol=1e-6)
    assert len(np.unique(np.round(groups[:, 0], 6))) > 1  # independent lambdas, not one per global batch
    assert np.all(partner != rows) and not np.array_equal(partner, n - 1 - rows)


def test_plus_joins_splits_as_flowers_train_plus_validation(tmp_path):
    _write_folder(str(tmp_path / "train"), per_class=3)
    _write_folder(str(tmp_path / "validation"), per_class=2)
    dataset = tiny_config(name="image_folder", path=str(tmp_path)).dataset
    joined = finetune.load_split(dataset, "train+validation")
    assert joined.num_examples == 10 and joined.num_classes == 2
    assert sorted(joined.labels.tolist()) == [0] * 5 + [1] * 5
