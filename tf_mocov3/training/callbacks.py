"""Keras callbacks of a pre-training run: progress, metrics (metrics.jsonl + TensorBoard), checkpoints, NaN guard.

They all read the global step from `model.optimizer.iterations` (the number of updates applied so far, restored
with the checkpoint), never from Keras' per-epoch batch index, so a resumed run logs the same step numbers as an
uninterrupted one.
"""

import json
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging


METRICS_FILE = "metrics.jsonl"


def _step(model):
    return int(model.optimizer.iterations.numpy())


def _scalars(logs):
    out = {}
    for key, value in (logs or {}).items():
        try:
            out[key] = float(np.asarray(value))
        except (TypeError, ValueError):
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
            self.bad_step = _step(self.model)
            self.model.stop_training = True
            logging.error("Loss became %s at step %d; stopping. The last good checkpoint is kept.",
                          loss, self.bad_step)


class ProgressLogger(keras.callbacks.Callback):
    """One line every `every_steps` steps: step/total, loss, lr, momentum, images/s and the time left."""

    def __init__(self, total_steps, global_batch, every_steps, print_fn=None):
        super().__init__()
        self.total_steps = total_steps
        self.global_batch = global_batch
        self.every_steps = max(int(every_steps), 1)
        self.print_fn = print_fn or (lambda line: print(line, flush=True))

    def on_train_begin(self, logs=None):
        self._mark_time = time.perf_counter()
        self._mark_step = _step(self.model)
        self._first_step_done = False

    def on_train_batch_end(self, batch, logs=None):
        step = _step(self.model)
        if not self._first_step_done:
            # The first step includes tracing and compilation; measure speed from the end of it.
            self._first_step_done = True
            self._mark_time, self._mark_step = time.perf_counter(), step
            self._line(step, logs, None)
            return
        if step % self.every_steps and step != self.total_steps:
            return
        now = time.perf_counter()
        rate = (step - self._mark_step) / max(now - self._mark_time, 1e-9)
        self._mark_time, self._mark_step = now, step
        self._line(step, logs, rate)

    def _line(self, step, logs, steps_per_second):
        values = _scalars(logs)
        parts = [f"step {step}/{self.total_steps}", f"loss {values.get('loss', float('nan')):.4f}"]
        if "lr" in values:
            parts.append(f"lr {values['lr']:.3e}")
        if "momentum" in values:
            parts.append(f"m {values['momentum']:.5f}")
        if steps_per_second:
            parts.append(f"{steps_per_second * self.global_batch:.1f} img/s")
            parts.append(f"ETA {format_duration((self.total_steps - step) / steps_per_second)}")
        else:
            parts.append("(compiling done)")
        self.print_fn(" | ".join(parts))


class MetricsWriter(keras.callbacks.Callback):
    """Appends one JSON object per logged step to `metrics.jsonl` and writes the same scalars to TensorBoard."""

    def __init__(self, workdir, every_steps, total_steps, global_batch, enabled=True):
        super().__init__()
        self.path = os.path.join(workdir, METRICS_FILE)
        self.every_steps = max(int(every_steps), 1)
        self.total_steps = total_steps
        self.global_batch = global_batch
        self.enabled = enabled
        self._writer = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard")) if enabled else None

    def on_train_begin(self, logs=None):
        self._mark_time, self._mark_step = time.perf_counter(), _step(self.model)

    def on_train_batch_end(self, batch, logs=None):
        step = _step(self.model)
        if not self.enabled or (step % self.every_steps and step != self.total_steps and step != 1):
            return
        record = {"step": step}
        record.update(_scalars(logs))
        now = time.perf_counter()
        if step > self._mark_step:
            record["images_per_second"] = (step - self._mark_step) * self.global_batch / max(now - self._mark_time, 1e-9)
        self._mark_time, self._mark_step = now, step
        self.write(record)

    def write(self, record):
        """Log `record` (a dict with a "step") to both sinks; other callbacks (kNN monitor) use this too."""
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
        step = _step(self.model)
        if self.guard.bad_step is None and step % self.every_steps == 0:
            self.checkpointer.save(step)

    def on_train_end(self, logs=None):
        step = _step(self.model)
        if self.guard.bad_step is None and self.checkpointer.latest_step() != step:
            self.checkpointer.save(step)
