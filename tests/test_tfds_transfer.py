"""A transfer set built by TFDS itself: cifar10 from tiny archives in the release's format (fixtures_data), read by
name held in memory, streamed or (an array_record build) by index, and fine-tuning, the linear probe and the kNN
command on the held and the streamed split."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from finetune_helpers import tiny_config
from finetune_helpers import write_pretrained_dir
from test_linear_probe import make_pretrained_dir
from test_linear_probe import tiny_probe_config
from tf_mocov3 import config_lib
from tf_mocov3.data import order as order_lib
from tf_mocov3.data import pipelines
from tf_mocov3.data import sources
from tf_mocov3.evaluation import knn
from tf_mocov3.testing.fixtures_data import build_tfds_cifar10
from tf_mocov3.training import finetune
from tf_mocov3.training import linear_probe

TRAIN_PER_CLASS, TEST_PER_CLASS = 4, 2
KINDS = {"true": "bytes", "false": "stream"}  # config.dataset.in_memory (a string field) -> Source.kind
OTHER = {"true": "false", "false": "true"}


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """(data_dir, what write_cifar10 wrote): TFDS's cifar10 built once for this module (40 train, 20 test)."""
    return build_tfds_cifar10(tmp_path_factory.mktemp("tfds"), train_per_class=TRAIN_PER_CLASS,
                              test_per_class=TEST_PER_CLASS)


@pytest.fixture(scope="module")
def cifar_array_record(tmp_path_factory):
    """The same images built by TFDS as array_record (`tfds build cifar10 --file_format=array_record`)."""
    return build_tfds_cifar10(tmp_path_factory.mktemp("tfds_ar"), file_format="array_record",
                              train_per_class=TRAIN_PER_CLASS, test_per_class=TEST_PER_CLASS)[0]


@pytest.fixture(scope="module")
def pretrained_dirs(tmp_path_factory):
    """Tiny pre-training workdirs (read-only): "finetune" (finetune_helpers'), "probe" (test_linear_probe's)."""
    tmp = tmp_path_factory.mktemp("pretrained")
    return {"finetune": write_pretrained_dir(tmp / "finetune"), "probe": make_pretrained_dir(tmp / "probe")}


def dataset(root, in_memory="auto", **more):
    return config_lib.complete(dict(name="cifar10", data_dir=root, in_memory=in_memory, **more), part="dataset")


def read(root, split, in_memory):
    source = sources.load_source(dataset(root, in_memory), split)
    return source, [(bytes(image), int(label))
                    for image, label in pipelines.labelled_examples(source).as_numpy_iterator()]


def test_cifar10_counts_come_from_metadata_and_every_image_reads_back_pixel_exact(cifar, cifar_array_record,
                                                                                   monkeypatch):
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    root, written = cifar

    def no_reading(*args, **kwargs):
        raise AssertionError("split_size read the split")

    with monkeypatch.context() as m:
        m.setattr(sources, "_tfds_encoded", no_reading)
        assert sources.split_size(dataset(root), "train") == 10 * TRAIN_PER_CLASS == len(written["train"][1])
        assert sources.split_size(dataset(root), "test") == 10 * TEST_PER_CLASS == len(written["test"][1])
    builder = tfds.builder("cifar10", data_dir=root)
    assert builder.info.features["label"].names[:3] == ["airplane", "automobile", "bird"]  # batches.meta.txt
    for split in ("train", "test"):
        # TFDS numbers the records of a split by file and place ("train_00007"), then writes them shuffled by key.
        ids = [int(ex["id"].decode().split("_")[1])
               for ex in builder.as_dataset(split=split, shuffle_files=False).as_numpy_iterator()]
        images, labels = written[split]
        assert sorted(ids) == list(range(len(labels))) and ids != sorted(ids)
        held, examples = read(root, split, "true")
        streamed, streamed_examples = read(root, split, "false")
        assert (held.kind, streamed.kind, held.num_classes, streamed.num_examples) == ("bytes", "stream", 10,
                                                                                        len(labels))
        assert streamed_examples == examples  # the same records in the same (TFDS's) order
        by_index, by_index_examples = read(cifar_array_record, split, "auto")  # random access on disk
        assert by_index.kind == "records" and by_index_examples == examples
        for (png, label), i in zip(examples, ids):
            np.testing.assert_array_equal(tf.io.decode_png(png).numpy(), images[i])
            assert label == labels[i]
        some = [1, 2, 5, len(labels) - 2]  # a subset (a holdout, the first eval images) reads the same both ways
        for source in (held, streamed, by_index):
            got = pipelines.labelled_examples(source, some).as_numpy_iterator()
            assert [(bytes(i), int(label)) for i, label in got] == [examples[k] for k in some]


