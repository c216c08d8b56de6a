"""The one example order (order.py), the labelled-split opener and the labelled pipelines built on them."""

import numpy as np
import pytest
import tensorflow as tf

from tf_mocov3 import config_lib
from tf_mocov3.data import augment
from tf_mocov3.data import order
from tf_mocov3.data import pipelines
from tf_mocov3.data import sources
from tf_mocov3.testing.fixtures_data import write_image_folder


def _stream(ds):
    return [tuple(int(x) for x in row) for row in ds.as_numpy_iterator()]


def test_epoch_order_is_the_seeded_permutation_with_contract_seeds():
    o = order.ExampleOrder(10, 4, seed=3)
    assert o.steps_per_epoch == 2  # 10 // 4: the remainder of an epoch is dropped
    rows = _stream(o.epochs(o.epoch, end_epoch=2))
    for e in range(2):
        perm = tf.random.experimental.stateless_shuffle(tf.range(10, dtype=tf.int64),
                                                        seed=tf.constant([3, e], tf.int64)).numpy()
        assert rows[8 * e:8 * e + 8] == [(perm[p], p, e) for p in range(8)]
    np.testing.assert_array_equal(order.example_seed(3, 2, 5), [3, 2 * 2 ** 32 + 5])


def test_start_step_skips_and_rows_split_a_global_batch():
    full = _stream(order.ExampleOrder(12, 4, seed=1).epochs(order.ExampleOrder(12, 4, seed=1).epoch, 3))
    resumed = order.ExampleOrder(12, 4, seed=1, start_step=4)  # epoch 1, step 1
    assert (resumed.start_epoch, resumed.first_step) == (1, 1)
    assert _stream(resumed.epochs(resumed.epoch, 3)) == full[16:]
    halves = [order.ExampleOrder(12, 4, seed=1, rows=2, row_offset=r) for r in (0, 2)]
    parts = [_stream(h.epochs(h.epoch, 3)) for h in halves]
    merged = [row for b in range(9) for part in parts for row in part[2 * b:2 * b + 2]]
    assert merged == full


def test_a_kept_partial_batch_gives_ceil_steps_and_visits_every_example():
    o = order.ExampleOrder(10, 4, seed=0, keep_partial_batch=True)
    assert o.steps_per_epoch == 3
    rows = _stream(o.epoch(0))
    assert sorted(r[0] for r in rows) == list(range(10)) and [r[1] for r in rows] == list(range(10))
    resumed = order.ExampleOrder(10, 4, seed=0, start_step=5, keep_partial_batch=True)  # epoch 1, step 2
    assert [r[1] for r in _stream(resumed.epoch(1))] == [8, 9]
    with pytest.raises(ValueError, match="lower config.batch_size"):
        order.ExampleOrder(3, 4, seed=0)


def test_streamed_epoch_keeps_positions_rows_and_skips():
    stream = tf.data.Dataset.range(10).map(lambda i: (i * 10, i))
    o = order.ExampleOrder(10, 4, seed=2, rows=2, row_offset=2, start_step=1)
    rows = [(int(ex[1]), int(p), int(e)) for ex, p, e in o.streamed_epoch(stream, 0, shuffle_buffer=10)]
    assert [p for _, p, _ in rows] == [6, 7]  # step 1 only (the remainder 8, 9 dropped), rows 2-3
    every = [int(ex[1]) for ex, _, _ in order.ExampleOrder(10, 5, seed=2).streamed_epoch(stream, 0, 10)]
    assert sorted(every) == list(range(10))


def test_holdout_and_subset_are_seeded_and_disjoint():
    train, hold = order.holdout_split(50, holdout_fraction=0.2, seed=4)
    assert len(hold) == 10 and not set(train) & set(hold) and sorted(set(train) | set(hold)) == list(range(50))
    with pytest.raises(ValueError, match="holdout"):
        order.holdout_split(5, holdout_examples=5)
    np.testing.assert_array_equal(order.subset_indices(20, max_examples=5, seed=1),
                                  np.sort(np.random.default_rng(1).permutation(20)[:5]))


