"""One resumable fit for every training loop: pre-training, fine-tuning and the linear probe.

Each loop is a task (training/loop.py): its model, its data and one `Trainer` run, which `loop.run` drives in this
order -- the only place a Trainer is built:

    trainer = the Trainer of (workdir, strategy, total_steps, global_batch, config_file="config.json", ...)
    trainer.check_resume(record, keys)          # a workdir of another run is refused before any work
    with precision(config.mixed_precision):     # the dtype policy, restored afterwards
        model = trainer.build(make_model, make_optimizer, seed=..., jit_compile=...)
        start = trainer.restore(model)          # newest checkpoint (0 = none)
        trainer.write_config(record)
        trainer.fit(model, make_dataset(start), start_step=start, callbacks=[...])
    trainer.report(name, metrics, curves, table)

`fit` adds the standard callbacks around the loop's own (NaN guard first; the step log -- metrics.jsonl,
TensorBoard and the progress line; the loop's callbacks; the checkpoint saver last) and raises
TrainingDiverged when the loss stops being finite, after keeping the last good checkpoint. `loss` in metrics.jsonl
means the same for every loop: the mean of the step losses since the previous logged line (training/callbacks.py).
Only the chief writes (logs, config file, real checkpoints); every worker takes part in the saves.

Preemption: a SIGTERM during `fit` (a Spot VM's or TPU maintenance notice) stops the run after the host call in
flight, on every worker at the same step (callbacks.PreemptionWatcher), saves that step's checkpoint and raises
Preempted, which the command line turns into one line and exit status 143 (cli.PREEMPTED_EXIT_CODE); running the
same command again resumes step-exact. A failed checkpoint write stops the run with checkpointing.CheckpointWriteError.
Under several workers `restore` first checks that every worker sees the chief's workdir (`check_workdir_shared`).

Steps per host call (`steps_per_execution`, config.steps_per_execution): k > 1 runs k steps inside one compiled call,
which a TPU needs to keep the host loop off its critical path. The callbacks see only the step that ends a call, so
the intervals the loop acts on are placed on call ends: a step interval of the config (logging, checkpoints, the kNN
monitor) that is not a multiple of k is rounded UP to one, with one printed line naming each change
(`round_intervals`; every shipped config then runs unchanged with 32), and an interval made of epochs (the
fine-tuning evaluation, the probe's epoch) acts at the end of the call that completes it (`crossed`): the weights
and the schedules are those of one step per call, since the lr and momentum are computed per step on the device.
With intervals that are multiples of k, k steps per call give the same weights, metrics.jsonl rows and checkpoint
steps as one step per call. `resolve_steps_per_execution` turns "auto" into a number per device kind.
"""

import contextlib
import os
import random

import keras
import tensorflow as tf

