"""The pre-training input on a tf.data service (config.dataset.data_service): its workers are processes with TensorFlow
and none of tf_mocov3, exactly as a TPU pod's input hosts are, so what they run is the graph alone."""

import json
import os
import subprocess
import sys
import sysconfig

import numpy as np
import pytest
import tensorflow as tf

from conftest import needs_fmnist
from tf_mocov3 import config_lib
from tf_mocov3.data import prepare
from tf_mocov3.testing.fixtures_data import write_image_folder
from tf_mocov3.training import pretrain

# A dispatcher and one worker in a process that cannot import tf_mocov3: cwd is an empty folder, and `python -S` with
# PYTHONPATH = site-packages reaches TensorFlow without running the .pth files, one of which is the editable install
# of tf_mocov3 (scripts/setup.sh).
# It prints whether tf_mocov3 is importable, then the dispatcher's address, and serves until stdin closes.
SERVICE = """
import importlib.util, sys
import tensorflow as tf
service = tf.data.experimental.service
dispatcher = service.DispatchServer()
address = dispatcher.target.split("://")[1]
worker = service.WorkerServer(service.WorkerConfig(dispatcher_address=address))
print(importlib.util.find_spec("tf_mocov3") is not None, dispatcher.target, flush=True)
sys.stdin.read()
print(sorted(m for m in sys.modules if m.startswith("tf_mocov3")), flush=True)
"""


@pytest.fixture(scope="module")
def data_service(tmp_path_factory):
    """grpc://localhost:PORT of a dispatcher with one worker, in a process that has no tf_mocov3."""
    env = dict(os.environ, PYTHONPATH=sysconfig.get_paths()["purelib"])
    proc = subprocess.Popen([sys.executable, "-S", "-c", SERVICE], cwd=tmp_path_factory.mktemp("service"), env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    importable, target = proc.stdout.readline().split()
    assert importable == "False", "the service process must not be able to import tf_mocov3"
    yield target
    out, _ = proc.communicate("", timeout=60)
    assert out.strip() == "[]"  # nothing of ours was ever imported there


def _config(tiny_config, tmp_path, **dataset):
    config, _ = tiny_config(tmp_path)
    config.dataset.update(dataset)
    return config


@needs_fmnist
def test_service_batches_equal_the_local_pipeline(tiny_config, tmp_path, data_service):
    config = _config(tiny_config, tmp_path)
    strategy = tf.distribute.get_strategy()
    local = list(pretrain.make_dataset(config, strategy, 2, 5).as_numpy_iterator())
    config.dataset.data_service = data_service
    served = list(pretrain.make_dataset(config, strategy, 2, 5).as_numpy_iterator())
    assert len(served) == len(local) == 3
    for mine, theirs in zip(local, served):  # the same graph on the same kernels: bit-equal
        tf.nest.assert_same_structure(mine, theirs)  # {"views": (v1, v2), "skipped_records": n}
        for a, b in zip(tf.nest.flatten(mine), tf.nest.flatten(theirs)):
            np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def prepared_sets(tmp_path_factory):
    """A 16-image folder prepared as TFRecord (the pod format) and as array_record: {format: path}."""
    root = tmp_path_factory.mktemp("service_data")
    folder = str(root / "images")
    write_image_folder(folder, per_class=8)
    out = {}
    for file_format in ("tfrecord", "array_record"):
        out[file_format] = str(root / file_format)
        prepare.prepare(folder, out[file_format], examples_per_shard=4, workers=1, progress=False,
                        file_format=file_format)
    return out


def _prepared_config(tiny_config, tmp_path, path, data_service=""):
    return _config(tiny_config, tmp_path, name="prepared", path=path, data_service=data_service)


def test_a_tfrecord_set_trains_through_the_service_with_the_local_losses(tiny_config, tmp_path, data_service,
                                                                        prepared_sets):
    losses = {}
    for name, address in (("local", ""), ("service", data_service)):
        config = _prepared_config(tiny_config, tmp_path, prepared_sets["tfrecord"], address)
        workdir = str(tmp_path / name)
        pretrain.run_pretraining(config, workdir, print_fn=lambda line: None)
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            losses[name] = [r["loss"] for r in map(json.loads, f) if "loss" in r]
    assert len(losses["local"]) == 4
    assert losses["service"] == losses["local"]  # same batches, same model, same kernels: the same floats


def test_array_record_is_refused_at_start_with_the_service_on(tiny_config, tmp_path, prepared_sets):
    # No service needed: the refusal comes before anything is built or sent.
    config = _prepared_config(tiny_config, tmp_path, prepared_sets["array_record"], "grpc://localhost:1")
    workdir = str(tmp_path / "refused")
    with pytest.raises(ValueError, match=r" is array_record, read through tf\.numpy_function \(our Python\), which a "
                                         r"tf\.data service worker \(config\.dataset\.data_service\) cannot run: "
                                         r"write the images as TFRecord with `python -m tf_mocov3\.prepare_data "
                                         r"--format=tfrecord"):
        pretrain.run_pretraining(config, workdir, print_fn=lambda line: None)
    assert not os.path.exists(os.path.join(workdir, "config.json"))


def test_a_bad_service_address_is_refused_in_one_sentence(tiny_config, tmp_path):
    config = _config(tiny_config, tmp_path, data_service="localhost:5000")
    with pytest.raises(config_lib.ConfigError, match=r"^config\.dataset\.data_service='localhost:5000' is not a "
                                                     r"tf\.data service dispatcher address; give it as "
                                                     r"grpc://HOST:PORT"):
        config_lib.validate(config)