def image_folder(path):
    """config.dataset of the image folder at `path` (base_config's other keys)."""
    return config_lib.complete(dict(name="image_folder", path=str(path)), part="dataset")


def test_open_labelled_joins_splits_and_names_the_fix(tmp_path):
    write_image_folder(str(tmp_path / "data" / "train"), per_class=3)
    write_image_folder(str(tmp_path / "data" / "validation"), per_class=2)
    joined = sources.open_labelled(image_folder(tmp_path / "data"), "train+validation")
    assert (joined.num_examples, joined.num_classes) == (10, 2)
    assert sorted(joined.labels.tolist()) == [0] * 5 + [1] * 5
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.png").write_bytes(tf.io.encode_png(tf.zeros([4, 4, 3], tf.uint8)).numpy())
    with pytest.raises(sources.LabelledSplitError, match="no labels.*one sub-folder per class"):
        sources.open_labelled(image_folder(flat), "train")
    write_image_folder(str(tmp_path / "one"), classes=("cat",))
    with pytest.raises(sources.LabelledSplitError, match=r"\(1 classes\).*at least 2 classes"):
        sources.open_labelled(image_folder(tmp_path / "one"), "train")
    with pytest.raises(sources.LabelledSplitError, match="does not exist"):
        sources.open_labelled(image_folder(tmp_path / "nowhere"), "train")


def test_labelled_train_dataset_crops_each_example_with_its_contract_seed(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (10, 12, 14, 1), dtype=np.uint8)
    labels = np.arange(10, dtype=np.int64) % 3
    source = sources.Source("toy", "array", 10, 3, tf.constant(images), labels)
    subset = np.array([0, 2, 3, 5, 6, 7, 9])
    ds = pipelines.labelled_train_dataset(source, global_batch=3, seed=4, image_size=8, indices=subset,
                                          keep_partial_batch=True, end_epoch=2)
    batches = list(ds)
    assert [len(y) for _, y in batches] == [3, 3, 1] * 2  # ceil(7 / 3) steps per epoch, the last one partial
    perm = tf.random.experimental.stateless_shuffle(tf.range(7, dtype=tf.int64),
                                                    seed=tf.constant([4, 1], tf.int64)).numpy()
    x, y = batches[3]  # epoch 1, positions 0-2
    for p in range(3):
        index = subset[perm[p]]
        assert y[p] == labels[index]
        want = pipelines.train_crop(images[index], order.example_seed(4, 1, p), image_size=8)
        np.testing.assert_array_equal(x[p], want)
    resumed = list(pipelines.labelled_train_dataset(source, global_batch=3, seed=4, image_size=8, indices=subset,
                                                    keep_partial_batch=True, end_epoch=2, start_step=4))
    for (a, b), (c, d) in zip(batches[4:], resumed):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)


def _host(pipeline, pipelines_, replicas):
    return tf.distribute.InputContext(num_input_pipelines=pipelines_, input_pipeline_id=pipeline,
                                      num_replicas_in_sync=replicas)


@pytest.mark.parametrize("repeats,mix_group", [(1, 0), (2, 2)])
def test_each_host_of_a_fine_tuning_run_yields_its_rows_of_the_one_pipeline_batch(repeats, mix_group):
    """Two hosts with two replicas each read and augment only their rows of each global batch; side by side they
    equal the one-pipeline batches (repeated augmentation and mixup groups included); per-replica batches follow."""
    images = np.random.default_rng(3).integers(0, 255, (24, 12, 12, 3), dtype=np.uint8)
    source = sources.Source("toy", "array", 24, 4, tf.constant(images), np.arange(24, dtype=np.int64) % 4)
    mix = None if not mix_group else dict(num_classes=4, mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0,
                                          switch_prob=0.5, smoothing=0.1)
    kwargs = dict(global_batch=8, seed=2, image_size=8, repeats=repeats, mix=mix, mix_group=mix_group,
                  start_step=1)
    one = list(pipelines.labelled_train_dataset(source, num_replicas=4, **kwargs).take(4))
    hosts = [list(pipelines.labelled_train_dataset(source, input_context=_host(p, 2, 4), **kwargs).take(4))
             for p in range(2)]
    for step in range(4):
        for k in range(2):  # images, labels / soft targets
            np.testing.assert_allclose(np.concatenate([hosts[0][step][k], hosts[1][step][k]]), one[step][k],
                                       atol=1e-6)
    replica_batches = list(pipelines.per_replica_batches(
        pipelines.labelled_train_dataset(source, input_context=_host(1, 2, 4), **kwargs), 2).take(2))
    np.testing.assert_array_equal(np.concatenate([replica_batches[0][0], replica_batches[1][0]]), hosts[1][0][0])


