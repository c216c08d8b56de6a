"""TFDS sets stored as TFRecord (no random access), streamed: each input pipeline (host) reads only its own files,
every epoch in a new seeded file order, interleaved and shuffled (order.py), with exact resume; read from TFDS's own
imagenet2012 build in 4 shards."""

import os

import numpy as np
import pytest
import tensorflow as tf

from tf_mocov3 import config_lib
from tf_mocov3.data import pipelines
from tf_mocov3.data import sources
from tf_mocov3.testing.fixtures_data import build_tfds_imagenet

TRAIN, FILES = 12, 4  # 2 classes x 6 images in 4 TFRecord files of 3


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return build_tfds_imagenet(tmp_path_factory.mktemp("tfrecord"), per_class=TRAIN // 2, val=4, num_shards=FILES)


def streamed(data_dir, split="train"):
    cfg = config_lib.complete(dict(name="imagenet2012", data_dir=data_dir, in_memory=False), part="dataset")
    return sources.open_labelled(cfg, split)


def pretrain_config(data_dir, batch=4, seed=3):
    c = config_lib.base_config()
    c.dataset.name, c.dataset.data_dir = "imagenet2012", data_dir
    c.dataset.in_memory, c.dataset.image_size = "false", 16
    c.dataset.shuffle_buffer, c.dataset.cycle_length = 4, 2
    c.batch_size, c.seed = batch, seed
    return c


def host(pipeline, pipelines_=2, replicas=2):
    return tf.distribute.InputContext(num_input_pipelines=pipelines_, input_pipeline_id=pipeline,
                                      num_replicas_in_sync=replicas)


def test_tfrecord_files_are_read_in_any_order_each_record_with_its_index_in_the_split(data_dir):
    source = streamed(data_dir)
    assert source.kind == "stream" and source.num_examples == TRAIN and source.reader.counts == [3] * FILES
    whole = [bytes(image) for image, _ in source.stream().as_numpy_iterator()]
    assert len(set(whole)) == TRAIN

    def read(files, cycle):
        return [(int(i), bytes(image)) for i, image, _ in source.reader.read(files, cycle).as_numpy_iterator()]

    assert read([2, 0], 1) == [(i, whole[i]) for i in (6, 7, 8, 0, 1, 2)]
    assert [i for i, _ in read([0, 1, 2, 3], 2)] == [0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8, 11]
    subset = [bytes(image) for image, _ in pipelines.labelled_examples(source, [1, 7]).as_numpy_iterator()]
    assert subset == [whole[1], whole[7]]
    joined = streamed(data_dir, "train+validation")  # streamed splits join like the other kinds
    assert joined.kind == "stream" and joined.num_examples == TRAIN + 4
    assert [bytes(image) for image, _ in joined.stream().as_numpy_iterator()][:TRAIN] == whole


def test_two_hosts_read_their_own_files_and_each_epoch_covers_the_split_once_in_a_new_order(data_dir):
    config = pretrain_config(data_dir)
    source = streamed(data_dir)
    whole = [bytes(image) for image, _ in source.stream().as_numpy_iterator()]
    file_of = {image: i // 3 for i, image in enumerate(whole)}
    steps = TRAIN // 4
    per_host = []
    for p in range(2):
        order = pipelines.pretrain_order(config, source, input_context=host(p))
        assert (order.num_examples, order.steps_per_epoch, order.rows) == (TRAIN, steps, 2)
        one_epoch = pipelines.streamed_epochs(source, order, shuffle_buffer=4, cycle_length=2, pipeline=p,
                                              pipelines=2)
        epochs = []
        for epoch in range(3):
            rows = [(bytes(ex[0]), int(position)) for ex, position, _ in one_epoch(epoch).as_numpy_iterator()]
            assert {file_of[image] for image, _ in rows} == {p, p + 2}  # host p reads files p and p + 2 only
            assert [position for _, position in rows] == [s * 4 + 2 * p + r for s in range(steps) for r in range(2)]
            epochs.append([image for image, _ in rows])
        assert epochs[0] != epochs[1] and epochs[1] != epochs[2]  # a new order every epoch
        per_host.append(epochs)
    for epoch in range(3):
        assert sorted(per_host[0][epoch] + per_host[1][epoch]) == sorted(whole)  # disjoint shares cover the split
    # Shares of unequal size: every host serves the smallest share's steps (hosts 0, 1, 2 hold 6, 3, 3 records).
    assert pipelines.streamed_epoch_size(source, 3) == 9


def test_a_restarted_host_sees_the_batches_of_the_straight_run(data_dir):
    config = pretrain_config(data_dir)
    for p in range(2):
        straight = list(pipelines.build_pretrain_dataset(config, input_context=host(p)).take(8).as_numpy_iterator())
        k = 4  # epoch 1, step 1 (3 steps per epoch)
        resumed = list(pipelines.build_pretrain_dataset(config, input_context=host(p), start_step=k).take(3)
                       .as_numpy_iterator())
        for a, b in zip(straight[k:], resumed):
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])


