"""The pre-training command end to end on real Fashion-MNIST: resume, NaN stop, config errors, workers."""

import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import FMNIST
from conftest import ROOT
from conftest import StopAt
from conftest import checkpoint_tensors
from conftest import needs_fmnist
import roundoff
from tf_mocov3 import config_lib
from tf_mocov3.data import augment
from tf_mocov3.data import pipelines
from tf_mocov3.data import prepare
from tf_mocov3.data import sources
from tf_mocov3.models import moco
from tf_mocov3.testing.fixtures_data import save_image
from tf_mocov3.training import optim
from tf_mocov3.training import pretrain as training
from tf_mocov3.training import trainer


def weights_of(workdir):
    return checkpoint_tensors(workdir)  # every tensor: the trained weights live under optimizer/ in Keras 3


def _is_weight(key):
    """Model weights (non-trainable under model/, trainable under optimizer/_trainable_variables/); the rest of
    optimizer/ holds its slots (Adam's moments) and step."""
    return key.startswith(("model/", "optimizer/_trainable_variables/"))


def assert_same_weights(a, b, atol=0.0, slots_rtol=0.0):
    """Every tensor equal: weights to `atol`; optimizer slots to `slots_rtol` relative (when given), as Adam's moments
    of large gradients carry the all-reduce's float round-off at their own scale."""
    assert a.keys() == b.keys()
    for key in a:
        if _is_weight(key) or not slots_rtol:
            np.testing.assert_allclose(a[key], b[key], atol=atol, rtol=0, err_msg=key)
        else:
            np.testing.assert_allclose(a[key], b[key], atol=atol, rtol=slots_rtol, err_msg=key)


@needs_fmnist
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, tiny_config):
    config, _ = tiny_config(tmp_path)
    straight = str(tmp_path / "straight")
    out = training.run_pretraining(config, straight, print_fn=lambda s: None)
    assert out["step"] == 4

    resumed = str(tmp_path / "resumed")
    first = training.run_pretraining(config, resumed, extra_callbacks=[StopAt(2)], print_fn=lambda s: None)
    assert first["step"] == 2
    assert os.path.basename(tf.train.latest_checkpoint(os.path.join(resumed, "checkpoints"))) == "ckpt-2"
    lines = []
    second = training.run_pretraining(config, resumed, print_fn=lines.append)
    assert second["step"] == 4
    assert any("Resuming from step 2" in line for line in lines)
    assert_same_weights(weights_of(straight), weights_of(resumed))

    records = [json.loads(line) for line in open(os.path.join(resumed, "metrics.jsonl"))]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for key in ("loss", "lr", "momentum", "grad_norm_first_block", "grad_norm_last_block"):
        assert all(np.isfinite(r[key]) for r in records), key
    assert os.listdir(os.path.join(resumed, "tensorboard"))
    # The closing report: metrics.json with the last logged values, and a PNG of the curves.
    summary = json.load(open(os.path.join(resumed, "metrics.json")))["pretrain"]
    assert summary["step"] == 4 and summary["loss"] == pytest.approx(records[-1]["loss"])
    assert os.path.getsize(os.path.join(resumed, "pretrain.png")) > 0


@needs_fmnist
def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, tiny_config):
    config, _ = tiny_config(tmp_path)
    config.checkpoint_every_steps = 1
    real = pipelines.build_pretrain_dataset

    def poisoned(cfg, **kwargs):
        ds = real(cfg, **kwargs)
        # From the third batch on, the images are NaN (normalised floats: uint8 has no NaN).
        return ds.enumerate().map(lambda i, b: {**b, "views": tuple(
            tf.where(i >= 2, np.nan, augment.normalize_uint8(x)) for x in b["views"])})

    monkeypatch.setattr(pipelines, "build_pretrain_dataset", poisoned)
    workdir = str(tmp_path / "nan")
    with pytest.raises(trainer.TrainingDiverged, match="at step 3"):
        training.run_pretraining(config, workdir, print_fn=lambda s: None)
    assert os.path.basename(tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))) == "ckpt-2"