def test_hosts_split_the_last_partial_batch_of_an_epoch_and_a_host_without_rows_gets_an_empty_one():
    """The linear probe's input (a last, partial batch per epoch) on 2 hosts of 2 replicas: every step is one batch
    per host, the rows of the one-pipeline batch; the last step's 3 rows all sit on host 0, host 1 gets 0 rows, and
    its replicas 0-row batches."""
    images = np.random.default_rng(4).integers(0, 255, (11, 10, 10, 3), dtype=np.uint8)
    source = sources.Source("toy", "array", 11, 2, tf.constant(images), np.arange(11, dtype=np.int64) % 2)
    kwargs = dict(global_batch=8, seed=1, image_size=8, keep_partial_batch=True, end_epoch=2)
    one = list(pipelines.labelled_train_dataset(source, num_replicas=4, **kwargs))
    hosts = [list(pipelines.labelled_train_dataset(source, input_context=_host(p, 2, 4), **kwargs))
             for p in range(2)]
    assert [len(y) for _, y in one] == [8, 3] * 2
    assert [len(y) for _, y in hosts[0]] == [4, 3] * 2 and [len(y) for _, y in hosts[1]] == [4, 0] * 2
    for step in range(4):
        for k in range(2):
            np.testing.assert_array_equal(np.concatenate([hosts[0][step][k], hosts[1][step][k]]), one[step][k])
    replicas = list(pipelines.per_replica_batches(
        pipelines.labelled_train_dataset(source, input_context=_host(0, 2, 4), **kwargs), 2, replica_rows=2))
    assert [len(y) for _, y in replicas] == [2, 2, 2, 1] * 2
    np.testing.assert_array_equal(np.concatenate([x for x, _ in replicas[2:4]]), hosts[0][1][0])


def test_an_image_that_fails_to_decode_costs_one_example_of_fine_tuning_not_the_run():
    good = [tf.io.encode_png(np.full((6, 6, 3), 20 * i, np.uint8)).numpy() for i in range(8)]
    bad = b"\x89PNG\r\n\x1a\n" + bytes(40)  # a PNG signature, then nothing decodable
    encoded = good[:3] + [bad] + good[3:]
    source = sources.Source("toy", "bytes", 9, 2, tf.constant(encoded), np.arange(9, dtype=np.int64) % 2)
    batches = list(pipelines.labelled_train_dataset(source, global_batch=1, seed=0, image_size=4, end_epoch=2))
    assert len(batches) == 2 * 8  # each epoch: the 8 good images of the 9


def test_mixup_groups_that_cross_hosts_are_refused_with_the_fix():
    images = np.zeros((16, 8, 8, 3), np.uint8)
    source = sources.Source("toy", "array", 16, 2, tf.constant(images), np.arange(16, dtype=np.int64) % 2)
    mix = dict(num_classes=2, mixup_alpha=0.8)
    with pytest.raises(ValueError, match=r"Mixup groups of 4 rows cross the 2 rows of each of the 4 hosts; set "
                                         r"config.aug.mixup_group to a divisor of 2 \(or 0\)"):
        pipelines.labelled_train_dataset(source, global_batch=8, seed=0, image_size=8, mix=mix, mix_group=4,
                                         input_context=_host(0, 4, 4))


