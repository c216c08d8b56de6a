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
