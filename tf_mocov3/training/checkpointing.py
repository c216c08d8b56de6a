"""Checkpoints of every training loop: the model (for pre-training with its momentum encoder), the optimizer, the step
and the input pipeline's position.

Layout: WORKDIR/checkpoints/ckpt-STEP.{index,data-*} plus TensorFlow's `checkpoint` state file; the last
`keep` are kept. Under MultiWorkerMirroredStrategy every worker must take part in a save; the chief writes to
WORKDIR/checkpoints and the others to a scratch directory that is deleted straight after.

A save that fails (a full disk, a quota, a GCS error: any tf.errors.OpError) raises CheckpointWriteError, one
sentence naming the step, the path and the last complete checkpoint. That one stays the newest the `checkpoint` state
file names (TensorFlow writes the state file only after a complete save), so a rerun resumes from it and never from
the half-written ckpt-STEP_temp/ directory, which the failed save removes where it can. Under several workers, the
workers learn after every save whether any of them failed, and all stop: the one that failed with that sentence, the
others with one naming it.
"""

import os
import re

import tensorflow as tf

from tf_mocov3.training import distribute

CHECKPOINT_DIR = "checkpoints"


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the message names the step, the path and the checkpoint kept."""


class Checkpointer:
    """Saves and restores `model`, `optimizer` and the input pipeline's position together."""

    def __init__(self, workdir, *, model, optimizer, keep=3, is_chief=True, worker_index=0, worker_values=None):
        """`worker_values`: a distribute.WorkerValues of the run's strategy, through which the workers tell each
        other that a save failed (None: one worker)."""
        self.directory = os.path.join(workdir, CHECKPOINT_DIR)
        self.is_chief = is_chief
        write_dir = self.directory if is_chief else os.path.join(workdir, f".scratch_worker_{worker_index}")
        # The global step at which the input pipeline resumes; equal to the optimizer's step count, saved on
        # its own so that a reader of the checkpoint does not need to know how the optimizer counts.
        self.data_position = tf.Variable(0, dtype=tf.int64, trainable=False, name="data_position")
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, data_position=self.data_position)
        self.manager = tf.train.CheckpointManager(self.checkpoint, write_dir, max_to_keep=keep,
                                                  checkpoint_name="ckpt")
        self._write_dir = write_dir
        self.optimizer = optimizer
        self._worker_values = worker_values

    def latest_path(self):
        return tf.train.latest_checkpoint(self.directory)

    def latest_step(self):
        path = self.latest_path()
        return int(path.rsplit("-", 1)[-1]) if path else None

    def restore_latest(self):
        """Restores the newest checkpoint of the chief's directory; returns its step, or 0 when there is none."""
        path = self.latest_path()
        if not path:
            return 0
        self.checkpoint.restore(path).assert_existing_objects_matched()
        step = int(self.optimizer.iterations.numpy())
        if int(self.data_position.numpy()) != step:
            raise ValueError(f"Checkpoint {path} is inconsistent: optimizer step {step} but data position "
                             f"{int(self.data_position.numpy())}; delete it to resume from the one before.")
        return step

    def save(self, step):
        """Saves the checkpoint of `step`; returns its path. Raises CheckpointWriteError (module docstring)."""
        self.data_position.assign(step)
        prefix = os.path.join(self._write_dir, f"ckpt-{int(step)}")
        path, failure = None, None
        try:
            path = self.manager.save(checkpoint_number=step)
        except tf.errors.OpError as err:
            failure = err
            _remove_partial(prefix)
        failed = self._worker_values(failure is not None) if self._worker_values else [failure is not None]
        if not self.is_chief:
            _remove_tree(self._write_dir)
        if failure is None and not any(failed):
            return path
        kept = self.latest_path()
        then = (f"the last complete checkpoint, {kept}, is kept, and running the same command again resumes from it"
                if kept else "no earlier checkpoint exists, so running the same command again starts the run over")
        if failure is not None:
            reason = (failure.message or type(failure).__name__).strip().splitlines()[0]
            # Without TensorFlow's "{{function_node ...}}" prefix and " [Op:SaveV2]" suffix: the path and the reason.
            reason = re.sub(r"\s*\[Op:\w+\]$", "", re.sub(r"\{\{.*?\}\}\s*", "", reason)).rstrip(".")
            raise CheckpointWriteError(
                f"Writing the checkpoint of step {int(step)} to {prefix} failed ({type(failure).__name__}: "
                f"{reason}); {then} once the storage is fixed.")
        raise CheckpointWriteError(
            f"{distribute.describe_workers(failed)} could not write the checkpoint of step {int(step)} to "
            f"{self.directory}; {then} once that worker's storage is fixed.")


def _remove_tree(path):
    try:
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
    except tf.errors.OpError:
        pass  # scratch or partial files only: leaving them costs space, never a wrong resume


def _remove_partial(prefix):
    """Best effort: removes what a failed save of `prefix` left (its _temp/ directory), freeing the space it took."""
    _remove_tree(prefix + "_temp")