from tf_mocov3 import config_lib
from tf_mocov3.training import callbacks as callbacks_lib
from tf_mocov3.training import checkpointing
from tf_mocov3.training import distribute
from tf_mocov3.training import reports


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the message names the step, the checkpoint kept and what to change."""


class Preempted(Exception):
    """A SIGTERM stopped the run; `step` is the step it reached and `checkpoint` the checkpoint saved there."""

    def __init__(self, step, checkpoint):
        self.step, self.checkpoint = int(step), checkpoint
        if checkpoint:
            then = f"saved {checkpoint}, and running the same command again resumes from it"
        else:  # an in-memory loop (the demo's probe) keeps no checkpoints
            then = "this loop keeps no checkpoints, so running the same command again runs it from its start"
        super().__init__(f"Preempted by SIGTERM at step {self.step}; {then}.")


# The file through which the workers of a multi-worker run check that they share the chief's workdir.
WORKDIR_TOKEN_FILE = ".chief_token"


def total_steps_of(config, steps_per_epoch):
    """config.max_steps when set, else config.epochs * steps_per_epoch."""
    return int(config.max_steps) if config.max_steps > 0 else int(config.epochs) * int(steps_per_epoch)


def resolve_jit_compile(config, strategy):
    """config.jit_compile resolved: "auto" is XLA on a TPU and on one GPU; not on CPUs, where TensorFlow's
    oneDNN kernels ran the ViT-S/16 step in 28 CPU-s against 32 under XLA:CPU (BUILD_NOTES.md), and not with several
    replicas of a mirrored strategy, which TensorFlow cannot compile (below)."""
    choice = str(config.jit_compile).lower()
    if choice == "auto":
        if isinstance(strategy, tf.distribute.TPUStrategy):
            return True
        return distribute.is_single_device(strategy) and bool(tf.config.list_logical_devices("GPU"))
    if choice == "true" and _mirrored_replicas(strategy) > 1:
        # Keras compiles the cross-replica step as one XLA cluster on the first device, which then cannot read the
        # other replicas' variables ("Trying to access resource .../replica_1/... from device ...:0"); compiling
        # each replica's step instead fails on its collectives (merge_call inside a nested tf.function). Known in
        # TF 2.21 / Keras 3.15: keras-team/keras#19005, tensorflow/tensorflow#53140.
        raise config_lib.ConfigError(
            f"config.jit_compile=true cannot run with {_mirrored_replicas(strategy)} replicas of "
            f"{type(strategy).__name__}: TensorFlow cannot compile a multi-device mirrored step with XLA; use "
            f"config.jit_compile=auto (no XLA there; a TPU always compiles).")
    return choice == "true"


def _mirrored_replicas(strategy):
    mirrored = (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy)
    return int(strategy.num_replicas_in_sync) if isinstance(strategy, mirrored) else 1


def strategy_for(config, tpu=""):
    """The strategy config.strategy names (config_lib.ConfigError when it cannot be made)."""
    try:
        return distribute.make_strategy(config.strategy, tpu=tpu, num_cpu_devices=config.num_cpu_devices)
    except ValueError as err:
        raise config_lib.ConfigError(str(err)) from err


# "auto" steps per host call, by the kind of device the strategy runs on. CPU: 1 (the step is long and the host
# loop costs nothing measurable; BUILD_NOTES.md). GPU and TPU: NOT measured on this project's machines yet (no
# accelerator was lent); 1 on a GPU is the safe default and a TPU takes 32, the order TPU recipes use, until
# benchmarks/device_check.sh measures it there.
AUTO_STEPS_PER_EXECUTION = {"cpu": 1, "gpu": 1, "tpu": 32}


def device_kind(strategy):
    """'tpu', 'gpu' or 'cpu': what `strategy`'s replicas run on."""
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "tpu"
    return "gpu" if tf.config.list_logical_devices("GPU") else "cpu"


def resolve_steps_per_execution(config, strategy):
    """config.steps_per_execution as a number: "auto" is AUTO_STEPS_PER_EXECUTION's value."""
    value = str(config.steps_per_execution).strip().lower()  # --config.steps_per_execution=8 is "8"
    if value == "auto":
        return AUTO_STEPS_PER_EXECUTION[device_kind(strategy)]
    return int(value)


