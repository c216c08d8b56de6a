"""The linear probe: official lr schedule and init, independent sweep heads, frozen backbone, holdout, CLI errors."""

import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT
from conftest import needs_fmnist
from tf_mocov3 import config_lib
from tf_mocov3.data import order
from tf_mocov3.data import pipelines
from tf_mocov3.models import moco
from tf_mocov3.training import linear_probe
from tf_mocov3.training import optim
from tf_mocov3.training import schedules
from tf_mocov3.weights import pretrained


def _load_config(name):
    import importlib.util  # pylint: disable=import-outside-toplevel
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def make_pretrained_dir(path, image_size=16, arch="vit_micro"):
    """A workdir in the pre-training layout (config.json + checkpoints/ckpt-1) of a tiny, untrained MoCo v3."""
    config = _load_config("demo")
    config.model.arch = arch
    config.model.overrides.embed_dim = 32
    config.model.overrides.depth = 2
    config.model.overrides.num_heads = 2
    config.model.mlp_dim = 32
    config.model.moco_dim = 16
    config.dataset.image_size = image_size
    keras.utils.set_random_seed(0)
    model = moco.build_moco(config.model, image_size=image_size, total_steps=1)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    tf.train.Checkpoint(model=model).save(os.path.join(path, "checkpoints", "ckpt"))
    return str(path)


def tiny_probe_config(**changes):
    c = _load_config("linear_fashion_mnist")
    c.epochs = 2
    c.batch_size = 128
    c.eval_batch_size = 256
    c.base_lrs = (0.1, 1.0)
    c.log_every_steps = 1000
    for key, value in changes.items():
        c[key] = value
    return c


def test_per_epoch_cosine_matches_main_lincls():
    init_lr, epochs, spe = 12.0, 90, 7
    schedule = schedules.EpochCosine(spe, epochs)
    for step in [0, 1, 6, 7, 8, 300, 629, 630 - 1]:
        epoch = step // spe  # main_lincls.adjust_learning_rate, called once per epoch
        official = init_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
        assert float(schedule(step)) * init_lr == pytest.approx(official, abs=1e-5)  # float32
    assert float(schedule(0)) == 1.0 and float(schedule(spe - 1)) == 1.0  # constant within an epoch
    assert linear_probe.lr_values([3.0], 1024) == [12.0]  # ViT: base lr 3 -> 12 at batch 1024


def test_linear_init_is_normal_001_with_zero_bias():
    probe = linear_probe.build_probe(384, 100, [0.1, 1.0], steps_per_epoch=1, epochs=1, seed=3)
    kernel, bias = (w.numpy() for w in probe.classifier.weights)
    assert kernel.shape == (384, 200)
    assert abs(kernel.std() - 0.01) < 0.0005 and abs(kernel.mean()) < 0.0005
    assert not bias.any()
    np.testing.assert_array_equal(kernel[:, :100], kernel[:, 100:])  # every head of a sweep starts equal


