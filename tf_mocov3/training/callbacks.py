"""The Keras callbacks every training loop uses: the NaN guard, the log (metrics.jsonl, TensorBoard and the progress
line, with the lr of models whose step does not report it), the preemption watcher and the checkpoint saver.
training/trainer.py puts them together.

They read the global step from `model.optimizer.iterations` (the number of updates applied so far, restored with the
checkpoint), never from Keras' per-epoch batch index, so a resumed run logs the same step numbers as an uninterrupted
one.

What `loss` means in metrics.jsonl and on the progress line, for every loop: the mean of the per-step losses over
the steps since the previous logged line (this step included), read from the model's `loss` Mean metric (its total and
count), which every step updates.

Several steps per host call (`steps_per_execution` = k, compile's argument): Keras calls the batch hooks once per
call, with the logs of the call's last step. The trainer rounds the log and checkpoint intervals up to multiples of
k (trainer.round_intervals), so the hooks see exactly the steps they act on, and the rows of metrics.jsonl, the
checkpoint steps and the schedules are those of a run with one step per call. An interval that is not a multiple of
k (the linear probe's epoch, which checkpoints) acts at the end of the call that reaches it (CheckpointSaver).
"""

import contextlib
import json
import math
import os
import signal
import threading
import time

from absl import logging
import keras
import numpy as np
import tensorflow as tf

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


def lr_of_last_step(optimizer):
    """The learning rate the optimizer's last update used: its schedule at step iterations - 1."""
    schedule = getattr(optimizer, "_learning_rate", None)  # Keras keeps the schedule object here
    if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        return float(schedule(max(int(optimizer.iterations.numpy()) - 1, 0)))
    return float(optimizer.learning_rate)


def loss_metric(model):
    """The model's Mean metric named "loss" (its own tracker, or Keras' tracker of a compiled loss), or None."""
    for metric in model.metrics:
        if metric.name == "loss" and hasattr(metric, "total") and hasattr(metric, "count"):
            return metric
    return None


def add_skipped_records(tracker, skipped):
    """Adds this step's dropped records to `tracker` (a keras.metrics.Sum named skipped_records, made under the
    strategy's scope) and returns its total since fit began: `skipped` is this replica's share of the batch's per-row
    counts (pipelines.labelled_train_dataset(count_skipped=True)), summed over the replicas."""
    ctx = tf.distribute.get_replica_context()
    count = tf.cast(tf.reduce_sum(skipped), tf.float32)
    if ctx.num_replicas_in_sync > 1:
        count = ctx.all_reduce(tf.distribute.ReduceOp.SUM, count)
    tracker.update_state(count)
    return tracker.result()


def count_skipped_records(model):
    """Lets a model with Keras' own train step take batches (images, labels, skipped) of
    pipelines.labelled_train_dataset(count_skipped=True): the step trains on (images, labels) as before and logs
    `skipped_records` (the step log shows it when not zero). Call it under the strategy's scope. The counter is not
    part of the model, so checkpoints and saved models are unchanged."""
    tracker = keras.metrics.Sum(name="skipped_records")
    keras_step = model.train_step

    def train_step(data):
        images, labels, skipped = data
        logs = keras_step((images, labels))
        return {**logs, "skipped_records": add_skipped_records(tracker, skipped)}

    model.train_step = train_step
    return model


class LossSince:
    """The mean of the step losses since the previous `take()`, from a Mean metric's running total and count."""

    def __init__(self, metric):
        self.metric = metric
        self._total, self._count = self._read()

    def _read(self):
        return float(self.metric.total.numpy()), float(self.metric.count.numpy())

    def take(self):
        total, count = self._read()
        if count < self._count:  # the metric was reset (a new fit call): count from zero
            self._total, self._count = 0.0, 0.0
        mean = (total - self._total) / (count - self._count) if count > self._count else None
        self._total, self._count = total, count
        return mean