@pytest.mark.parametrize("key,value,message", [
    ("batch_size", 7, "config.batch_size=7 is not divisible by the 2 replicas"),
    ("model.arch", "vit_gigantic", "config.model.arch='vit_gigantic' is unknown; choose one of"),
    ("optim.name", "sgd", "config.optim.name='sgd' is unknown; choose one of adamw, lamb, lars"),
    ("dataset.name", "mnist_typo", "config.dataset.name='mnist_typo' is unknown"),
    ("optim.base_lr", -1.0, "config.optim.base_lr must be positive, got -1.0"),
])
def test_bad_config_is_one_clear_sentence(tmp_path, key, value, message, tiny_config):
    config, _ = tiny_config(tmp_path)
    section, _, leaf = key.rpartition(".")
    target = config[section] if section else config
    target[leaf] = value
    with pytest.raises(config_lib.ConfigError) as err:
        config_lib.validate(config, num_replicas=2, workdir=str(tmp_path / "w"))
    assert message in str(err.value)


def test_unwritable_workdir_is_reported(tmp_path, tiny_config):
    config, _ = tiny_config(tmp_path)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(config_lib.ConfigError, match="is not writable"):
        config_lib.validate(config, workdir=str(blocker / "sub"))


def test_cli_exits_non_zero_with_the_message_before_training(tmp_path, tiny_config):
    _, path = tiny_config(tmp_path)
    workdir = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "tf_mocov3.train", f"--config={path}", f"--workdir={workdir}",
         "--config.optim.base_lr=-0.5"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "config.optim.base_lr must be positive, got -0.5" in proc.stderr
    assert not (workdir / "checkpoints").exists()


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@needs_fmnist
def test_two_workers_on_localhost_match_one_process(tmp_path, tiny_config):
    """On a prepared (array_record) set of 48 Fashion-MNIST images: each worker reads only its own rows by index
    (tests/test_prepared_data.py checks that the shares are disjoint and make the epoch), and the weights equal one
    process's."""
    _, path = tiny_config(tmp_path)
    images, labels = sources.load_fashion_mnist_idx(FMNIST, "train")
    for i in range(48):
        os.makedirs(tmp_path / "images" / f"c{labels[i]}", exist_ok=True)
        save_image(str(tmp_path / "images" / f"c{labels[i]}" / f"{i}.png"), images[i, ..., 0], mode="L")
    prepared = str(tmp_path / "prepared")
    prepare.prepare(str(tmp_path / "images"), prepared, examples_per_shard=5, workers=1, progress=False)
    steps = ["--config.max_steps=2", "--config.checkpoint_every_steps=2", "--config.dataset.name=prepared",
             f"--config.dataset.path={prepared}"]
    single = tmp_path / "single"
    proc = subprocess.run([sys.executable, "-m", "tf_mocov3.train", f"--config={path}", f"--workdir={single}",
                           "--strategy=one_device"] + steps, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    multi = tmp_path / "multi"
    procs = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tf_mocov3.train", f"--config={path}", f"--workdir={multi}",
             "--strategy=multi_worker"] + steps,
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    assert "2 replica(s)" in outputs[0][0] and "on prepared" in outputs[0][0]
    one, two = weights_of(str(single)), weights_of(str(multi))
    # Weights whose gradient is zero by construction carry only round-off, which Adam scales to steps of up to +-lr
    # (the qkv key bias; the final norm's beta before the projector's BN): they are held to Adam's bound for the two
    # steps' learning rates, the rest to 1e-5, and Adam's moments to 1e-3 of their size (tests/roundoff.py).
    config, _ = tiny_config(tmp_path)
    config.dataset.name, config.dataset.path = "prepared", prepared  # as the runs: their steps per epoch, their lr
    model = moco.build_moco(config.model, image_size=config.dataset.image_size, total_steps=2)
    model.compile(optimizer=optim.build_optimizer(
        config.optim, global_batch=config.batch_size, steps_per_epoch=sources.steps_per_epoch(config), total_steps=2))
    variables = roundoff.checkpoint_variables(os.path.join(str(single), "checkpoints"), model)
    roundoff.assert_runs_agree(one, two, variables, model=model, lrs=roundoff.learning_rates(model, 2),
                               what="2 steps, 2 workers vs 1 process", slots_rtol=1e-3)
    assert not [d for d in os.listdir(multi) if d.startswith(".scratch")]