def test_sweep_heads_train_like_the_head_alone():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(96, 8)).astype(np.float32)
    labels = rng.integers(0, 5, 96)
    lrs = [0.05, 0.5, 5.0]

    def train(head_lrs):
        probe = linear_probe.build_probe(8, 5, head_lrs, steps_per_epoch=3, epochs=4, seed=1)
        ds = pipelines.cached_feature_dataset(features, labels, batch_size=32, seed=0, start_step=0, end_epoch=4)
        probe.fit(ds, epochs=1, steps_per_epoch=12, verbose=0)
        kernel, bias = (w.numpy() for w in probe.classifier.weights)
        return kernel.reshape(8, len(head_lrs), 5), bias.reshape(len(head_lrs), 5)

    kernel, bias = train(lrs)
    for i, lr in enumerate(lrs):
        alone_kernel, alone_bias = train([lr])
        np.testing.assert_allclose(kernel[:, i], alone_kernel[:, 0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(bias[i], alone_bias[0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(kernel[:, 0], kernel[:, 2])  # and the lrs did matter


def test_sgd_is_pytorch_sgd_with_the_lr_outside_the_velocity():
    var = tf.Variable([[1.0, 2.0]])
    opt = optim.SweepSGD(schedules.EpochCosine(1, 2), [0.1, 1.0], momentum=0.9)
    opt.build([var])
    v = np.zeros((1, 2))
    w = np.array([[1.0, 2.0]])
    for step, g in enumerate([np.array([[1.0, -1.0]]), np.array([[0.5, 2.0]])]):
        opt.apply_gradients([(tf.constant(g, tf.float32), var)])
        v = 0.9 * v + g  # torch.optim.SGD
        w = w - np.array([0.1, 1.0]) * 0.5 * (1 + math.cos(math.pi * step / 2)) * v
    np.testing.assert_allclose(var.numpy(), w, rtol=1e-6)


def test_holdout_is_disjoint_and_from_the_training_split():
    train, hold = order.holdout_split(1000, holdout_fraction=0.1, seed=0)
    assert len(hold) == 100 and len(train) == 900 and not set(train) & set(hold)
    assert sorted(set(train) | set(hold)) == list(range(1000))
    _, hold_abs = order.holdout_split(60000, holdout_examples=10000, seed=0)
    assert len(hold_abs) == 10000
    bad = tiny_probe_config()
    bad.dataset.eval_split = "train"
    with pytest.raises(config_lib.ConfigError, match="eval_split"):
        config_lib.validate(bad, kind="probe")
    bad = tiny_probe_config(holdout_fraction=0.0)
    with pytest.raises(config_lib.ConfigError, match="holdout"):
        config_lib.validate(bad, kind="probe")


@needs_fmnist
def test_probe_leaves_the_backbone_bit_identical_and_reports(tmp_path):
    pre = make_pretrained_dir(tmp_path / "pre")
    before = pretrained.load_backbone(pre).get_weights()
    # The official path (augmented images through the frozen backbone), on 640 train images (64 held out).
    config = tiny_probe_config(cache_features=False, epochs=1, batch_size=128, train_examples=640,
                               eval_examples=500)
    probe_dir = str(tmp_path / "probe")
    lines = []
    metrics = linear_probe.run_probe(config, pre, probe_dir, print_fn=lines.append)
    backbone = pretrained.load_backbone(pre)
    # The official sanity check: every backbone weight equal after probing (also those of the probe's copy).
    for a, b in zip(before, backbone.get_weights()):
        np.testing.assert_array_equal(a, b)
    saved = json.loads(open(os.path.join(probe_dir, "metrics.json")).read())
    assert saved["linear_probe_top1"] == metrics["linear_probe_top1"] > 10.0
    rows = saved["linear_probe_table"]
    assert [r["base_lr"] for r in rows] == [0.1, 1.0] and sum(bool(r.get("chosen")) for r in rows) == 1
    chosen = max(rows, key=lambda r: r["holdout_top1"])
    assert chosen.get("chosen") and metrics["linear_probe_top1"] == chosen["test_top1"]
    assert os.path.exists(os.path.join(probe_dir, "linear_probe.png"))
    assert tf.train.latest_checkpoint(os.path.join(probe_dir, "checkpoints")).endswith("ckpt-5")
    # Resume: a finished run does no more steps and reports the same heads.
    again = linear_probe.run_probe(config, pre, probe_dir, print_fn=lines.append)
    assert again["linear_probe_table"] == metrics["linear_probe_table"]


def _cli(tmp_path, *args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "tf_mocov3.linear_probe",
                           f"--config={os.path.join(ROOT, 'configs', 'linear_fashion_mnist.py')}", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@needs_fmnist
def test_errors_are_one_sentence_before_any_work(tmp_path):
    pre = make_pretrained_dir(tmp_path / "pre")
    empty = tmp_path / "empty"
    os.makedirs(empty / "checkpoints")
    (empty / "config.json").write_text(open(os.path.join(pre, "config.json")).read())
    unlabeled = tmp_path / "flat"
    os.makedirs(unlabeled)
    workdir = str(tmp_path / "w")

    # Through the command line: one "error: ..." line on stderr, exit status 1.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-m", "tf_mocov3.linear_probe",
                          f"--config={os.path.join(ROOT, 'configs', 'linear_fashion_mnist.py')}",
                          f"--pretrained={empty}", f"--workdir={workdir}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Pretrained path") and "holds no checkpoint" in last, last

    # The others in-process (the command prints exactly these messages).
    cases = [
        (dict(arch="vit_small"), {}, "holds a vit_micro backbone, not the requested vit_small"),
        (dict(pretrain_image_size=224), {}, "pre-trained at image size 16, not the expected 224"),
        ({}, dict(name="image_folder", path=str(unlabeled)), "holds no images"),
    ]
    for model_changes, data_changes, message in cases:
        config = tiny_probe_config()
        config.model.update(model_changes)
        config.dataset.update(data_changes)
        with pytest.raises(ValueError, match=message) as err:
            linear_probe.run_probe(config, pre, workdir, print_fn=lambda line: None)
        assert "\n" not in str(err.value)  # one line
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))


def test_bn_before_head_off_is_the_plain_linear_layer_and_on_is_maes_affine_free_bn():
    rng = np.random.default_rng(0)
    features = rng.normal(2.0, 3.0, size=(16, 8)).astype(np.float32)
    labels = rng.integers(0, 4, 16)
    plain = linear_probe.build_probe(8, 4, [0.1, 1.0], steps_per_epoch=1, epochs=2, seed=3)
    off = linear_probe.build_probe(8, 4, [0.1, 1.0], steps_per_epoch=1, epochs=2, seed=3, bn_before_head=False)
    assert [v.path for v in off.weights] == [v.path for v in plain.weights] and off.head_norm is None
    assert off.checkpoint_part() is off.classifier  # the checkpoint layout of today's probes
    for probe in (plain, off):
        probe.train_step((tf.constant(features), tf.constant(labels)))
    for a, b in zip(plain.classifier.weights, off.classifier.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())  # off changes nothing
    on = linear_probe.build_probe(8, 4, [0.1], steps_per_epoch=1, epochs=2, seed=3, bn_before_head=True)
    assert not on.head_norm.trainable_weights  # BatchNorm1d(affine=False)
    on.train_step((tf.constant(features), tf.constant(labels)))  # moving statistics: 0.9 * init + 0.1 * batch
    np.testing.assert_allclose(on.head_norm.moving_mean.numpy(), 0.1 * features.mean(0), rtol=1e-4, atol=1e-6)
    normed = (features - features.mean(0)) / np.sqrt(features.var(0) + 1e-6)  # batch statistics in training
    want = on.classifier(tf.constant(normed)).numpy().reshape(16, 1, 4)
    np.testing.assert_allclose(on.head_logits(tf.constant(features), training=True).numpy(), want, atol=1e-4)


def test_official_imagenet_config_is_main_lincls():
    c = _load_config("linear_imagenet_official")
    config_lib.validate(c, kind="probe")
    assert (tuple(c.base_lrs), c.holdout_examples, c.holdout_fraction, c.model.bn_before_head) == ((3.0,), 0, 0.0,
                                                                                                   False)
    assert (c.batch_size, c.epochs, c.momentum, c.dataset.train_split, c.dataset.eval_split) == (
        1024, 90, 0.9, "train", "validation")


@needs_fmnist
@pytest.mark.parametrize("cache_features", [True, False])
def test_two_replicas_train_the_heads_of_one_replica(tmp_path, cache_features):
    """The probe on 2 mirrored CPU replicas (features embedded split over them, each global batch split over them,
    a last partial batch included; on augmented images each replica's rows come from the input pipeline) gives the
    heads and the report of 1 replica."""
    from tf_mocov3.training import distribute  # pylint: disable=import-outside-toplevel

    pre = make_pretrained_dir(tmp_path / "pre")
    config = tiny_probe_config(cache_features=cache_features, epochs=2, batch_size=128, train_examples=700,
                               eval_examples=300)
    runs = {}
    for name, strategy in (("one", None), ("two", distribute.mirrored_strategy(["/cpu:0", "/cpu:1"]))):
        metrics = linear_probe.run_probe(config, pre, str(tmp_path / name), strategy=strategy,
                                         print_fn=lambda line: None)
        reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(tmp_path / name / "checkpoints")))
        kernel = [k for k in reader.get_variable_to_shape_map() if "kernel" in k and "OPTIMIZER" not in k]
        runs[name] = metrics, reader.get_tensor(kernel[0])
    (one, w_one), (two, w_two) = runs["one"], runs["two"]
    assert one["linear_probe_step"] == two["linear_probe_step"] == 10   # ceil((700 - 70) / 128) = 5 per epoch
    np.testing.assert_allclose(w_one, w_two, atol=1e-5)
    for a, b in zip(one["linear_probe_table"], two["linear_probe_table"]):
        assert a["test_top1"] == pytest.approx(b["test_top1"], abs=0.34)   # at most one image of 300 flips
