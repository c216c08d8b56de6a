"""The Keras callbacks every training loop uses: the NaN guard, the log (metrics.jsonl, TensorBoard and the progress
line), the learning-rate entry, and the checkpoint saver. training/trainer.py puts them together.

They read the global step from `model.optimizer.iterations` (the number of updates applied so far, restored with the
checkpoint), never from Keras' per-epoch batch index, so a resumed run logs the same step numbers as an uninterrupted
one.

What `loss` means in metrics.jsonl and on the progress line, for every loop: the mean of the per-step losses over
the steps since the previous logged line (this step included). Each model's train step reports its own step's loss
in `logs["loss"]`; `StepLoss` makes Keras' compiled loss do the same.
"""

import json
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tf_mocov3.training.reports import METRICS_LOG


def global_step(model):
    return int(model.optimizer.iterations.numpy())


def _scalars(logs):
    out = {}
    for key, value in (logs or {}).items():
        try:
            out[key] = float(np.asarray(value).reshape(-1)[0])
        except (TypeError, ValueError, IndexError):
            continue
    return out


def format_duration(seconds):
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class NonFiniteLossGuard(keras.callbacks.Callback):
    """Stops training at the first NaN or Inf loss and remembers the step; later callbacks then save nothing."""

    def __init__(self):
        super().__init__()
        self.bad_step = None

    def on_train_batch_end(self, batch, logs=None):
        loss = _scalars(logs).get("loss")
        if loss is not None and not math.isfinite(loss) and self.bad_step is None:
            self.bad_step = global_step(self.model)
            self.model.stop_training = True
            logging.error("Loss became %s at step %d; stopping. The last good checkpoint is kept.",
                          loss, self.bad_step)


class LearningRate(keras.callbacks.Callback):
    """Adds `lr`, the learning rate the step used, to the logs of models whose train step does not report it."""

    def on_train_batch_begin(self, batch, logs=None):
        self._lr = float(self.model.optimizer.learning_rate)  # the schedule at the current step

    def on_train_batch_end(self, batch, logs=None):
        if logs is not None and "lr" not in logs:
            logs["lr"] = self._lr


class StepLoss(keras.callbacks.Callback):
    """Resets Keras' running metrics after every step, so `logs["loss"]` of a compiled loss is the step's value.

    Goes last in the callback list (the others have read the step's logs by then).
    """

    def on_train_batch_end(self, batch, logs=None):
        self.model.reset_metrics()


class MetricsWriter(keras.callbacks.Callback):
    """The log of a run: metrics.jsonl, TensorBoard and the progress line, from the same record.

    A record is written at step 1, every `every_steps` steps and at the last step: `step`, `loss` (the mean since
    the previous record), every other scalar the step reported (its value at this step), and `images_per_second`
    (measured from the end of the first step, which includes tracing and compilation). `write(record)` lets other
    callbacks (the kNN monitor, the fine-tuning evaluator) add records to the same sinks.
    """

    def __init__(self, workdir, every_steps, total_steps, global_batch, enabled=True, print_fn=None):
        super().__init__()
        self.path = os.path.join(workdir, METRICS_LOG) if workdir else None
        self.every_steps = max(int(every_steps), 1)
        self.total_steps = total_steps
        self.global_batch = global_batch
        self.enabled = enabled and workdir is not None
        self.print_fn = print_fn if enabled else None
        self._writer = (tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))
                        if self.enabled else None)

    def on_train_begin(self, logs=None):
        self._mark_time, self._mark_step = None, global_step(self.model)
        self._loss_sum, self._loss_count = 0.0, 0

    def on_train_batch_end(self, batch, logs=None):
        step = global_step(self.model)
        values = _scalars(logs)
        if "loss" in values:
            self._loss_sum += values["loss"]
            self._loss_count += 1
        first = self._mark_time is None
        if not first and step % self.every_steps and step != self.total_steps and step != 1:
            return
        record = {"step": step, **values}
        if self._loss_count:
            record["loss"] = self._loss_sum / self._loss_count
        self._loss_sum, self._loss_count = 0.0, 0
        now = time.perf_counter()
        rate = None
        if not first and step > self._mark_step:
            rate = (step - self._mark_step) / max(now - self._mark_time, 1e-9)
            record["images_per_second"] = rate * self.global_batch
        self._mark_time, self._mark_step = now, step
        self.write(record)
        if self.print_fn is not None:
            self.print_fn(self._line(record, rate))

    def _line(self, record, steps_per_second):
        parts = [f"step {record['step']}/{self.total_steps}", f"loss {record.get('loss', float('nan')):.4f}"]
        if "lr" in record:
            parts.append(f"lr {record['lr']:.3e}")
        if "momentum" in record:
            parts.append(f"m {record['momentum']:.5f}")
        if steps_per_second:
            parts.append(f"{steps_per_second * self.global_batch:.1f} img/s")
            parts.append(f"ETA {format_duration((self.total_steps - record['step']) / steps_per_second)}")
        else:
            parts.append("(compiling done)")
        return " | ".join(parts)

    def write(self, record):
        """Log `record` (a dict with a "step") to both sinks."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        with self._writer.as_default(step=record["step"]):
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    tf.summary.scalar(key, value)
        self._writer.flush()


class CheckpointSaver(keras.callbacks.Callback):
    """Saves every `every_steps` steps and at the end of training, unless the NaN guard fired."""

    def __init__(self, checkpointer, every_steps, guard):
        super().__init__()
        self.checkpointer = checkpointer
        self.every_steps = max(int(every_steps), 1)
        self.guard = guard

    def on_train_batch_end(self, batch, logs=None):
        step = global_step(self.model)
        if self.guard.bad_step is None and step % self.every_steps == 0:
            self.checkpointer.save(step)

    def on_train_end(self, logs=None):
        step = global_step(self.model)
        if self.guard.bad_step is None and self.checkpointer.latest_step() != step:
            self.checkpointer.save(step)