def round_intervals(steps_per_execution, **intervals):
    """-> ({name: steps rounded up to a multiple of steps_per_execution}, the line to print, or None when none
    changed): the step intervals of a run with k steps per host call (module docstring)."""
    k = int(steps_per_execution)
    rounded = {name: -(-int(steps) // k) * k for name, steps in intervals.items()}
    changed = [f"{name} {int(intervals[name])} -> {steps}" for name, steps in rounded.items()
               if steps != int(intervals[name])]
    line = None
    if changed:
        line = (f"With {k} steps per host call (config.steps_per_execution) the intervals act on the ends of calls, "
                f"so they are rounded up to multiples of {k}: {', '.join(changed)}.")
    return rounded, line


def crossed(previous_step, step, every_steps):
    """True when the host call that went from `previous_step` to `step` reached a multiple of `every_steps`:
    where an interval of `every_steps` acts under several steps per call (with one step per call, or an interval
    that is a multiple of k, exactly at its multiples)."""
    every = max(int(every_steps), 1)
    return int(step) // every > int(previous_step) // every


@contextlib.contextmanager
def precision(policy):
    """Keras' global dtype policy set to `policy` ("float32", "mixed_bfloat16", ...) inside the block."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


class Trainer:
    """The shared run loop of one workdir (module docstring).

    Args:
      workdir: the run's directory, local or a URL such as gs://BUCKET/run (every file of the run goes through
        tf.io.gfile); None: nothing is written, as for the demo's in-memory probe.
      strategy: a tf.distribute.Strategy (None: the default one-device strategy).
      total_steps: the step the run ends at.
      global_batch: images per step over all replicas (for images/s).
      log_every_steps, checkpoint_every_steps, keep_checkpoints: as the config keys of these names.
      config_file: the file in the workdir that records the run's config (checked on resume).
      steps_per_execution: steps per host call (module docstring); the caller rounds its intervals first
        (round_intervals).
      kind: what the run is called in messages ("pre-training run", "fine-tuning run", "probe").
      print_fn: where the progress lines go (default: print); only the chief prints.
    """

    def __init__(self, workdir, *, strategy=None, total_steps, global_batch, log_every_steps=50,
                 checkpoint_every_steps=1000, keep_checkpoints=3, config_file="config.json", kind="run",
                 steps_per_execution=1, print_fn=None):
        self.workdir = workdir
        self.strategy = strategy or tf.distribute.get_strategy()
        self.total_steps = int(total_steps)
        self.global_batch = int(global_batch)
        self.checkpoint_every_steps = int(checkpoint_every_steps)
        self.keep_checkpoints = int(keep_checkpoints)
        self.config_file = config_file
        self.kind = kind
        self.steps_per_execution = int(steps_per_execution)
        self.chief = distribute.is_chief(self.strategy)
        self._print = print_fn or (lambda line: print(line, flush=True))
        # Made now, so that callbacks built before `fit` (the kNN monitor) can write to the same log.
        self.metrics = callbacks_lib.MetricsWriter(workdir, log_every_steps, self.total_steps, self.global_batch,
                                                   enabled=self.chief, print_fn=self._print)
        self.checkpointer = None
        # How the workers tell each other what one of them saw (a SIGTERM, a failed save); nothing under one worker.
        self.worker_values = distribute.WorkerValues(self.strategy)

    def say(self, line):
        """Prints `line` on the chief."""
        if self.chief:
            self._print(line)

    # --- before any work ---

    def check_resume(self, record, keys, error_cls=config_lib.ConfigError, key_prefix="config."):
        """Refuses a workdir whose config file records a run that differs from `record` in `keys` (dotted)."""
        if self.workdir:
            config_lib.check_resume_compatible(self.workdir, record, keys, config_file=self.config_file,
                                               kind=self.kind, error_cls=error_cls, key_prefix=key_prefix)

    # --- the model ---

    def build(self, make_model, make_optimizer, *, seed, jit_compile=False, loss=None):
        """make_model() and make_optimizer(), created under the strategy's scope after seeding, then compiled.

        The initial weights are a function of `seed` alone (the same on every worker and on every restart); None
        leaves the global seed alone (a model whose initializers carry their own seeds, as the demo's probe). The
        optimizer's slots are built now, so that a checkpoint restores into them.
        """
        if seed is not None:
            keras.utils.set_random_seed(int(seed))
        with self.strategy.scope():
            model = make_model()
            model.compile(optimizer=make_optimizer(), loss=loss, jit_compile=bool(jit_compile))
            model.optimizer.build(model.trainable_variables)
        return model

    def check_workdir_shared(self):
        """Under several workers: raises ConfigError on every worker unless each of them reads, through its own
        --workdir, the token the chief has just written into its workdir (a local path on each machine is not one
        workdir; gs:// is). Two tiny all-reduces; nothing under one worker."""
        if not self.workdir or self.worker_values.num_workers == 1:
            return
        path = os.path.join(self.workdir, WORKDIR_TOKEN_FILE)
        token = 0
        if self.chief:
            token = random.SystemRandom().randrange(1, 2 ** 40)  # the global RNG is left alone (it is seeded)
            try:
                tf.io.gfile.makedirs(self.workdir)
                with tf.io.gfile.GFile(path, "w") as f:
                    f.write(str(token))
            except tf.errors.OpError:
                token = 0  # every worker, the chief included, then fails the check below
        token = int(sum(self.worker_values(token)))  # also the barrier: the file is written before anyone reads it
        try:
            seen = tf.io.gfile.GFile(path).read().strip() if tf.io.gfile.exists(path) else ""
        except tf.errors.OpError:
            seen = ""
        blind = self.worker_values(not token or seen != str(token))
        if self.chief:
            try:
                tf.io.gfile.remove(path)
            except tf.errors.OpError:
                pass  # a leftover token file is harmless: the next start writes a new token
        if any(blind):
            raise config_lib.ConfigError(
                f"{distribute.describe_workers(blind)} cannot see the chief's workdir {self.workdir} (the token file "
                f"the chief wrote there is missing or different); a run of several workers needs a --workdir on "
                f"storage all of them share, such as gs://BUCKET/DIR.")

    def restore(self, model, checkpoint_model=None):
        """Restores the newest checkpoint of the workdir into `model` (or `checkpoint_model`, the part of it that
        is saved) and its optimizer; returns its step, 0 when there is none or the trainer has no workdir (then
        nothing is saved either). Under several workers it checks first that all of them see the chief's workdir
        (`check_workdir_shared`)."""
        if not self.workdir:
            return 0
        self.check_workdir_shared()
        self.checkpointer = checkpointing.Checkpointer(
            self.workdir, model=checkpoint_model or model, optimizer=model.optimizer, keep=self.keep_checkpoints,
            is_chief=self.chief, worker_index=distribute.worker_index(self.strategy),
            worker_values=self.worker_values)
        start_step = self.checkpointer.restore_latest()
        if start_step:
            self.say(f"Resuming from step {start_step} ({self.checkpointer.latest_path()}).")
        return start_step

    def write_config(self, record):
        """Writes the run's config (a ConfigDict or a plain dict) to WORKDIR/config_file (chief only), through
        tf.io.gfile, so that the resume check of a gs:// workdir finds it there."""
        if self.chief and self.workdir:
            config_lib.write_json(os.path.join(self.workdir, self.config_file), config_lib.as_record(record),
                                  indent=2)

    # --- the loop ---

    def fit(self, model, dataset, *, start_step=0, callbacks=(), diverged_hint="lower the learning rate"):
        """Trains `model` on `dataset` from `start_step` to total_steps; returns Keras' History.

        The loop's `callbacks` run after the step log and before the preemption watcher and the checkpoint saver.
        Raises TrainingDiverged (after keeping the last good checkpoint) when the loss stops being finite;
        `diverged_hint` says what to change. Raises Preempted after a SIGTERM (module docstring), once the step
        reached is saved, and checkpointing.CheckpointWriteError when a save fails.
        """
        guard = callbacks_lib.NonFiniteLossGuard()
        watcher = callbacks_lib.PreemptionWatcher(self.worker_values, self.total_steps)
        cbs = [guard, self.metrics, *callbacks, watcher]
        if self.checkpointer is not None:
            cbs.append(callbacks_lib.CheckpointSaver(self.checkpointer, self.checkpoint_every_steps, guard))
        # k steps per call from a step that is a multiple of k (a resume from another run's last step may not be).
        k = self.steps_per_execution if int(start_step) % self.steps_per_execution == 0 else 1
        if getattr(model, "steps_per_execution", 1) != k:
            model.steps_per_execution = k
            model.train_function = None  # Keras builds the train function for the steps per call it finds
        with watcher.listening():
            history = model.fit(dataset, epochs=1, steps_per_epoch=self.total_steps - int(start_step),
                                callbacks=cbs, verbose=0, shuffle=False)
        if guard.bad_step is not None:
            kept = self.checkpointer.latest_path() if self.checkpointer is not None else None
            kept = f"the last good checkpoint ({kept}) is kept" if kept else "no checkpoint was written"
            where = (f"at step {guard.bad_step}" if k == 1 else
                     f"in steps {guard.bad_step - k + 1}-{guard.bad_step} (one host call of {k} steps)")
            raise TrainingDiverged(f"The loss became NaN or Inf {where}; {kept}. "
                                   f"{diverged_hint[0].upper()}{diverged_hint[1:]}, then run the same command again "
                                   f"to resume.")
        if watcher.stopped_at is not None:
            raise Preempted(watcher.stopped_at,
                            self.checkpointer.latest_path() if self.checkpointer is not None else None)
        return history

    # --- the end ---

    def read_log(self):
        """The records of WORKDIR/metrics.jsonl."""
        return reports.read_log(self.workdir) if self.workdir else []

    def report(self, *, name, metrics, curves=None, table=None):
        """Writes metrics.json and NAME.png and prints the summary table (chief only); returns the summary."""
        if not (self.chief and self.workdir):
            return None
        summary = reports.write_report(self.workdir, name=name, metrics=metrics, curves=curves, table=table)
        self._print(summary)
        return summary
