"""Weighted kNN (Wu et al. / InstDisc; the MoCo kNN monitor): hand-computed votes, the monitor in a run, the CLI."""

import json
import math
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from conftest import FMNIST
from conftest import ROOT
from conftest import checkpoint_tensors
from conftest import needs_fmnist
from tf_mocov3.evaluation import knn
from tf_mocov3.testing.fixtures_data import write_idx as _write_idx
from tf_mocov3.training import distribute
from tf_mocov3.training import pretrain as training

# A 2-D memory bank: the query q = [2, 0] is L2-normalised to [1, 0].
#   a = [1, 0]      class 0   cos(q, a) = 1
#   b = [0, 1]      class 1   cos(q, b) = 0
#   c = [1, 1]      class 1   cos(q, c) = 1/sqrt(2) = 0.70711
#   d = [-1, 0]     class 0   cos(q, d) = -1
BANK = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]], np.float32)
BANK_LABELS = np.array([0, 1, 1, 0])
QUERY = np.array([[2.0, 0.0]], np.float32)


def test_weighted_knn_matches_a_hand_computed_example():
    # k = 3 keeps a (sim 1), c (sim 0.70711), b (sim 0); T = 0.5 gives weights
    #   a: exp(1 / 0.5) = e^2 = 7.38906,  c: exp(0.70711 / 0.5) = e^1.41421 = 4.11325,  b: exp(0) = 1.
    # Votes: class 0 = 7.38906 (a), class 1 = 4.11325 + 1 = 5.11325 (c, b)  ->  class 0.
    scores = knn.weighted_knn_scores(BANK, BANK_LABELS, QUERY, num_classes=2, k=3, temperature=0.5)
    np.testing.assert_allclose(scores, [[7.38906, 5.11325]], rtol=1e-5)
    assert knn.weighted_knn_predict(BANK, BANK_LABELS, QUERY, 2, k=3, temperature=0.5).tolist() == [0]
    # k = 1: only a votes.  A query [0, 3] (-> [0, 1]): b sim 1 (e^2), c 0.70711 (e^1.41421), a 0 (1):
    # class 1 = 7.38906 + 4.11325 = 11.50231, class 0 = 1  -> class 1.
    np.testing.assert_allclose(knn.weighted_knn_scores(BANK, BANK_LABELS, QUERY, 2, k=1, temperature=0.5),
                               [[7.38906, 0.0]], rtol=1e-5)
    both = np.concatenate([QUERY, [[0.0, 3.0]]])
    np.testing.assert_allclose(knn.weighted_knn_scores(BANK, BANK_LABELS, both, 2, k=3, temperature=0.5),
                               [[7.38906, 5.11325], [1.0, 11.50231]], rtol=1e-5)
    assert knn.knn_top1(BANK, BANK_LABELS, both, [0, 1], 2, k=3, temperature=0.5) == 100.0
    assert knn.knn_top1(BANK, BANK_LABELS, both, [1, 1], 2, k=3, temperature=0.5) == 50.0


def test_k_larger_than_the_bank_uses_every_bank_entry():
    # k = 200 > 4: all four vote. T = 0.5: class 0 = e^2 + e^-2 = 7.38906 + 0.13534 = 7.52439,
    # class 1 = e^1.41421 + e^0 = 5.11325.
    scores = knn.weighted_knn_scores(BANK, BANK_LABELS, QUERY, 2, k=200, temperature=0.5)
    np.testing.assert_allclose(scores, [[7.52439, 5.11325]], rtol=1e-5)
    np.testing.assert_allclose(scores, knn.weighted_knn_scores(BANK, BANK_LABELS, QUERY, 2, k=4, temperature=0.5))