def laid_out(held, indices, global_batch, seed):
    """The in-memory split re-ordered so that epoch 0 of order.py visits TFDS's records in TFDS's order: position p of
    the epoch over `indices` (None: all) takes the p-th of them, as a stream with a shuffle buffer of 1 does."""
    subset = np.arange(held.num_examples) if indices is None else np.asarray(indices)
    permutation = order_lib.ExampleOrder(len(subset), global_batch, seed).permutation(0).numpy()
    where = np.arange(held.num_examples)
    where[subset[permutation]] = subset  # index subset[permutation[p]] holds TFDS record subset[p]
    return sources.Source("cifar10", "bytes", held.num_examples, 10, tf.gather(held.images, where), held.labels[where])


def assert_same_batches(got, want, steps):
    assert len(got) == len(want) == steps
    for (images, targets), (want_images, want_targets) in zip(got, want):
        np.testing.assert_array_equal(images, want_images)
        np.testing.assert_array_equal(targets, want_targets)


def test_training_input_on_the_stream_follows_the_order_rules_of_the_in_memory_split(cifar):
    """order.py: a streamed epoch takes positions and seeds as an in-memory one, its permutation being the shuffle
    buffer's. With a buffer of 1 the stream keeps TFDS's order, so the in-memory split laid out such that epoch 0's
    permutation gives TFDS's order must get identical batches: fine-tuning's crops, flips, random erasing and mixup /
    cutmix, and the linear probe's crops of a subset (its training images without the holdout) with a last partial
    batch."""
    root, _ = cifar
    config = tiny_config(name="cifar10", data_dir=root, in_memory="false", shuffle_buffer=1)
    config.aug.random_erasing = 0.5
    stream = finetune.load_split(config.dataset, "train")
    held = finetune.load_split(dataset(root, "true"), "train")
    batch, seed, steps = int(config.batch_size), int(config.seed), held.num_examples // int(config.batch_size)
    got = list(finetune.build_train_dataset(config, stream).take(steps).as_numpy_iterator())  # all of epoch 0
    want = finetune.build_train_dataset(config, laid_out(held, None, batch, seed)).take(steps)
    assert_same_batches(got, list(want.as_numpy_iterator()), steps)
    assert got[0][0].shape == (batch, 16, 16, 3) and got[0][1].shape == (batch, 10)
    # Every training image once per epoch: the mixed soft targets sum to the split's class counts (mixup moves
    # weight between the rows of a batch, smoothing spreads it evenly).
    np.testing.assert_allclose(np.sum([t.sum(0) for _, t in got], axis=0), np.full(10, TRAIN_PER_CLASS), rtol=1e-5)

    indices = np.setdiff1d(np.arange(held.num_examples), [0, 3, 17, 22, 38])  # 35 images: batches of 8, then 3
    probe = dict(indices=indices, global_batch=8, seed=seed, image_size=16, crop_scale=(0.08, 1.0),
                 keep_partial_batch=True, end_epoch=1)  # as linear_probe.run_probe calls it
    got = list(pipelines.labelled_train_dataset(stream, shuffle_buffer=1, **probe).as_numpy_iterator())
    want = pipelines.labelled_train_dataset(laid_out(held, indices, 8, seed), **probe)
    assert_same_batches(got, list(want.as_numpy_iterator()), 5)
    assert [len(labels) for _, labels in got] == [8, 8, 8, 8, 3]
    assert sorted(np.concatenate([labels for _, labels in got])) == sorted(held.labels[indices])


