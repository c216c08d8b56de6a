"""The input layer at scale: prepare_data (shards, metadata, resume, bad images), random access by index per input
pipeline (epochs, hosts, resume reads), TFDS's imagenet2012 built as array_record, and every command on it; prepared
TFRecord sets for pods and gs:// (pure tf.data, shard checks, the pod check, start-up file-system calls)."""

import collections
import json
import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT
from tf_mocov3 import cli
from tf_mocov3 import config_lib
from tf_mocov3.data import order as order_lib
from tf_mocov3.data import pipelines
from tf_mocov3.data import prepare
from tf_mocov3.data import sources
from tf_mocov3.testing.fixtures_data import build_tfds_imagenet
from tf_mocov3.testing.fixtures_data import encode_image
from tf_mocov3.testing.fixtures_data import write_image_folder
from tf_mocov3.testing.fixtures_data import write_truncated
from tf_mocov3.training import pretrain


def dataset(path, split="train", **more):
    return config_lib.complete(dict(name="prepared", path=str(path), split=split, **more), part="dataset")


def write_indexed_set(out, n=24, shard=5, file_format="array_record", bad=()):
    """A prepared set whose record i has label i (so a label names the record read) and a tiny JPEG (or bytes that
    are no image for i in `bad`)."""
    os.makedirs(out, exist_ok=True)
    jpeg = encode_image(np.full((8, 8, 3), 128, np.uint8))
    shards = []
    for k, start in enumerate(range(0, n, shard)):
        name = f"train-{k:05d}-of-xxxxx.{file_format}"
        prepare.write_shard(os.path.join(out, name), (sources.encode_prepared_record(
            b"not an image" * 4 if i in bad else jpeg, i) for i in range(start, min(n, start + shard))))
        shards.append({"file": name, "num_examples": min(n, start + shard) - start})
    meta = {"format": sources.PREPARED_FORMAT, "file_format": file_format, "classes": [str(i) for i in range(n)],
            "splits": {"train": {"num_examples": n, "shards": shards}}}
    with open(os.path.join(out, sources.PREPARED_METADATA), "w") as f:
        json.dump(meta, f)
    return str(out)


def read_all(path, split="train"):
    source = sources.load_source(dataset(path, split))
    return [(bytes(image), int(label)) for image, label in pipelines.labelled_examples(source).as_numpy_iterator()]


# === prepare_data ===


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    write_image_folder(str(root / "train"), per_class=7, size=(20, 24))
    write_image_folder(str(root / "val"), per_class=2, size=(20, 24), seed=5)
    write_truncated(str(root / "train" / "dog" / "corrupt.jpg"), str(root / "train" / "dog" / "0.jpg"))
    return str(root)


def test_prepare_writes_every_good_image_with_its_label_and_names_the_corrupt_one(folder, tmp_path, caplog):
    out = str(tmp_path / "out")
    meta = prepare.prepare(folder, out, examples_per_shard=4, workers=1, progress=False)
    train = meta["splits"]["train"]
    assert meta["classes"] == ["cat", "dog"]
    assert (train["num_examples"], train["num_skipped"], len(train["shards"])) == (14, 1, 4)
    assert train["skipped"] == [[os.path.join(folder, "train", "dog", "corrupt.jpg"),
                                 "truncated JPEG (no end-of-image marker)"]]
    assert meta["splits"]["validation"]["num_examples"] == 4
    assert "Skipping bad image" in caplog.text and "corrupt.jpg" in caplog.text
    want = []
    for label, name in enumerate(["cat", "dog"]):
        for i in range(7):
            with open(os.path.join(folder, "train", name, f"{i}.{'png' if i % 2 else 'jpg'}"), "rb") as f:
                want.append((f.read(), label))
    assert read_all(out) == want  # the file bytes as they were, in sorted order
    assert sources.split_size(dataset(out)) == 14 and sources.split_size(dataset(out), "validation") == 4
    joined = sources.open_labelled(dataset(out), "train+validation")  # Flowers' "train+validation" style
    got = [(bytes(i), int(label)) for i, label in pipelines.labelled_examples(joined).as_numpy_iterator()]
    assert joined.kind == "records" and got == want + read_all(out, "validation")