def test_one_host_with_two_replicas_serves_the_rows_of_one_replica(data_dir):
    config = pretrain_config(data_dir)
    one = list(pipelines.build_pretrain_dataset(config).take(3).as_numpy_iterator())
    two = list(pipelines.build_pretrain_dataset(config, input_context=host(0, 1, 2)).take(6).as_numpy_iterator())
    for step in range(3):  # one pipeline emits its replicas' per-replica batches in replica order
        np.testing.assert_array_equal(one[step][0], np.concatenate([two[2 * step][0], two[2 * step + 1][0]]))


def test_a_fine_tuning_subset_is_read_whole_every_epoch_in_a_new_order(data_dir):
    source = streamed(data_dir)
    whole = [bytes(image) for image, _ in source.stream().as_numpy_iterator()]
    subset = [0, 4, 5, 9, 11]
    order = pipelines.order_lib.ExampleOrder(pipelines.streamed_epoch_size(source, indices=subset), 2, seed=1,
                                             keep_partial_batch=True)
    one_epoch = pipelines.streamed_epochs(source, order, shuffle_buffer=3, cycle_length=2, indices=subset)
    epochs = [[bytes(ex[0]) for ex, _, _ in one_epoch(e).as_numpy_iterator()] for e in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == sorted(whole[i] for i in subset)
    assert len({tuple(epoch) for epoch in epochs}) > 1


def test_more_hosts_than_files_is_one_sentence_naming_the_fix(data_dir):
    config = pretrain_config(data_dir, batch=8)
    with pytest.raises(ValueError, match=r"stored in 4 TFRecord files, fewer than the 8 input pipelines .*"
                                         r"--file_format=array_record"):
        pipelines.build_pretrain_dataset(config, input_context=host(0, 8, 8))


def test_a_missing_tfrecord_file_is_named_at_start(data_dir, tmp_path):
    import shutil  # pylint: disable=import-outside-toplevel

    copy = str(tmp_path / "copy")
    shutil.copytree(data_dir, copy)
    version = os.path.join(copy, "imagenet2012", os.listdir(os.path.join(copy, "imagenet2012"))[0])
    os.remove(os.path.join(version, "imagenet2012-train.tfrecord-00002-of-00004"))
    with pytest.raises(ValueError, match=r"imagenet2012-train.tfrecord-00002-of-00004 of imagenet2012/train is "
                                         r"missing: rebuild it"):
        streamed(copy)


def test_array_record_shards_on_gcs_are_refused_at_start_with_the_fix():
    with pytest.raises(ValueError, match=r"imagenet2012/train is stored as array_record under gs://, which "
                                         r"array_record cannot read .*gsutil -m cp -r.*or read a TFRecord build"):
        sources.RecordReader(["gs://bucket/imagenet2012-train.array_record-00000-of-00001"], [10], None,
                             name="imagenet2012/train")