@pytest.mark.parametrize("in_memory", ["true", "false"])
def test_finetune_runs_on_the_tfds_split_held_or_streamed(cifar, pretrained_dirs, tmp_path, in_memory):
    root, _ = cifar
    config = tiny_config(name="cifar10", data_dir=root, in_memory=in_memory, train_split="train",
                         eval_split="test")
    config.max_steps, config.eval.max_examples = 2, 0  # 2 steps of 4; evaluate on all 20 test images
    lines = []
    result = finetune.run_finetune(config, str(tmp_path / "ft"), pretrained_dirs["finetune"], print_fn=lines.append)
    assert result["step"] == 2 and result["model"].output.shape[-1] == 10
    assert any("on cifar10 (40 images, 10 classes)" in line for line in lines)
    # The run's top-1 is that of its model on the test split read the other way (streamed vs held).
    other = finetune.load_split(dataset(root, OTHER[in_memory]), "test")
    kinds = (finetune.load_split(config.dataset, "test").kind, other.kind)
    assert kinds == (KINDS[in_memory], KINDS[OTHER[in_memory]])
    predicted = finetune._make_predict_fn(result["model"], 16)  # pylint: disable=protected-access
    top1 = finetune.evaluate_top1(predicted, finetune.build_eval_dataset(config, other))
    assert result["top1"] == top1


def probe_config(root, in_memory, cache_features):
    probe = tiny_probe_config(epochs=1, batch_size=8, eval_batch_size=8, train_examples=0, eval_examples=0,
                              holdout_examples=8, holdout_fraction=0.0, cache_features=cache_features)
    probe.dataset.update(name="cifar10", path="", data_dir=root, in_memory=in_memory, eval_split="test")
    return probe


def streamed_splits(caplog):
    """The splits sources.load_source streamed since the last caplog.clear() (its warning names each one)."""
    messages = [record.getMessage() for record in caplog.records]
    return sorted(m.split(" ")[0] for m in messages if "(no random access): streaming" in m)


def test_linear_probe_on_the_stream_equals_the_held_split(cifar, pretrained_dirs, tmp_path, caplog):
    root, _ = cifar
    pre = pretrained_dirs["probe"]
    runs, lines = {}, []
    for in_memory in ("true", "false"):
        caplog.clear()
        runs[in_memory] = linear_probe.run_probe(probe_config(root, in_memory, True), pre,
                                                 str(tmp_path / f"probe_{in_memory}"), print_fn=lines.append)
        assert streamed_splits(caplog) == {"true": [], "false": ["cifar10/test", "cifar10/train"]}[in_memory]
    # Cached features are embedded in index order, so both kinds train the heads on the same numbers.
    assert runs["true"]["linear_probe_table"] == runs["false"]["linear_probe_table"]
    assert runs["false"]["linear_probe_step"] == 4  # ceil(32 / 8) steps: 40 - 8 holdout images, one epoch
    assert sum("32 train / 8 holdout (from 'train') / 20 test ('test')" in line for line in lines) == 2


def test_knn_command_on_the_stream_equals_the_held_split(cifar, pretrained_dirs, tmp_path, caplog):
    root, _ = cifar
    records = {}
    for in_memory in ("true", "false"):
        caplog.clear()
        pre = shutil.copytree(pretrained_dirs["probe"], str(tmp_path / f"pre_{in_memory}"))
        path = os.path.join(pre, "config.json")
        with open(path) as f:
            run = json.load(f)
        # A run pre-trained on cifar10: the command reads the run's data set as the run did (held or streamed).
        run["dataset"].update(name="cifar10", path="", data_dir=root, in_memory=in_memory)
        with open(path, "w") as f:
            json.dump(run, f)
        records[in_memory] = knn.evaluate_pretrained(pre, k=3, batch_size=8)
        assert streamed_splits(caplog) == {"true": [], "false": ["cifar10/test", "cifar10/train"]}[in_memory]
    assert (records["false"]["num_train"], records["false"]["num_eval"]) == (40, 20)
    assert records["false"]["knn_top1"] == records["true"]["knn_top1"]