def test_a_killed_write_resumes_without_rewriting_finished_shards(folder, tmp_path, monkeypatch):
    straight = str(tmp_path / "straight")
    prepare.prepare(folder, straight, examples_per_shard=4, workers=1, progress=False)
    out = str(tmp_path / "killed")
    real, written = prepare.write_shard, []

    def dies_on_the_third(path, records):
        if len(written) == 2:
            with open(f"{path}.tmp-999", "wb") as f:  # a half-written shard left behind by the kill
                f.write(b"partial")
            raise KeyboardInterrupt
        written.append(os.path.basename(path))
        return real(path, records)

    monkeypatch.setattr(prepare, "write_shard", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare(folder, out, examples_per_shard=4, workers=1, progress=False)
    assert not os.path.exists(os.path.join(out, sources.PREPARED_METADATA))
    with pytest.raises(ValueError, match="metadata.json is missing"):
        sources.load_source(dataset(out))
    first = list(written)
    written.clear()
    monkeypatch.setattr(prepare, "write_shard", lambda path, records: (written.append(os.path.basename(path)),
                                                                       real(path, records))[1])
    meta = prepare.prepare(folder, out, examples_per_shard=4, workers=1, progress=False)
    assert first == ["train-00000-of-00004.array_record", "train-00001-of-00004.array_record"]
    assert written == ["train-00002-of-00004.array_record", "train-00003-of-00004.array_record",
                       "validation-00000-of-00001.array_record"]
    assert not [n for n in os.listdir(out) if ".tmp-" in n]
    assert meta == json.load(open(os.path.join(straight, sources.PREPARED_METADATA))) | {"input": meta["input"]}
    assert read_all(out) == read_all(straight) and read_all(out, "validation") == read_all(straight, "validation")


def test_the_command_prints_the_counts_and_how_to_read_it(folder, tmp_path):
    out = str(tmp_path / "out")
    proc = subprocess.run([sys.executable, "-m", "tf_mocov3.prepare_data", f"--input={folder}", f"--output={out}",
                           "--examples_per_shard=8", "--workers=2", "--format=tfrecord"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(n for n in os.listdir(out) if n.endswith(".tfrecord")) == [
        "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord", "validation-00000-of-00001.tfrecord"]
    assert proc.stdout.splitlines() == [
        "train: 14 images in 2 shards, 1 skipped; 2 classes.",
        "validation: 4 images in 1 shards, 0 skipped; 2 classes.",
        f"Read it with --config.dataset.name=prepared --config.dataset.path={out}"]
    assert "train: shard 2/2, 15 images written this run of 15" in proc.stderr  # the progress line
    missing = str(tmp_path / "nothing")
    proc = subprocess.run([sys.executable, "-m", "tf_mocov3.prepare_data", f"--input={missing}", f"--output={out}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1] == (
        f"error: The input folder {missing} does not exist: pass --input=IMAGE_FOLDER with one sub-folder of images "
        f"per class (optionally inside train/ and val/).")


def test_missing_prepared_data_shard_and_split_are_one_sentence(folder, tmp_path):
    out = str(tmp_path / "out")
    with pytest.raises(ValueError) as err:
        sources.load_source(dataset(out))
    assert str(err.value) == (f"{out} holds no prepared data set (metadata.json is missing): write it with "
                              f"`python -m tf_mocov3.prepare_data --input=IMAGE_FOLDER --output={out}`.")
    prepare.prepare(folder, out, examples_per_shard=4, workers=1, progress=False)
    with pytest.raises(ValueError, match=r"has splits \['train', 'validation'\], not 'test'"):
        sources.split_size(dataset(out), "test")
    os.remove(os.path.join(out, "train-00002-of-00004.array_record"))
    with pytest.raises(ValueError) as err:
        sources.load_source(dataset(out))
    assert str(err.value) == (
        f"Shard {out}/train-00002-of-00004.array_record of {out} (train) is missing: run `python -m "
        f"tf_mocov3.prepare_data --input={folder} --output={out}` again to write the missing shards (finished "
        f"shards are kept).")
    empty = tmp_path / "empty"
    (empty / "cat").mkdir(parents=True)
    with pytest.raises(prepare.PrepareError, match="holds no images: put JPEG/PNG files in one sub-folder"):
        prepare.prepare(str(empty), str(tmp_path / "o2"), workers=1, progress=False)


def test_a_bad_record_at_read_time_is_skipped_counted_and_named(tmp_path, caplog):
    out = write_indexed_set(str(tmp_path / "set"), n=6, shard=6)
    jpeg = encode_image(np.full((8, 8, 3), 128, np.uint8))
    records = [sources.encode_prepared_record(jpeg if i != 3 else jpeg[:40], i) for i in range(6)]
    prepare.write_shard(os.path.join(out, "train-00000-of-xxxxx.array_record"), records)
    source = sources.load_source(dataset(out))
    labels = [int(label) for _, label in pipelines.labelled_examples(source).as_numpy_iterator()]
    assert labels == [0, 1, 2, 4, 5] and source.reader.skipped == 1
    assert "Skipping bad record 3 of" in caplog.text and "train-00000-of-xxxxx.array_record" in caplog.text


# === Order: hosts, epochs, resume ===


def pretrain_config(path, batch=8, seed=3):
    c = config_lib.base_config()
    c.dataset.name, c.dataset.path, c.dataset.image_size = "prepared", path, 16
    c.batch_size, c.seed = batch, seed
    return c


def test_each_host_reads_its_own_rows_and_every_epoch_is_a_fresh_permutation(tmp_path):
    path = write_indexed_set(str(tmp_path / "set"), n=24)
    config = pretrain_config(path)
    source = sources.load_source(config.dataset)
    steps = 24 // 8
    per_host = []
    for host in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=host, num_replicas_in_sync=2)
        order = pipelines.pretrain_order(config, source, input_context=ctx)
        labels = [int(label) for _, label, _, _ in pipelines.pretrain_examples(source, order).take(3 * steps * 4)
                  .as_numpy_iterator()]
        per_host.append(np.reshape(labels, [3, steps, 4]))  # epochs, steps, this host's 4 rows
    whole = np.concatenate(per_host, axis=2)  # the global batches
    for epoch in range(3):
        assert sorted(whole[epoch].ravel()) == list(range(24))  # each epoch covers the split once ...
        for host in range(2):
            assert len(set(per_host[host][epoch].ravel())) == 12  # ... each host a disjoint half of it
        want = order_lib.ExampleOrder(24, 8, 3).permutation(epoch).numpy()  # the order of order.py
        np.testing.assert_array_equal(whole[epoch].ravel(), want)
    assert not np.array_equal(whole[0], whole[1]) and not np.array_equal(whole[1], whole[2])


def test_resume_at_step_k_gives_the_same_batches_and_reads_no_record_before_k(tmp_path, monkeypatch):
    path = write_indexed_set(str(tmp_path / "set"), n=24)
    config = pretrain_config(path, batch=4)
    straight = list(pipelines.build_pretrain_dataset(config).take(9).as_numpy_iterator())
    reads = []
    monkeypatch.setattr(sources, "READ_HOOK", lambda indices: reads.append(tuple(indices.tolist())))
    monkeypatch.setattr(sources, "READ_BATCH", 4)  # one read per step, so each read names its step
    k = 7  # epoch 1, step 1 (6 steps per epoch)
    resumed = list(pipelines.build_pretrain_dataset(config, start_step=k).take(2).as_numpy_iterator())
    for a, b in zip(straight[k:], resumed):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    order = order_lib.ExampleOrder(24, 4, config.seed)
    step_of = {tuple(order.permutation(e).numpy()[s * 4:(s + 1) * 4].tolist()): e * 6 + s
               for e in range(4) for s in range(6)}
    steps_read = sorted(step_of[r] for r in reads)  # each read is exactly one step's records (KeyError if not)
    assert steps_read[0] == k and len(set(steps_read)) == len(steps_read)  # from step k on, each step read once


# === TFDS imagenet2012 built as array_record ===


@pytest.fixture(scope="module")
def imagenet_builds(tmp_path_factory):
    return {fmt: build_tfds_imagenet(tmp_path_factory.mktemp(fmt), file_format=fmt, per_class=5, val=3)
            for fmt in ("array_record", "tfrecord")}


def test_tfds_imagenet2012_array_record_is_read_by_index_as_the_tfrecord_build(imagenet_builds):
    def examples(fmt, split, **more):
        cfg = config_lib.complete(dict(name="imagenet2012", data_dir=imagenet_builds[fmt], **more), part="dataset")
        source = sources.load_source(cfg, split)
        examples = pipelines.labelled_examples(source).as_numpy_iterator()
        return source.kind, [(bytes(i), int(label)) for i, label in examples]

    kind, records = examples("array_record", "train")
    assert kind == "records" and len(records) == 10 and sorted(label for _, label in records) == [0] * 5 + [1] * 5
    assert examples("tfrecord", "train") == ("bytes", records)  # small: held in memory ("auto")
    assert examples("tfrecord", "train", in_memory="false") == ("stream", records)
    cfg = config_lib.complete(dict(name="imagenet2012", data_dir=imagenet_builds["array_record"]), part="dataset")
    assert sources.split_size(cfg, "validation") == 3
    config = pretrain_config("", batch=2)
    config.dataset.name, config.dataset.data_dir = "imagenet2012", imagenet_builds["array_record"]
    views = next(iter(pipelines.build_pretrain_dataset(config)))
    assert views[0].shape == (2, 16, 16, 3)


# === Every command on a prepared set ===


@pytest.fixture(scope="module")
def prepared(folder, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("prepared"))
    prepare.prepare(folder, out, examples_per_shard=4, workers=1, progress=False)
    return out


def test_finetune_probe_and_knn_run_on_a_prepared_set(prepared, tmp_path):
    from finetune_helpers import tiny_config  # pylint: disable=import-outside-toplevel
    from finetune_helpers import write_pretrained_dir  # pylint: disable=import-outside-toplevel
    from test_linear_probe import make_pretrained_dir  # pylint: disable=import-outside-toplevel
    from test_linear_probe import tiny_probe_config  # pylint: disable=import-outside-toplevel
    from tf_mocov3.evaluation import knn  # pylint: disable=import-outside-toplevel
    from tf_mocov3.training import finetune  # pylint: disable=import-outside-toplevel
    from tf_mocov3.training import linear_probe  # pylint: disable=import-outside-toplevel

    config = tiny_config(name="prepared", path=prepared, train_split="train", eval_split="validation")
    config.max_steps = 2
    refusal = r" is array_record, read through tf\.numpy_function \(our Python\), which the 2 input hosts of this TPU"
    with pytest.raises(finetune.FinetuneError, match=refusal):  # as pre-training: before any model is built
        finetune.run_finetune(config, str(tmp_path / "ft_pod"), write_pretrained_dir(tmp_path / "ftpre"),
                              strategy=FakePodSlice(2), print_fn=lambda _: None)
    result = finetune.run_finetune(config, str(tmp_path / "ft"), write_pretrained_dir(tmp_path / "ftpre"),
                                   print_fn=lambda _: None)
    assert result["step"] == 2 and result["model"].output.shape[-1] == 2

    pre = make_pretrained_dir(tmp_path / "pre")
    probe = tiny_probe_config(epochs=1, batch_size=4, eval_batch_size=4, train_examples=0, eval_examples=0)
    probe.dataset.name, probe.dataset.path, probe.dataset.eval_split = "prepared", prepared, "validation"
    probe.holdout_examples = 4
    with pytest.raises(linear_probe.ProbeError, match=refusal):
        linear_probe.run_probe(probe, pre, str(tmp_path / "probe_pod"), strategy=FakePodSlice(2),
                               print_fn=lambda _: None)
    metrics = linear_probe.run_probe(probe, pre, str(tmp_path / "probe"), print_fn=lambda _: None)
    assert 0.0 <= metrics["linear_probe_top1"] <= 100.0

    record = knn.evaluate_pretrained(pre, dataset="prepared", data_path=prepared, train_split="train",
                                     eval_split="validation", k=3, batch_size=4)
    assert (record["num_train"], record["num_eval"]) == (14, 4)


# === TFRecord prepared sets (pods, gs://, tf.data service), shard checks, start-up cost ===

PYTHON_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc"}


def graph_ops(ds):
    """Every op of a dataset's graph, its functions' included (what a TPU host or tf.data service worker runs)."""
    graph = tf.compat.v1.GraphDef.FromString(ds._as_serialized_graph().numpy())  # pylint: disable=protected-access
    ops = {node.op for node in graph.node}
    for function in graph.library.function:
        ops |= {node.op for node in function.node_def}
    return ops


def cut_in_half(path):
    """A copy cut short, as an interrupted `gsutil cp` leaves it."""
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2])


class FakePodSlice(tf.distribute.TPUStrategy):
    """A TPUStrategy as check_source_for and the run's start see it (hosts, replicas), without a TPU."""

    def __init__(self, hosts):  # pylint: disable=super-init-not-called
        self._extended = types.SimpleNamespace(num_hosts=hosts, _num_replicas_in_sync=hosts)


class FakeHosts:
    """A strategy of `pipelines` input pipelines of one replica each, as pretrain.make_dataset uses it: each
    pipeline's function is called here, as distribute_datasets_from_function calls it once per host."""

    def __init__(self, pipelines):
        self.num_replicas_in_sync = pipelines

    def distribute_datasets_from_function(self, fn):
        n = self.num_replicas_in_sync
        return [fn(tf.distribute.InputContext(n, p, n)) for p in range(n)]


def test_prepare_as_tfrecord_through_gfile_writes_the_array_record_records_and_resumes(folder, prepared, tmp_path,
                                                                                       monkeypatch):
    out = f"ram://{tmp_path.name}/set"  # TensorFlow's in-process file system: only tf.io.gfile reaches it
    real, written = prepare.write_shard, []

    def dies_on_the_second(path, records):
        if len(written) == 1:
            raise KeyboardInterrupt
        written.append(os.path.basename(path))
        return real(path, records)

    monkeypatch.setattr(prepare, "write_shard", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare(folder, out, examples_per_shard=4, workers=1, progress=False, file_format="tfrecord")
    monkeypatch.setattr(prepare, "write_shard", lambda path, records: (written.append(os.path.basename(path)),
                                                                       real(path, records))[1])
    meta = prepare.prepare(folder, out, examples_per_shard=4, workers=1, progress=False, file_format="tfrecord")
    assert written == [f"train-0000{k}-of-00004.tfrecord" for k in range(4)] + ["validation-00000-of-00001.tfrecord"]
    assert meta["file_format"] == "tfrecord" and not os.path.exists("ram:")  # no plain Python file call made a folder
    for shard in meta["splits"]["train"]["shards"]:
        assert shard["num_bytes"] == tf.io.gfile.stat(f"{out}/{shard['file']}").length
    source = sources.load_source(dataset(out))
    assert (source.kind, source.needs_python) == ("stream", False)
    assert read_all(out) == read_all(prepared) and read_all(out, "validation") == read_all(prepared, "validation")
    with pytest.raises(prepare.PrepareError, match=r"array_record cannot write to ram://.*pass --format=tfrecord"):
        prepare.prepare(folder, f"{out}2", workers=1, progress=False)


def test_a_tfrecord_set_is_read_by_pure_tf_data_in_a_new_order_each_epoch_and_resumes_exactly(tmp_path):
    config = pretrain_config(write_indexed_set(str(tmp_path / "tf"), n=12, shard=3, file_format="tfrecord"), batch=4)
    config.dataset.shuffle_buffer, config.dataset.cycle_length = 4, 2
    ds = pipelines.build_pretrain_dataset(config, with_labels=True)
    ops = graph_ops(ds)
    assert any(op.startswith("TFRecordDataset") for op in ops) and not ops & PYTHON_OPS  # what a pod host can run
    straight = list(ds.take(6).as_numpy_iterator())
    epochs = [sorted(int(label) for b in straight[e * 3:e * 3 + 3] for label in b[2]) for e in range(2)]
    assert epochs == [list(range(12))] * 2  # 3 steps of 4 per epoch, each epoch the whole split once ...
    assert [list(b[2]) for b in straight[:3]] != [list(b[2]) for b in straight[3:]]  # ... in a new order
    resumed = list(pipelines.build_pretrain_dataset(config, with_labels=True, start_step=4).take(2).as_numpy_iterator())
    for a, b in zip(straight[4:], resumed):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match=r"stored in 4 TFRecord files, fewer than the 5 input pipelines \(hosts\) "
                                         r"that each read their own files: prepare it again into a new --output with "
                                         r"a smaller --examples_per_shard, so that every host gets at least one shard"):
        pipelines.streamed_epoch_size(sources.load_source(config.dataset), 5)
    array_record = sources.load_source(dataset(write_indexed_set(str(tmp_path / "ar"), n=12, shard=3)))
    assert graph_ops(pipelines.labelled_examples(array_record)) & PYTHON_OPS  # what check_source_for refuses


def test_a_truncated_array_record_shard_stops_at_start_naming_it_and_prepare_rewrites_it(folder, prepared,
                                                                                         tmp_path):
    copy = str(tmp_path / "copy")
    shutil.copytree(prepared, copy)
    shard = os.path.join(copy, "train-00001-of-00004.array_record")
    cut_in_half(shard)
    with pytest.raises(ValueError) as err:
        sources.load_source(dataset(copy))
    assert str(err.value) == (
        f"Shard {shard} of {copy} (train) holds 0 records where its metadata lists 4 (a truncated or damaged copy): "
        f"copy it again from where it was written, or run `python -m tf_mocov3.prepare_data --input={folder} "
        f"--output={copy}` again, which rewrites it.")
    prepare.prepare(folder, copy, examples_per_shard=4, workers=1, progress=False)  # its size no longer matches
    assert read_all(copy) == read_all(prepared)


def test_a_truncated_tfrecord_file_stops_training_naming_it_while_a_bad_image_costs_one_example(tmp_path):
    path = write_indexed_set(str(tmp_path / "tf"), n=12, shard=3, file_format="tfrecord", bad=(5,))
    config = pretrain_config(path, batch=4)
    config.dataset.shuffle_buffer, config.dataset.cycle_length = 4, 2
    batches = list(pipelines.build_pretrain_dataset(config, with_labels=True).take(3).as_numpy_iterator())
    labels = [int(label) for b in batches for label in b[2]]
    assert sorted(labels[:11]) == [i for i in range(12) if i != 5]  # epoch 0 less the undecodable record 5
    shard = os.path.join(path, "train-00002-of-xxxxx.tfrecord")  # records 6, 7, 8
    cut_in_half(shard)
    left = len(list(tf.data.TFRecordDataset(shard).ignore_errors()))  # the whole records left in the cut file
    with pytest.raises(tf.errors.InvalidArgumentError) as err:
        list(pipelines.build_pretrain_dataset(config).take(3).as_numpy_iterator())
    sentence = (f"TFRecord file {shard} of {path} (train) holds {left} records where its metadata lists 3 (a "
                f"truncated or damaged copy): copy it again from where it was written, or run `python -m "
                f"tf_mocov3.prepare_data --input=IMAGE_FOLDER --output={path} --format=tfrecord` again, which "
                f"rewrites it.")
    assert sentence in str(err.value)
    assert cli.data_fault(err.value) == sentence  # what a command prints as its one error line, not the graph trace


def test_array_record_is_refused_on_a_pod_slice_at_start_and_tfrecord_is_not(tmp_path):
    array_record = write_indexed_set(str(tmp_path / "ar"), n=8, shard=4)
    tfrecord = write_indexed_set(str(tmp_path / "tf"), n=8, shard=4, file_format="tfrecord")
    config = pretrain_config(array_record, batch=4)
    workdir = str(tmp_path / "run")
    with pytest.raises(ValueError) as err:
        pretrain.run_pretraining(config, workdir, strategy=FakePodSlice(4))
    assert str(err.value) == (
        f"{array_record} (train) is array_record, read through tf.numpy_function (our Python), which the 4 input "
        f"hosts of this TPU pod slice cannot run: write the images as TFRecord with `python -m tf_mocov3.prepare_data "
        f"--format=tfrecord --input=IMAGE_FOLDER --output=DIR` and read DIR (`--config.dataset.name=prepared`).")
    assert not os.path.exists(os.path.join(workdir, pretrain.CONFIG_FILE))  # refused before anything was written
    sources.check_source_for(sources.load_source(dataset(tfrecord)), FakePodSlice(4))  # pure tf.data: accepted
    source = sources.load_source(dataset(array_record))
    sources.check_source_for(source, FakePodSlice(1))  # one TPU host: its pipeline runs in this process
    sources.check_source_for(source, tf.distribute.get_strategy())


def startup_calls(monkeypatch, path, hosts):
    """{tf.io.gfile function: calls} of opening the prepared set at `path` and building the pre-training input of
    `hosts` input pipelines (pretrain.make_dataset), and the per-pipeline datasets."""
    calls = collections.Counter()

    def counted(name, real):
        return lambda *args, **kwargs: (calls.update([name]), real(*args, **kwargs))[1]

    config = pretrain_config(path, batch=4)
    for name in ("exists", "listdir", "GFile", "stat", "glob", "isdir", "walk"):
        monkeypatch.setattr(tf.io.gfile, name, counted(name, getattr(tf.io.gfile, name)))
    datasets = pretrain.make_dataset(config, FakeHosts(hosts), 0, 2)
    monkeypatch.undo()
    return dict(calls), datasets


def test_start_up_makes_two_file_system_calls_whatever_the_shards_and_hosts(tmp_path, monkeypatch):
    # Before: every pipeline reopened the set (metadata exists + read, one exists per shard) and so did the step
    # count: (hosts + 1) * (shards + 2) calls, 33,858 for 1,024 shards and 32 hosts. Now: one metadata read, one
    # listing of the split's folder.
    small = startup_calls(monkeypatch, write_indexed_set(str(tmp_path / "a"), n=16, shard=4, file_format="tfrecord"),
                          hosts=1)
    large, datasets = startup_calls(monkeypatch, write_indexed_set(str(tmp_path / "b"), n=16, shard=1,
                                                                   file_format="tfrecord"), hosts=4)
    assert small[0] == large == {"GFile": 1, "listdir": 1}
    assert len(datasets) == 4 and all(ds.element_spec["views"][0].shape[1:] == (16, 16, 3) for ds in datasets)
