"""Records the pre-training input pipeline drops (an image that fails to decode) are counted in tf.data and logged
as `skipped_records` in metrics.jsonl and on the progress line."""

import json
import os

import pytest
import tensorflow as tf

from tf_mocov3.data import pipelines
from tf_mocov3.data import sources
from tf_mocov3.testing import fixtures_data
from tf_mocov3.training import pretrain

BATCH, STEPS = 4, 6


def _folder_with_bad_images(root):
    """12 good images and 3 truncated ones (listed: validate_files=False lets them reach the pipeline)."""
    fixtures_data.write_image_folder(root, per_class=6)
    for cls, name in (("cat", "0.jpg"), ("dog", "2.jpg"), ("dog", "4.jpg")):
        fixtures_data.write_truncated(os.path.join(root, cls, f"bad_{name}"), os.path.join(root, cls, name))
    return str(root)


@pytest.mark.parametrize("strategy", ["one_device", "mirrored"])  # mirrored: 2 CPU replicas, a count per replica
def test_undecodable_images_are_counted_in_the_log(tmp_path, tiny_config, strategy):
    config, _ = tiny_config(tmp_path)
    config.strategy = strategy
    config.dataset.name, config.dataset.path = "image_folder", _folder_with_bad_images(tmp_path / "images")
    config.dataset.validate_files = False
    config.batch_size, config.max_steps = BATCH, STEPS
    config.log_every_steps = config.checkpoint_every_steps = 2
    source = sources.load_source(config.dataset)
    bad = {i for i, path in enumerate(source.images.numpy()) if b"bad_" in os.path.basename(path)}
    assert len(bad) == 3 and source.num_examples == 15
    # What the pipeline reads, in order: a record counts once the batch holding the next good one is trained on
    # (with 2 replicas, the one pipeline's 2 per-replica batches of a step hold the rows of this global batch).
    order = pipelines.pretrain_order(config, source)
    stream = [int(i) for i, _, _ in order.epochs(order.epoch).take(60).as_numpy_iterator()]
    expected, good, seen = {}, 0, 0
    for index in stream:
        if index in bad:
            seen += 1
            continue
        good += 1
        if good % BATCH == 0:
            expected[good // BATCH] = seen  # bad records read before the last image of this step's batch
        if good == STEPS * BATCH:
            break
    assert expected[STEPS] > 0, "the run would read no bad image"

    lines = []
    workdir = str(tmp_path / "run")
    assert pretrain.run_pretraining(config, workdir, print_fn=lines.append)["step"] == STEPS
    assert f"on {2 if strategy == 'mirrored' else 1} replica(s)" in lines[0]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert [(row["step"], row["skipped_records"]) for row in rows] == [(s, expected[s]) for s in (2, 4, 6)]
    assert f"bad records skipped: {expected[STEPS]}" in lines[-2]  # the last progress line (the summary follows)
    assert tf.io.gfile.exists(os.path.join(workdir, "checkpoints"))


def _split_folder_with_bad_images(root):
    """train/: 12 good images and 3 truncated ones; test/: 4 good images."""
    _folder_with_bad_images(os.path.join(root, "train"))
    fixtures_data.write_image_folder(os.path.join(root, "test"), per_class=2)
    return str(root)


def _bad_indices(source):
    return {i for i, path in enumerate(source.images.numpy()) if b"bad_" in os.path.basename(path)}


def test_fine_tuning_on_two_replicas_counts_undecodable_images(tmp_path):
    from finetune_helpers import tiny_config  # pylint: disable=import-outside-toplevel
    from finetune_helpers import write_pretrained_dir  # pylint: disable=import-outside-toplevel
    from tf_mocov3.data import order as order_lib  # pylint: disable=import-outside-toplevel
    from tf_mocov3.training import finetune  # pylint: disable=import-outside-toplevel

    config = tiny_config(name="image_folder", path=_split_folder_with_bad_images(tmp_path / "images"),
                         train_split="train", eval_split="test", validate_files=False)
    config.strategy, config.num_cpu_devices = "mirrored", 2
    config.batch_size, config.max_steps, config.log_every_steps = BATCH, STEPS, 2
    source = sources.load_source(config.dataset, "train")
    bad = _bad_indices(source)
    # The fine-tuning order of the split (order.py), as labelled_train_dataset reads it: a step's count is every bad
    # record read before the last row of its batch.
    order = order_lib.ExampleOrder(source.num_examples, BATCH, int(config.seed))
    expected, good, seen = {}, 0, 0
    for index, _, _ in order.epochs(order.epoch).take(60).as_numpy_iterator():
        if int(index) in bad:
            seen += 1
            continue
        good += 1
        if good % BATCH == 0:
            expected[good // BATCH] = seen
        if good == STEPS * BATCH:
            break
    assert expected[STEPS] > 0, "the run would read no bad image"

    lines = []
    workdir = str(tmp_path / "ft")
    finetune.run_finetune(config, workdir, write_pretrained_dir(tmp_path / "pre"), print_fn=lines.append)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if "skipped_records" in line]
    # Each replica's rows carry their own counts and the step sums them over both replicas.
    assert [(row["step"], row["skipped_records"]) for row in rows] == [(s, expected[s]) for s in (2, 4, 6)]
    assert any(f"bad records skipped: {expected[STEPS]}" in line for line in lines)


def test_the_probe_on_augmented_images_counts_undecodable_images(tmp_path):
    from test_linear_probe import make_pretrained_dir  # pylint: disable=import-outside-toplevel
    from test_linear_probe import tiny_probe_config  # pylint: disable=import-outside-toplevel
    from tf_mocov3.training import linear_probe  # pylint: disable=import-outside-toplevel

    path = _split_folder_with_bad_images(tmp_path / "images")
    probe = tiny_probe_config(epochs=1, batch_size=BATCH, eval_batch_size=4, train_examples=0, eval_examples=0,
                              cache_features=False, base_lrs=(0.1,), holdout_fraction=0.0, log_every_steps=1)
    probe.dataset.name, probe.dataset.path, probe.dataset.validate_files = "image_folder", path, False
    probe.dataset.train_split, probe.dataset.eval_split = "train", "test"
    workdir = str(tmp_path / "probe")
    linear_probe.run_probe(probe, make_pretrained_dir(tmp_path / "pre"), workdir, print_fn=lambda _: None)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if '"loss"' in line]
    # One epoch reads every training image once, so the count it ends with is the number of bad images.
    assert rows[-1]["skipped_records"] == len(_bad_indices(sources.load_source(probe.dataset, "train"))) == 3
