"""FeatureQueue, the bank of the paper's kNN monitor: a ring of the training batches' features and labels."""

import numpy as np
import pytest
import tensorflow as tf

from tf_mocov3.models import feature_queue
from tf_mocov3.training import distribute


def _batches(n, rows, dim, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(rows, dim)).astype(np.float32), rng.integers(0, 10, rows).astype(np.int64))
            for _ in range(n)]


def test_ring_keeps_the_last_rows_in_order_and_marks_unfilled_rows():
    queue = feature_queue.FeatureQueue(10, 3)
    assert queue.filled()[0].shape == (0, 3)     # nothing written yet: an empty bank, not zeros
    batches = _batches(3, 4, 3)
    queue.push(*batches[0])
    features, labels = queue.filled()
    np.testing.assert_array_equal(features, batches[0][0])
    np.testing.assert_array_equal(labels, batches[0][1])
    queue.push(*batches[1])
    queue.push(*batches[2])                      # 12 rows into 10: rows 0-1 now hold the third batch's last two
    all_f = np.concatenate([b[0] for b in batches])
    expected = np.concatenate([all_f[10:12], all_f[2:10]])
    np.testing.assert_array_equal(queue.filled()[0], expected)
    assert int(queue.pointer.numpy()) == 2


def test_two_replicas_write_the_global_batch_of_one_replica():
    batches = _batches(2, 6, 4, seed=1)
    one = feature_queue.FeatureQueue(16, 4)
    for f, y in batches:
        one.push(f, y)
    strategy = distribute.mirrored_strategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        two = feature_queue.FeatureQueue(16, 4)

    @tf.function
    def push(f, y):
        def replica(f, y):
            r = tf.distribute.get_replica_context().replica_id_in_sync_group
            two.push(f[r * 3:(r + 1) * 3], y[r * 3:(r + 1) * 3])   # replica r holds rows [3r, 3r + 3)
        strategy.run(replica, args=(f, y))

    for f, y in batches:
        push(tf.constant(f), tf.constant(y))
    for a, b in zip(one.filled(), two.filled()):
        np.testing.assert_array_equal(a, b)
    for variable in (two.features, two.labels):  # every replica's copy holds the same rows
        copies = [v.numpy() for v in strategy.experimental_local_results(variable.value)]
        assert len(copies) == 2
        np.testing.assert_array_equal(copies[0], copies[1])


def test_bad_size_is_one_sentence():
    with pytest.raises(ValueError, match=r"positive size and width, got size 0, dim 8; set config.knn.queue_size"):
        feature_queue.FeatureQueue(0, 8)