class MetricsWriter(keras.callbacks.Callback):
    """The log of a run: metrics.jsonl, TensorBoard and the progress line, from the same record.

    A record is written every `every_steps` steps and at the last step: `step`, `loss` (the mean since the previous
    record), every other scalar the step reported (its value at this step; `skipped_records`, the records the
    pre-training input pipeline dropped since fit() began, also goes on the progress line when it is not zero),
    and `images_per_second` (measured from
    the end of the first host call, which includes tracing and compilation; that moment prints a progress line of
    its own). `write(record)` lets other callbacks (the kNN monitor, the fine-tuning evaluator) add records to the same
    sinks.
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
        metric = loss_metric(self.model)
        self._loss = LossSince(metric) if metric is not None else None

    def on_train_batch_end(self, batch, logs=None):
        step = global_step(self.model)
        values = _scalars(logs)
        now = time.perf_counter()
        if self._mark_time is None:  # the first host call: tracing and compilation done
            self._mark_time, self._mark_step = now, step
            if self.print_fn is not None and step % self.every_steps and step != self.total_steps:
                self.print_fn(self._line({"step": step, **values}, None))
        if step % self.every_steps and step != self.total_steps:
            return
        record = {"step": step, **values}
        if "lr" not in record:  # a compiled model's step does not report it: the schedule at the last step
            record["lr"] = lr_of_last_step(self.model.optimizer)
        mean = self._loss.take() if self._loss is not None else None
        if mean is not None:
            record["loss"] = mean
        rate = None
        if step > self._mark_step:
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
        if record.get("skipped_records"):  # records the input pipeline dropped since this process started training
            parts.append(f"bad records skipped: {int(record['skipped_records'])}")
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
        # tf.io.gfile, so that a gs:// workdir keeps its log in the bucket. GFile's "a" mode appends in place on a
        # local disk (and ram://). A GCS object cannot be appended to: TensorFlow's GCS file system copies the
        # object to a local temporary file, appends there and uploads the whole file again on close, so each
        # record costs one download and one upload of metrics.jsonl (about 0.23 KB per pre-training record: ~460 KB
        # after 100k steps logged every 50), small beside a logging interval.
        with tf.io.gfile.GFile(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        with self._writer.as_default(step=record["step"]):
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    tf.summary.scalar(key, value)
        self._writer.flush()


class CheckpointSaver(keras.callbacks.Callback):
    """Saves every `every_steps` steps and at the end of training, unless the NaN guard fired; under several steps
    per host call, at the end of the call that reaches a multiple of `every_steps`."""

    def __init__(self, checkpointer, every_steps, guard):
        super().__init__()
        self.checkpointer = checkpointer
        self.every_steps = max(int(every_steps), 1)
        self.guard = guard

    def on_train_begin(self, logs=None):
        self._previous = global_step(self.model)

    def on_train_batch_end(self, batch, logs=None):
        step = global_step(self.model)
        reached = step // self.every_steps > self._previous // self.every_steps  # trainer.crossed
        self._previous = step
        if self.guard.bad_step is None and reached:
            self.checkpointer.save(step)

    def on_train_end(self, logs=None):
        step = global_step(self.model)
        if self.guard.bad_step is None and self.checkpointer.latest_step() != step:
            self.checkpointer.save(step)


class PreemptionWatcher(keras.callbacks.Callback):
    """Turns a SIGTERM (a Spot VM's or a TPU maintenance notice, `kill`, a scheduler) into a stop after the current
    host call, at the same step on every worker.

    While fit runs, SIGTERM only sets a flag (the host call in flight finishes: TensorFlow runs it in C++ and Python
    sees the signal when it returns). After every host call the workers exchange their flags (`worker_values`, a
    distribute.WorkerValues: one tiny all-reduce under several workers, nothing under one), so a signal that reached
    one worker stops all of them after the same call: `stopped_at` is then the step they reached and
    fit ends (the checkpoint saver, after this callback, saves that step on every worker). A stop at the last step is
    no stop: the run finished. The handler is installed only inside `listening()`; outside the main thread (where
    Python cannot install one) the watcher still takes part in the exchange but hears no signal itself.

    Why not tf.distribute.experimental.PreemptionCheckpointHandler: in TF 2.21 it drives a custom loop through its
    own `run` (Keras 3's fit has no hook for it), adds its own counter to the checkpoint, and on GCE CPU and TPU VMs
    it only warns that it is unsupported.
    """

    def __init__(self, worker_values, total_steps):
        super().__init__()
        self.worker_values = worker_values
        self.total_steps = int(total_steps)
        self.signalled = threading.Event()
        self.stopped_at = None

    def _handle(self, signum, frame):
        del signum, frame
        self.signalled.set()

    @contextlib.contextmanager
    def listening(self):
        """The SIGTERM handler, installed for the block (Trainer.fit wraps model.fit in it, so that the previous
        handler is back however fit ends); outside the main thread, no handler."""
        installed = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, self._handle) if installed else None
        try:
            yield self
        finally:
            if installed:  # None: a handler installed outside Python, which cannot be put back; the default then
                signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)

    def on_train_begin(self, logs=None):
        self.stopped_at = None

    def on_train_batch_end(self, batch, logs=None):
        if any(self.worker_values(self.signalled.is_set())):
            step = global_step(self.model)
            if step < self.total_steps:
                self.stopped_at = step
                self.model.stop_training = True
