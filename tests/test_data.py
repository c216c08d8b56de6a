"""Facts about the data sources, the example order and the pre-training pipeline."""

import logging
import os

import numpy as np
import pytest
import tensorflow as tf

from augment_reference import two_views
from tf_mocov3 import config_lib
from tf_mocov3.data import augment
from tf_mocov3.data import order as order_lib
from tf_mocov3.data import pipelines
from tf_mocov3.data import sources as data
from tf_mocov3.testing import fixtures_data
from tf_mocov3.testing.fixtures_data import write_idx as _write_idx


def test_read_idx_parses_magic_dims_big_endian(tmp_path):
    imgs = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", imgs)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "a.gz"), imgs)
    ints = np.array([1, 256, 70000], np.int32)
    _write_idx(tmp_path / "b.gz", ints, code=0x0C)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "b.gz"), ints)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        data.read_idx(tmp_path / "bad")


def _fake_fashion(tmp_path, n=40):
    return fixtures_data.random_fashion_mnist(tmp_path, n=n, seed=0)


@pytest.mark.skipif(not os.path.isdir(data.FASHION_MNIST_DIR), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist_shape():
    images, labels = data.load_fashion_mnist_idx(None, "train")
    assert images.shape == (60000, 28, 28, 1) and labels.shape == (60000,) and labels.max() == 9


def _write_folder(root):
    fixtures_data.write_mixed_image_folder(root, seed=1)  # 4 images, a truncated JPEG, a text file


def test_image_folder_skips_corrupt_file_with_warning(tmp_path, caplog):
    _write_folder(tmp_path)
    with caplog.at_level(logging.WARNING):
        files, labels, classes = data.list_image_folder(str(tmp_path))
    assert classes == ["a_dog", "b_cat"] and len(files) == 4 and list(labels) == [0, 0, 1, 1]
    assert any("corrupt.jpg" in r.getMessage() for r in caplog.records)
    assert any("Skipped 1 of 5" in r.getMessage() for r in caplog.records)
    cfg = _config("image_folder", str(tmp_path), batch=2, size=16)
    v1, v2 = next(iter(pipelines.build_pretrain_dataset(cfg)))
    assert v1.shape == (2, 16, 16, 3) and v2.shape == (2, 16, 16, 3)
    source = data.open_labelled(cfg.dataset, "train")
    assert (source.num_classes, source.num_examples) == (2, 4) and len(list(pipelines.labelled_examples(source))) == 4


def test_empty_or_missing_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        data.list_image_folder(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="holds no images"):
        data.list_image_folder(str(tmp_path))


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="fashion_mnist_idx"):
        data.load_source(config_lib.complete(dict(name="mnist"), part="dataset"))


def test_unprepared_tfds_gives_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"not prepared.*tfds build cifar10"):
        data.load_source(config_lib.complete(dict(name="cifar10", data_dir=str(tmp_path)), part="dataset"))
    with pytest.raises(ValueError, match="downloads/manual"):
        data.load_source(config_lib.complete(dict(name="imagenet2012", data_dir=str(tmp_path)), part="dataset"))


# --- ordering contract ---


def _config(name, path, batch, size=8, seed=3):
    return config_lib.complete(dict(seed=seed, batch_size=batch, dataset=dict(
        name=name, path=path, split="train", image_size=size, crop_min=0.08, threads=0)), "pretrain")


class _Ctx:
    def __init__(self, replicas, pipelines, pipeline):
        self.num_replicas_in_sync = replicas
        self.num_input_pipelines = pipelines
        self.input_pipeline_id = pipeline


def _take(ds, k):
    return [np.concatenate([v1.numpy(), v2.numpy()], -1) for v1, v2 in ds.take(k)]


def test_replica_batches_concatenate_to_the_global_batch(tmp_path):
    cfg = _config("fashion_mnist_idx", _fake_fashion(tmp_path), batch=8)  # 5 steps per epoch
    steps = 7  # crosses an epoch boundary
    one = _take(pipelines.build_pretrain_dataset(cfg), steps)
    assert one[0].shape == (8, 8, 8, 6)
    two = _take(pipelines.build_pretrain_dataset(cfg, input_context=_Ctx(2, 1, 0)), 2 * steps)
    assert two[0].shape == (4, 8, 8, 6)
    w0 = _take(pipelines.build_pretrain_dataset(cfg, input_context=_Ctx(2, 2, 0)), steps)
    w1 = _take(pipelines.build_pretrain_dataset(cfg, input_context=_Ctx(2, 2, 1)), steps)
    for b in range(steps):
        np.testing.assert_array_equal(np.concatenate(two[2 * b: 2 * b + 2]), one[b])
        np.testing.assert_array_equal(np.concatenate([w0[b], w1[b]]), one[b])
    assert not np.allclose(one[0], one[5])  # next epoch: new order and new seeds


def test_start_step_resumes_exactly(tmp_path):
    cfg = _config("fashion_mnist_idx", _fake_fashion(tmp_path), batch=8)
    full = _take(pipelines.build_pretrain_dataset(cfg), 9)
    resumed = _take(pipelines.build_pretrain_dataset(cfg, start_step=6), 3)
    for a, b in zip(full[6:], resumed):
        np.testing.assert_array_equal(a, b)
    assert data.steps_per_epoch(cfg) == 5 and data.num_train_examples(cfg) == 40


def test_epoch_visits_every_example_once(tmp_path):
    # With raw (non-augmented) indices: the epoch order is a permutation seeded by (seed, epoch).
    order = tf.random.experimental.stateless_shuffle(tf.range(40, dtype=tf.int64),
                                                     seed=tf.constant([3, 0], tf.int64)).numpy()
    assert sorted(order) == list(range(40))


def test_pipeline_views_equal_two_views_per_example(tmp_path):
    # The pipeline augments once per batch; each example still gets exactly the reference two_views
    # with its contract seed [seed, epoch * 2**32 + position].
    path = _fake_fashion(tmp_path)
    cfg = _config("fashion_mnist_idx", path, batch=8)
    v1, v2 = next(iter(pipelines.build_pretrain_dataset(cfg)))
    assert v1.dtype == v2.dtype == tf.uint8  # a quarter of float32's bytes cross to the device
    images, _ = data.load_fashion_mnist_idx(path, "train")
    order = tf.random.experimental.stateless_shuffle(tf.range(40, dtype=tf.int64),
                                                     seed=tf.constant([3, 0], tf.int64)).numpy()
    for pos in range(8):
        r1, r2 = two_views(images[order[pos]], order_lib.example_seed(3, 0, pos), image_size=8,
                                   crop_min=0.08, is_encoded=False)
        # uint8 views: at most 0.5/255 per value from the rounding plus 1e-5 of float round-off, over the smallest
        # ImageNet std once normalised (as tests/test_augment.py)
        atol = (0.5 / 255 + 1e-5) / min(augment.IMAGENET_STD)
        np.testing.assert_allclose(augment.normalize_uint8(v1[pos]), r1, atol=atol)
        np.testing.assert_allclose(augment.normalize_uint8(v2[pos]), r2, atol=atol)
