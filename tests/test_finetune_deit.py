"""Fine-tuning as the paper ran it (DeiT's main.py): trainable position embedding, its interpolation and decay,
per-epoch lr, ImageNet recipe configs (two steps on a TFDS imagenet2012 fixture), top1 / top1_best, model EMA."""

import importlib.util
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT
from finetune_helpers import TINY
from finetune_helpers import build
from finetune_helpers import tiny_config
from finetune_helpers import write_pretrained_dir
from tf_mocov3 import config_lib
from tf_mocov3.data import pipelines
from tf_mocov3.models import moco
from tf_mocov3.models import vit
from tf_mocov3.testing.fixtures_data import build_tfds_imagenet
from tf_mocov3.testing.fixtures_data import photo_like
from tf_mocov3.training import finetune
from tf_mocov3.training import schedules


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory):
    return write_pretrained_dir(tmp_path_factory.mktemp("pre"))


def load_config(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


# === Position embedding ===


def _pos_grad(backbone):
    images = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(backbone(images, training=True)))
    return tape, loss


def test_pos_embed_is_trained_in_fine_tuning_and_a_constant_in_pre_training():
    keras.utils.set_random_seed(0)
    ft = vit.build_backbone("vit_micro", 16, train_patch_embed=True, train_pos_embed=True, **TINY)
    layer = ft.get_layer("cls_pos_embed")
    np.testing.assert_array_equal(layer.pos_embed.numpy(), vit.sincos_2d_position_embedding(4, 4, 32))
    tape, loss = _pos_grad(ft)
    grad = tape.gradient(loss, layer.pos_embed)
    assert float(tf.norm(grad)) > 0  # fine-tuning: the table gets a gradient
    # Pre-training: no such variable; the table is a constant, its gradient w.r.t. every variable path is none.
    c = config_lib.base_config()
    c.model.arch = "vit_micro"
    c.model.overrides.embed_dim, c.model.overrides.depth, c.model.overrides.num_heads = 32, 2, 2
    c.model.moco_dim, c.model.mlp_dim = 16, 32
    pre = moco.build_moco(c.model, image_size=16, total_steps=5)
    assert not [v.path for v in pre.weights if v.path.endswith("/pos_embed")]  # nothing to train or decay
    plain = vit.build_backbone("vit_micro", 16, **TINY)
    assert [w.path for w in plain.weights] == [w.path for w in ft.weights if not w.path.endswith("/pos_embed")]
    assert "train_pos_embed" not in plain.get_layer("cls_pos_embed").get_config()  # old configs unchanged
    # Same weights, same table: the trainable layer computes what the constant one does.
    for a, b in zip(plain.weights, [w for w in ft.weights if not w.path.endswith("/pos_embed")]):
        a.assign(b)
    images = np.random.default_rng(1).normal(size=(2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_array_equal(plain(images).numpy(), ft(images).numpy())


def test_bicubic_interpolation_is_pytorchs_a_075():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    grid = rng.normal(size=(4, 4, 6))
    for new in (7, 8, 3):
        want = torch.nn.functional.interpolate(torch.tensor(grid.transpose(2, 0, 1)[None]), size=(new, new),
                                               mode="bicubic", align_corners=False)[0].numpy().transpose(1, 2, 0)
        np.testing.assert_allclose(finetune.bicubic_resize(grid, new, new), want, atol=1e-10)
    # tf.image.resize's bicubic (Keys a = -0.5) is another kernel: it differs.
    tf_bicubic = tf.image.resize(grid[None], (8, 8), method="bicubic").numpy()[0]
    assert np.abs(tf_bicubic - finetune.bicubic_resize(grid, 8, 8)).max() > 1e-3


def test_fine_tuning_at_another_size_starts_from_the_interpolated_table(pretrained_dir):
    config = tiny_config()
    config.image_size = 32  # pre-trained at 16 px: grid 4 -> 8
    config.model.train_pos_embed = True
    model = build(config, pretrained_dir)
    backbone = model.get_layer("backbone")
    finetune.copy_pretrained_weights(backbone, pretrained_dir)
    table = vit.sincos_2d_position_embedding(4, 4, 32)
    want = finetune.interpolate_pos_embed(table, (4, 4), (8, 8))
    np.testing.assert_allclose(backbone.get_layer("cls_pos_embed").pos_embed.numpy(), want, atol=1e-7)
    np.testing.assert_array_equal(want[0, 0], np.zeros(32))  # the [CLS] slot is kept
    assert not np.allclose(want, vit.sincos_2d_position_embedding(8, 8, 32), atol=1e-3)  # DeiT's, not recomputed


def test_pos_embed_and_cls_token_are_not_decayed(pretrained_dir):
    config = tiny_config()
    config.model.train_pos_embed = True
    config.optim.weight_decay = 0.5
    model = build(config, pretrained_dir)
    opt = finetune.build_optimizer(config, steps_per_epoch=2, total_steps=4)
    opt.build(model.trainable_variables)
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    opt.apply_gradients([(tf.zeros_like(v), v) for v in model.trainable_variables])  # only decay can move them
    moved = {v.path for v in model.trainable_variables if not np.array_equal(v.numpy(), before[v.path])}
    assert not any(p.endswith("pos_embed") or p.endswith("cls_token") for p in moved)
    assert any(p.endswith("qkv/kernel") for p in moved)  # a matrix is decayed
    pos = next(v for v in model.trainable_variables if v.path.endswith("pos_embed"))
    assert opt._decay_flags[opt._get_variable_index(pos)] is False


def test_per_epoch_schedule_is_what_the_optimizer_uses(pretrained_dir):
    config = tiny_config()
    config.optim.schedule, config.optim.warmup_epochs = "per_epoch", 1
    opt = finetune.build_optimizer(config, steps_per_epoch=3, total_steps=12)
    assert isinstance(opt._learning_rate, schedules.EpochWarmupCosine)
    peak = config.optim.base_lr * config.batch_size / 256
    assert [float(opt._learning_rate(s)) for s in (0, 3, 6)] == pytest.approx(
        [1e-6, 1e-6, 1e-5 + 0.5 * (peak - 1e-5) * (1 + np.cos(np.pi * 1 / 4))], rel=1e-5)


def test_resuming_with_another_pos_embed_mode_is_refused(tmp_path):
    workdir = tmp_path / "ft"
    workdir.mkdir()
    (workdir / finetune.CONFIG_FILE).write_text(json.dumps({"model": {"arch": "vit_micro"}}))  # an old record
    config = tiny_config()
    finetune.check_resume_options(str(workdir), config)  # old runs: fixed table, resumed as they were
    config.model.train_pos_embed = True
    with pytest.raises(finetune.FinetuneError, match="train_pos_embed=False"):
        finetune.check_resume_options(str(workdir), config)


def test_resuming_a_transfer_run_with_another_schedule_or_mixup_grouping_is_refused(tmp_path):
    workdir = tmp_path / "ft"
    workdir.mkdir()
    ran = load_config("finetune_cifar10")
    ran.optim.schedule, ran.aug.mixup_group = "per_step", 0  # what the CIFAR-10 recipe recorded before issue 22
    (workdir / finetune.CONFIG_FILE).write_text(json.dumps(config_lib.as_record(ran)))
    with pytest.raises(finetune.FinetuneError) as refused:
        finetune.check_resume_options(str(workdir), load_config("finetune_cifar10"))
    assert str(refused.value) == (
        f"--workdir={workdir} holds a fine-tuning run with config.optim.schedule='per_step' and "
        f"config.aug.mixup_group=0, not 'per_epoch' and 128; resume with --config.optim.schedule=per_step "
        f"--config.aug.mixup_group=0 or choose a new --workdir.")
    finetune.check_resume_options(str(workdir), ran)  # the flags of the sentence: resumes
    # Both per_epoch: its start and floor are part of the schedule too.
    (workdir / finetune.CONFIG_FILE).write_text(json.dumps(config_lib.as_record(load_config("finetune_cifar10"))))
    other = load_config("finetune_cifar10")
    other.optim.min_lr = 2e-5
    with pytest.raises(finetune.FinetuneError, match=r"config.optim.min_lr=1e-05, not 2e-05; resume with "
                                                     r"--config.optim.min_lr=1e-05 or"):
        finetune.check_resume_options(str(workdir), other)
    other.optim.min_lr, other.optim.base_lr = 1e-5, 1e-4  # base_lr may change (the divergence hint lowers it)
    finetune.check_resume_options(str(workdir), other)


def test_resuming_the_150_epoch_vit_s_fine_tuning_with_the_300_epoch_recipe_is_refused(tmp_path):
    workdir = tmp_path / "ft"
    workdir.mkdir()
    ran = load_config("finetune_imagenet_vit_small")
    ran.epochs = 150  # the recipe before issue 22
    (workdir / finetune.CONFIG_FILE).write_text(json.dumps(config_lib.as_record(ran)))
    with pytest.raises(finetune.FinetuneError, match=r"with config.epochs=150, not 300; resume with "
                                                     r"--config.epochs=150 or choose a new --workdir\."):
        finetune.check_resume_options(str(workdir), load_config("finetune_imagenet_vit_small"))
    finetune.check_resume_options(str(workdir), ran)
    both = load_config("finetune_imagenet_vit_small")
    both.max_steps = ran.max_steps = 20  # a run of max_steps: epochs do not set its length, so they are not compared
    (workdir / finetune.CONFIG_FILE).write_text(json.dumps(config_lib.as_record(ran)))
    finetune.check_resume_options(str(workdir), both)


# === Recipes ===


def test_flowers_has_no_random_erasing_and_every_recipe_trains_pos_embed():
    assert load_config("finetune_flowers102").aug.random_erasing == 0.0  # transfer/datasets.py never reads reprob
    for name in ("cifar10", "cifar100", "flowers102", "pets", "fashion_mnist", "imagenet_vit_small",
                 "imagenet_vit_base", "imagenet_vit_large"):
        assert load_config(f"finetune_{name}").model.train_pos_embed, name


def test_imagenet_recipes_are_deits_defaults():
    c = load_config("finetune_imagenet_vit_base")
    config_lib.validate(c, kind="finetune")
    assert (c.model.arch, c.epochs, c.model.drop_path_rate) == ("vit_base", 150, 0.1)
    assert c.optim.base_lr * c.batch_size / 256 == pytest.approx(5e-4 * c.batch_size / 512)
    assert (c.optim.weight_decay, c.optim.warmup_epochs, c.optim.warmup_lr_init, c.optim.min_lr) == (
        0.05, 5, 1e-6, 1e-5)
    assert (c.optim.schedule, c.optim.epsilon, c.optim.decay_exclude) == ("per_epoch", 1e-8, "bias_norm_cls")
    assert (c.aug.label_smoothing, c.aug.mixup_alpha, c.aug.cutmix_alpha, c.aug.mix_prob, c.aug.switch_prob) == (
        0.1, 0.8, 1.0, 1.0, 0.5)
    assert (c.aug.rand_augment, c.aug.random_erasing, c.aug.repeated_aug, c.aug.interpolation) == (
        "rand-m9-mstd0.5-inc1", 0.25, 3, "bicubic")
    assert (c.aug.mixup_group, c.aug.crop_min, c.eval.crop_pct, c.ema.decay) == (128, 0.08, 0.875, 0.99996)
    assert (c.batch_size, c.image_size, c.dataset.name) == (1024, 224, "imagenet2012")
    large = load_config("finetune_imagenet_vit_large")
    assert (large.model.arch, large.epochs, large.model.drop_path_rate) == ("vit_large", 100, 0.5)
    small = load_config("finetune_imagenet_vit_small")
    # moco-v3 README: "using all the default DeiT configs", 150 epochs named for ViT-B only: DeiT's --epochs 300.
    assert (small.model.arch, small.epochs, small.model.drop_path_rate) == ("vit_small", 300, 0.1)


def test_bicubic_eval_is_pils_resize_256_crop_224():
    from PIL import Image

    image = photo_like(300, seed=2)[:, :280]
    got = pipelines.eval_preprocess_bicubic(tf.constant(image), 224, resize=256).numpy()
    pil = Image.fromarray(image).resize((256, int(256 * 300 / 280)), Image.BICUBIC)
    top = int(round((pil.size[1] - 224) / 2.0))
    left = int(round((256 - 224) / 2.0))
    want = np.asarray(pil, np.float32)[top:top + 224, left:left + 224] / 255.0
    want = (want - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    assert np.abs(got - want).mean() < 0.01


@pytest.fixture(scope="module")
def imagenet_dir(tmp_path_factory):  # built as array_record: the recipe reads it by index (sources.py)
    return build_tfds_imagenet(tmp_path_factory.mktemp("tfds"), file_format="array_record")


def test_imagenet_recipe_runs_two_steps_on_a_tfds_imagenet2012_fixture(pretrained_dir, imagenet_dir,  # noqa: F811
                                                                      tmp_path):
    config = load_config("finetune_imagenet_vit_base")  # the recipe as is, scaled to a tiny model and batch
    config.model.arch = "vit_micro"
    config.image_size = 32  # pre-trained at 16 px: the trainable table starts interpolated
    config.batch_size, config.max_steps, config.aug.mixup_group = 8, 2, 4
    config.strategy, config.jit_compile = "one_device", "false"
    config.log_every_steps, config.checkpoint_every_steps = 1, 2
    config.eval.max_examples, config.eval.batch_size = 4, 4
    config.ema.enabled = True
    config.dataset.data_dir, config.dataset.shuffle_buffer = imagenet_dir, 16
    lines = []
    result = finetune.run_finetune(config, str(tmp_path / "ft"), pretrained_dir, print_fn=lines.append)
    assert result["step"] == 2 and result["model"].output.shape[-1] == 1000
    metrics = json.load(open(tmp_path / "ft" / "metrics.json"))["finetune"]
    assert metrics["top1_best"] == max(v for _, v in metrics["eval_top1_curve"]) >= metrics["top1"]
    assert "top1_ema" in metrics and any("EMA" in line for line in lines)
    assert any("best top-1" in line for line in lines)  # the printed table shows both


def test_top1_best_is_the_maximum_over_evaluations(pretrained_dir, tmp_path):  # noqa: F811
    from tf_mocov3.testing.fixtures_data import write_image_folder

    folder = str(tmp_path / "images")
    write_image_folder(folder)  # 2 classes x 3 images: 3 steps of 2 per epoch, an evaluation after each epoch
    config = tiny_config(name="image_folder", path=folder, train_split="train", eval_split="train")
    config.batch_size, config.max_steps, config.eval.max_examples = 2, 9, 6
    config.log_every_steps, config.checkpoint_every_steps = 1, 3
    config.optim.base_lr = 1e-2
    lines = []
    result = finetune.run_finetune(config, str(tmp_path / "ft"), pretrained_dir, print_fn=lines.append)
    metrics = json.load(open(tmp_path / "ft" / "metrics.json"))["finetune"]
    values = [v for _, v in metrics["eval_top1_curve"]]
    assert len(values) == 3 and [s for s, _ in metrics["eval_top1_curve"]] == [3, 6, 9]
    assert metrics["top1"] == values[-1] == result["top1"]
    assert metrics["top1_best"] == max(values) == result["top1_best"]