def test_temperature_decides_between_one_close_neighbour_and_two_farther_ones():
    # q = [1, 0]; class 0: [1, 0] (sim 1); class 1: [0.6, 0.8], [0.6, -0.8] (sim 0.6 each); k = 3.
    bank = np.array([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8]], np.float32)
    labels = np.array([0, 1, 1])
    q = np.array([[1.0, 0.0]], np.float32)
    # T = 0.07: e^(1/0.07) = e^14.2857 = 1.5962e6  vs  2 e^(0.6/0.07) = 2 e^8.5714 = 1.0530e4  -> class 0.
    np.testing.assert_allclose(knn.weighted_knn_scores(bank, labels, q, 2, k=3, temperature=0.07),
                               [[math.exp(1 / 0.07), 2 * math.exp(0.6 / 0.07)]], rtol=1e-5)
    assert knn.weighted_knn_predict(bank, labels, q, 2, k=3, temperature=0.07).tolist() == [0]
    # T = 1: e^1 = 2.71828  vs  2 e^0.6 = 3.64424  -> class 1 (a large T tends to a plain majority vote).
    np.testing.assert_allclose(knn.weighted_knn_scores(bank, labels, q, 2, k=3, temperature=1.0),
                               [[2.71828, 3.64424]], rtol=1e-5)
    assert knn.weighted_knn_predict(bank, labels, q, 2, k=3, temperature=1.0).tolist() == [1]


def test_chunking_does_not_change_the_result():
    rng = np.random.default_rng(0)
    bank, labels, queries = rng.normal(size=(300, 8)), rng.integers(0, 5, 300), rng.normal(size=(70, 8))
    np.testing.assert_allclose(knn.weighted_knn_scores(bank, labels, queries, 5, k=20, chunk_size=16),
                               knn.weighted_knn_scores(bank, labels, queries, 5, k=20, chunk_size=512), rtol=1e-5)


def test_dip_warning_names_step_accuracy_best_and_grad_norms():
    lines = []
    monitor = knn.KNNMonitor({"name": "fashion_mnist_idx"}, image_size=16, dip_margin=5.0, print_fn=lines.append)
    monitor.grad_norms.extend([(599, 0.25, 1.5), (600, 3.0, 40.0)])
    assert monitor.record_accuracy(200, 50.0) is None
    assert monitor.record_accuracy(400, 62.0) is None
    assert monitor.record_accuracy(500, 57.5) is None          # 4.5 points below the best: within the margin
    warning = monitor.record_accuracy(600, 41.0)                # 21 points below 62.0
    assert warning == lines[-1]
    assert warning.startswith("WARNING: kNN dip at step 600: top-1 41.00% is 21.00 points below the best 62.00% "
                              "(step 400)")
    assert "step 599: 0.25 / 1.5" in warning and "step 600: 3 / 40" in warning
    assert monitor.best == (62.0, 400)
    assert monitor.record_accuracy(800, 63.0) is None and monitor.best == (63.0, 800)
    assert len(lines) == 1


def test_make_monitor_defaults_and_errors(tmp_path, tiny_config):
    config, _ = tiny_config(tmp_path)
    assert knn.make_monitor(config, None) is None                              # no config.knn: disabled
    config.knn = ml_collections.ConfigDict({"enabled": True})  # the other keys: config_lib.base_config's
    settings = knn.knn_settings(config)
    assert (settings["k"], settings["temperature"], settings["train_fraction"], settings["image_size"],
            settings["every_steps"], settings["max_eval_examples"], settings["eval_split"]) == (
        200, 0.07, 0.1, 16, 200, 2000, "validation")
    config.knn.dataset = ml_collections.ConfigDict({"name": "fashion_mnist_idx", "path": str(tmp_path / "nowhere")})
    with pytest.raises(ValueError, match=r"kNN data set config.knn.dataset .*config.knn.enabled=False"):
        knn.make_monitor(config, None)
    empty = tmp_path / "one_class" / "train" / "only"
    empty.mkdir(parents=True)
    tf.io.write_file(str(empty / "a.png"), tf.io.encode_png(tf.zeros([8, 8, 3], tf.uint8)))
    config.knn.dataset = ml_collections.ConfigDict({"name": "image_folder", "path": str(tmp_path / "one_class")})
    with pytest.raises(ValueError, match=r"has no class labels \(1 classes\)"):
        knn.make_monitor(config, None)