def test_train_crop_of_jpeg_bytes_equals_the_crop_of_the_decoded_image():
    pixels = np.random.default_rng(1).integers(0, 255, (30, 26, 3), dtype=np.uint8)
    data = tf.io.encode_jpeg(tf.constant(pixels), quality=95, chroma_downsampling=False)  # 4:4:4: crops exact
    decoded = tf.io.decode_jpeg(data, channels=3)
    for s in range(4):
        seed = tf.constant([s, 1], tf.int64)
        np.testing.assert_allclose(pipelines.train_crop(data, seed, image_size=12),
                                   pipelines.train_crop(decoded, seed, image_size=12), atol=1e-5)
    flipped = [pipelines.train_crop(pixels, tf.constant([s, 7], tf.int64), image_size=12, scale=(1.0, 1.0))
               for s in range(8)]  # the whole image: crops differ only by the flip
    full = augment.normalize(augment.crop_and_resize(tf.constant(pixels), [0, 0, 30, 26], 12)).numpy()
    kinds = {bool(np.allclose(f, full, atol=1e-6)) for f in flipped}
    assert kinds == {True, False}


def test_eval_examples_of_a_subset_are_in_index_order():
    images = np.random.default_rng(2).integers(0, 255, (6, 10, 10, 1), dtype=np.uint8)
    source = sources.Source("toy", "array", 6, 2, tf.constant(images), np.array([0, 1, 0, 1, 0, 1], np.int64))
    got = list(pipelines.eval_examples(source, 8, indices=np.array([1, 4])).as_numpy_iterator())
    assert [int(y) for _, y in got] == [1, 0]
    np.testing.assert_allclose(got[1][0], augment.eval_preprocess(images[4], 8), atol=1e-6)


def _rasampler(perm, num_replicas, rank, repeats=3):
    """DeiT samplers.RASampler.__iter__ (shuffle=True), transcribed with `perm` as its torch.randperm; its last cut
    `len // 256 * 256 / R` is N // R here (order.py's docstring says why)."""
    n = len(perm)
    num_samples = int(np.ceil(n * repeats / num_replicas))
    total = num_samples * num_replicas
    indices = np.repeat(perm, repeats).tolist()
    indices += indices[:total - len(indices)]
    indices = indices[rank:total:num_replicas]
    return indices[:n // num_replicas]


def test_repeated_augmentation_is_deits_rasampler_over_the_replicas():
    n, batch, replicas = 24, 6, 2
    o = order.ExampleOrder(n, batch, seed=5, repeats=3, num_replicas=replicas)
    assert o.steps_per_epoch == 4
    items = _stream(o.epoch(0))
    perm = o.permutation(0).numpy()
    assert [p for _, p, _ in items] == list(range(n))  # positions count items of the repeated list
    index = np.array([i for i, _, _ in items]).reshape(-1, batch)[:, o.batch_rows()]  # rows of each global batch
    per_replica = batch // replicas
    for rank in range(replicas):
        got = index[:, rank * per_replica:(rank + 1) * per_replica].reshape(-1).tolist()
        assert got == _rasampler(perm, replicas, rank)
    # Every image of the epoch's first third appears 3 times, its copies on different replicas.
    counts = np.bincount(index.reshape(-1), minlength=n)
    assert sorted(set(counts.tolist())) == [0, 3] and (counts == 3).sum() == n // 3
    # One replica: the plain repeated list; repeats=1 keeps the default order bit for bit.
    single = order.ExampleOrder(n, batch, seed=5, repeats=3)
    assert [i for i, _, _ in _stream(single.epoch(0))] == np.repeat(perm, 3)[:n].tolist()
    assert _stream(order.ExampleOrder(n, batch, seed=5, repeats=1, num_replicas=2).epoch(0)) == _stream(
        order.ExampleOrder(n, batch, seed=5).epoch(0))
    with pytest.raises(ValueError, match="repeated_aug"):
        order.ExampleOrder(n, batch, seed=5, repeats=3, keep_partial_batch=True)


def test_repeated_augmentation_of_a_streamed_source_repeats_each_record():
    stream = tf.data.Dataset.range(12).map(lambda i: (i * 10, i))
    o = order.ExampleOrder(12, 4, seed=2, repeats=3)
    labels = [int(ex[1]) for ex, _, _ in o.streamed_epoch(stream, 0, shuffle_buffer=12)]
    assert len(labels) == 12 and all(labels[3 * k] == labels[3 * k + 1] == labels[3 * k + 2] for k in range(4))