class WeightsAtStart(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.weights = {v.path: v.numpy().copy() for v in self.model.backbone.weights + self.model.predictor.weights}


@needs_fmnist
def test_continued_pre_training_starts_from_the_pretrained_weights(tmp_path, tiny_config, pretrained_run):
    config, _ = tiny_config(tmp_path)
    config.max_steps = 2
    source, _, result = pretrained_run  # the session's tiny run of the same config (4 steps), read-only
    trained = result["model"]
    expected = {v.path: v.numpy() for v in trained.backbone.weights + trained.predictor.weights}

    config.seed = 1  # a different random initialisation, which the pretrained weights must replace
    config.pretrained = source
    probe = WeightsAtStart()
    lines = []
    training.run_pretraining(config, str(tmp_path / "continued"), extra_callbacks=[probe], print_fn=lines.append)
    assert any("Starting from the weights of" in line for line in lines)
    assert probe.weights.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_array_equal(probe.weights[key], value, err_msg=key)


def test_jit_compile_auto_is_xla_on_tpu_and_gpu_only():
    config = config_lib.base_config()
    one_device = tf.distribute.OneDeviceStrategy("/cpu:0")
    has_gpu = bool(tf.config.list_logical_devices("GPU"))
    assert trainer.resolve_jit_compile(config, one_device) is has_gpu
    config.jit_compile = "true"
    assert trainer.resolve_jit_compile(config, one_device) is True
    config.jit_compile = "false"
    assert trainer.resolve_jit_compile(config, one_device) is False


def test_xla_with_several_mirrored_replicas_is_refused_with_the_reason():
    # TF 2.21 / Keras 3.15 cannot compile a multi-device mirrored step with XLA (keras-team/keras#19005): auto leaves
    # XLA off there, and an explicit true is one sentence before any work instead of a device error at step 1.
    from tf_mocov3.training import distribute  # pylint: disable=import-outside-toplevel
    two = distribute.mirrored_strategy(["/cpu:0", "/cpu:1"])
    config = config_lib.base_config()
    assert trainer.resolve_jit_compile(config, two) is False
    config.jit_compile = "true"
    with pytest.raises(config_lib.ConfigError, match="cannot compile a multi-device mirrored step with XLA"):
        trainer.resolve_jit_compile(config, two)


def test_each_mirrored_strategy_gets_its_own_collective_keys():
    # Two MirroredStrategy objects in one process share group keys unless told otherwise; then a collective of
    # the second can meet the first one's cached instance ("Shape mismatch in the collective instance N").
    from tf_mocov3.training import distribute  # pylint: disable=import-outside-toplevel
    first = distribute.mirrored_strategy(["/cpu:0", "/cpu:1"])
    second = distribute.mirrored_strategy(["/cpu:0", "/cpu:1"])
    bases = [s.extended._collective_key_base for s in (first, second)]  # pylint: disable=protected-access
    assert bases[0] != bases[1] and min(bases) > 0
    assert tf.distribute.MirroredStrategy._collective_key_base == 0  # pylint: disable=protected-access
    for strategy, size in ((first, 32), (second, 16)):
        out = strategy.run(tf.function(lambda n=size: tf.distribute.get_replica_context().all_reduce(
            "SUM", tf.ones([n]))))
        assert strategy.experimental_local_results(out)[0].numpy().tolist() == [2.0] * size


def _rows(workdir):
    """metrics.jsonl without the wall-clock entry."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k != "images_per_second"} for line in f]


@pytest.mark.roundoff
@needs_fmnist
def test_several_steps_per_host_call_give_the_weights_rows_and_checkpoints_of_one(tmp_path, tiny_config):
    config, _ = tiny_config(tmp_path)
    config.max_steps = 5  # the last call runs 1 step, not 2
    config.log_every_steps = config.checkpoint_every_steps = 2
    config.keep_checkpoints = 5
    runs = {}
    for k in (1, 2):
        config.steps_per_execution = str(k)  # as --config.steps_per_execution=2 gives it
        workdir = str(tmp_path / f"k{k}")
        assert training.run_pretraining(config, workdir, print_fn=lambda s: None)["step"] == 5
        runs[k] = workdir
    assert_same_weights(weights_of(runs[1]), weights_of(runs[2]), atol=1e-6)
    one, two = _rows(runs[1]), _rows(runs[2])
    assert [r["step"] for r in one] == [r["step"] for r in two] == [2, 4, 5]
    for a, b in zip(one, two):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    steps = lambda w: sorted(int(p.rsplit("-", 1)[1]) for p in tf.train.get_checkpoint_state(
        os.path.join(w, "checkpoints")).all_model_checkpoint_paths)
    assert steps(runs[1]) == steps(runs[2]) == [2, 4, 5]


def test_steps_per_host_call_must_be_auto_or_a_positive_integer(tmp_path, tiny_config):
    # Intervals that are not multiples of it are rounded up (tests/test_intervals.py).
    config, _ = tiny_config(tmp_path)
    config.steps_per_execution = "many"
    with pytest.raises(config_lib.ConfigError, match="must be 'auto' or a positive integer"):
        config_lib.validate(config)
