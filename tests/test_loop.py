"""The one run loop (training/loop.py): a new training loop is a small Task, and `run` gives it resume, checkpoints,
the log and the config record; Trainer is built in one place."""

import glob
import json
import os

import keras
import ml_collections
import numpy as np
import tensorflow as tf

from conftest import ROOT
from conftest import StopAt
from tf_mocov3.training import loop


class LineFit(loop.Task):
    """A fourth loop in ~20 lines: Dense(1) fitted to y = 2x + 1, batch t of 4 points a function of step t alone."""

    config_kind = None  # no config_lib kind to validate
    loss = "mse"

    def setup(self, strategy, workdir):
        self.total_steps, self.global_batch = self.config.max_steps, 4

    def precision(self):
        return None

    def make_model(self):
        return keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])

    def make_optimizer(self):
        return keras.optimizers.SGD(0.05)

    def dataset(self, start_step):
        def batch(t):
            x = tf.cast(t * 4 + tf.range(4, dtype=tf.int64), tf.float32)[:, None] / 10.0
            return x, 2.0 * x + 1.0
        return tf.data.Dataset.range(start_step, self.total_steps).map(batch)

    def report(self, model, trainer, start_step, history):
        return {"start": start_step, "step": int(model.optimizer.iterations.numpy()), "weights": model.get_weights()}


def _config():
    return ml_collections.ConfigDict(dict(seed=0, max_steps=4, strategy="one_device", num_cpu_devices=0,
                                          jit_compile="false", steps_per_execution="1", log_every_steps=1,
                                          checkpoint_every_steps=2, keep_checkpoints=3))


def test_a_small_task_runs_records_and_resumes_as_a_straight_run(tmp_path):
    straight = loop.run(LineFit(_config()), str(tmp_path / "straight"), print_fn=lambda _: None)
    assert (straight["start"], straight["step"]) == (0, 4)

    workdir, lines = str(tmp_path / "resumed"), []
    stopped = loop.run(LineFit(_config()), workdir, print_fn=lines.append, extra_callbacks=[StopAt(2)])
    assert stopped["step"] == 2
    resumed = loop.run(LineFit(_config()), workdir, print_fn=lines.append)
    assert (resumed["start"], resumed["step"]) == (2, 4)
    assert f"Resuming from step 2 ({workdir}/checkpoints/ckpt-2)." in lines
    for a, b in zip(straight["weights"], resumed["weights"]):  # the same float32 steps in the same order
        np.testing.assert_array_equal(a, b)
    assert [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl"))] == [1, 2, 3, 4]
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["checkpoint_every_steps"] == 2
    finished = loop.run(LineFit(_config()), workdir, print_fn=lines.append)
    assert (finished["start"], finished["step"]) == (4, 4)


def test_trainer_is_built_in_one_place():
    sources = glob.glob(os.path.join(ROOT, "tf_mocov3", "**", "*.py"), recursive=True)
    places = [os.path.relpath(path, ROOT) for path in sources for line in open(path) if "Trainer(" in line]
    assert places == [os.path.join("tf_mocov3", "training", "loop.py")]
