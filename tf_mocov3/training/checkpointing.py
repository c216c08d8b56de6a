"""Checkpoints of every training loop: the model (for pre-training with its momentum encoder), the optimizer, the step
and the input pipeline's position.

Layout: WORKDIR/checkpoints/ckpt-STEP.{index,data-*} plus TensorFlow's `checkpoint` state file; the last
`keep` are kept. Under MultiWorkerMirroredStrategy every worker must take part in a save; the chief writes to
WORKDIR/checkpoints and the others to a scratch directory that is deleted straight after.
"""

import os
import shutil

import tensorflow as tf

CHECKPOINT_DIR = "checkpoints"


class Checkpointer:
    """Saves and restores `model`, `optimizer` and the input pipeline's position together."""

    def __init__(self, workdir, *, model, optimizer, keep=3, is_chief=True, worker_index=0):
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
        self.data_position.assign(step)
        path = self.manager.save(checkpoint_number=step)
        if not self.is_chief:
            shutil.rmtree(self._write_dir, ignore_errors=True)
        return path