@pytest.fixture(scope="module")
def monitored_run(tmp_path_factory, tiny_config):
    """A 5-step MirroredStrategy pre-training run (2 logical CPUs) with the kNN monitor every 2 steps."""
    tmp = tmp_path_factory.mktemp("knn_run")
    config, _ = tiny_config(tmp)
    config.max_steps = 5
    config.checkpoint_every_steps = 5
    # configs/demo.py's knn (eval_split "test": Fashion-MNIST has no validation split) with these keys changed.
    config.knn.update(dict(enabled=True, every_steps=2, train_fraction=0.005, max_eval_examples=200, batch_size=128,
                           dip_margin=100.0))
    workdir = str(tmp / "run")
    os.makedirs(workdir)
    lines = []
    # config.knn.enabled: knn.monitor_callbacks builds the monitor, which logs through the run's MetricsWriter.
    strategy = distribute.mirrored_strategy(["/cpu:0", "/cpu:1"])
    result = training.run_pretraining(config, workdir, strategy=strategy, make_callbacks=knn.monitor_callbacks,
                                      print_fn=lines.append)
    [monitor] = result["callbacks"]
    return workdir, lines, monitor


@needs_fmnist
def test_monitor_logs_knn_top1_every_n_steps_and_at_the_end_under_mirrored_strategy(monitored_run):
    workdir, lines, monitor = monitored_run
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    knn_records = [r for r in records if "knn_top1" in r]
    assert [r["step"] for r in knn_records] == [2, 4, 5]        # every 2 steps, then the end of training
    assert all(r["knn_step"] == r["step"] for r in knn_records)
    for r in knn_records:
        assert 10.0 <= r["knn_top1"] <= 100.0               # 10 classes: better than nothing after 2 steps, finite
    assert (monitor.bank.size, monitor.queries.size) == (300, 200)   # 0.5% of 60000, capped test split
    assert monitor.bank.cached and monitor.queries.cached
    assert sum("kNN step" in line for line in lines) == 3
    # The grad-norm history comes from the batch logs.
    assert [s for s, _, _ in monitor.grad_norms] == [1, 2, 3, 4, 5]
    # The same fixed images and the final backbone give the same accuracy when evaluated again.
    assert monitor.evaluate(monitor.model.backbone) == pytest.approx(knn_records[-1]["knn_top1"])


def _run_cli(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "tf_mocov3.knn", *args], capture_output=True, text=True,
                           cwd=ROOT, env=env, timeout=300)


def _small_fmnist(path):
    """A small Fashion-MNIST-format folder keeps "the full splits" small: 200 train, 100 test images."""
    from tf_mocov3.data import sources as data
    path.mkdir()
    for split, prefix, n in (("train", "train", 200), ("test", "t10k", 100)):
        images, labels = data.load_fashion_mnist_idx(FMNIST, split)
        _write_idx(path / f"{prefix}-images-idx3-ubyte.gz", images[:n, :, :, 0])
        _write_idx(path / f"{prefix}-labels-idx1-ubyte.gz", labels[:n])
    return path


@needs_fmnist
def test_cli_prints_the_accuracy_and_writes_knn_json(monitored_run, tmp_path):
    workdir, _, _ = monitored_run
    small = _small_fmnist(tmp_path / "small_fmnist")
    result = _run_cli(f"--pretrained={workdir}", f"--data_path={small}", "--k=20")
    assert result.returncode == 0, result.stderr
    record = json.load(open(os.path.join(workdir, "knn.json")))
    assert (record["num_train"], record["num_eval"], record["k"], record["image_size"]) == (200, 100, 20, 16)
    assert f"{record['knn_top1']:.2f}" in result.stdout and "kNN top-1" in result.stdout
    assert record["checkpoint"].endswith("ckpt-5")


def test_cli_error_for_a_missing_path_exits_1(tmp_path):
    missing = str(tmp_path / "no_such_run")
    result = _run_cli(f"--pretrained={missing}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: Pretrained path {missing} does not exist; pass a pre-training workdir, a checkpoint prefix such "
        f"as WORKDIR/checkpoints/ckpt-200, or a directory written by tf_mocov3.convert_official.")


@needs_fmnist
def test_evaluation_split_over_two_replicas_equals_one_replica(monitored_run, tmp_path):
    workdir, _, _ = monitored_run
    small = _small_fmnist(tmp_path / "small_fmnist")
    one = knn.evaluate_pretrained(workdir, data_path=str(small), k=20)
    two = knn.evaluate_pretrained(workdir, data_path=str(small), k=20,
                                  strategy=distribute.mirrored_strategy(["/cpu:0", "/cpu:1"]))
    assert (one["replicas"], two["replicas"]) == (1, 2)
    assert one["knn_top1"] == two["knn_top1"]


@needs_fmnist
def test_queue_bank_holds_the_training_batches_features_and_labels(tmp_path, tiny_config):
    """config.knn.bank='queue' (the paper's monitor) on 2 replicas: the train step fills the bank with the momentum
    encoder's features of the training images of the whole global batch (both replicas' rows), in step order,
    labelled by their own labels; the monitor logs kNN top-1 from it."""
    from tf_mocov3.data import order as order_lib
    from tf_mocov3.data import sources as data

    config, _ = tiny_config(tmp_path)
    config.max_steps = 4
    config.checkpoint_every_steps = 4
    config.knn.update(dict(enabled=True, every_steps=2, bank="queue", queue_size=24, max_eval_examples=100,
                           batch_size=64, dip_margin=100.0))
    workdir, lines = str(tmp_path / "run"), []
    result = training.run_pretraining(config, workdir, strategy=distribute.mirrored_strategy(["/cpu:0", "/cpu:1"]),
                                      make_callbacks=knn.monitor_callbacks, print_fn=lines.append)
    model = result["model"]
    features, labels = model.feature_queue.filled()
    # 4 steps of 8 into a ring of 24: rows 0-7 hold step 4's images, rows 8-23 those of steps 2 and 3.
    source = data.load_source(config.dataset)
    permutation = order_lib.ExampleOrder(source.num_examples, 8, config.seed).permutation(0).numpy()
    seen = np.asarray(source.labels)[permutation[:32]]
    np.testing.assert_array_equal(labels, np.concatenate([seen[24:32], seen[8:24]]))
    assert features.shape == (24, 32) and np.all(np.linalg.norm(features, axis=1) > 0)
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in records if "knn_top1" in r] == [2, 4]
    assert any("queue 16," in line for line in lines) and any("queue 24," in line for line in lines)
    # The queue is saved with the model: the checkpoint holds its rows.
    saved = {k: v for k, v in checkpoint_tensors(workdir).items() if "feature_queue" in k and "labels" in k}
    assert len(saved) == 1 and np.array_equal(next(iter(saved.values())), np.concatenate([seen[24:32], seen[8:24]]))


def test_queue_bank_config_errors_are_one_sentence(tiny_config, tmp_path):
    from tf_mocov3 import config_lib
    config, _ = tiny_config(tmp_path)
    config.knn = ml_collections.ConfigDict(dict(enabled=True, bank="queue", queue_size=4, queue_encoder="key",
                                                dataset=dict(name="cifar10")))
    with pytest.raises(config_lib.ConfigError) as err:
        config_lib.validate(config)
    message = str(err.value)
    assert "config.knn.queue_encoder='key' is unknown; choose one of momentum, query." in message
    assert ("config.knn.bank='queue' fills the bank from the training batches of fashion_mnist_idx, so the kNN data "
            "set cannot be cifar10;") in message
    assert "config.knn.queue_size=4 must hold at least one global batch (8);" in message
