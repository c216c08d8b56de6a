"""The one run loop: a `Task` says what differs between training loops, `run` does what they share, once.

Pre-training (training/pretrain.py), fine-tuning (training/finetune.py) and the linear probe (training/linear_probe.py,
the command's probe and the demo's in-memory one) are tasks; a new loop is a new task, not a copy of the sequence:

    result = loop.run(task, workdir, strategy=None, tpu="", print_fn=None, extra_callbacks=())

`run`, in this order (trainer.py describes the Trainer's part):
  1. config_lib.validate(task.config) and task.check(workdir): every check that needs no device;
  2. the strategy config.strategy names (unless one is given), validate again with its replicas;
  3. task.setup(strategy, workdir): the data opened, the run's length (total_steps, global_batch) and its record;
  4. steps per host call (config.steps_per_execution) and the task's step intervals rounded to multiples of it
     (trainer.round_intervals; task.use_intervals records what the run uses);
  5. the Trainer (the only one in tf_mocov3), the resume check of task.resume_keys (and task.check_resume), the
     rounding line, task.announce;
  6. under the task's precision: the model and optimizer (trainer.build of task.make_model / make_optimizer), the
     newest checkpoint restored into task.checkpoint_part (the model when None), task.restored (pretrained weights
     on a fresh start, what the loop needs from the restored model), the record written to task.config_file;
  7. fit from the restored step on task.dataset(start) with task.callbacks (then extra_callbacks), after printing
     task.start_line -- or task.finished_line when the run had already reached its end;
  8. task.report(model, trainer, start_step, history): metrics.json, the plot, the summary and what `run` returns.
"""

import contextlib

from tf_mocov3 import config_lib
from tf_mocov3.data import sources
from tf_mocov3.training import trainer as trainer_lib


class Task:
    """What one training loop is; every hook but setup, make_model, make_optimizer, dataset and report has a
    default. `run` sets `self.strategy` and `self.workdir` before `setup`; `setup` sets `total_steps` and
    `global_batch` (and `record`, the run's config as config_file records it, when that is not `config` itself)."""

    kind = "run"                      # what the run is called in messages ("a {kind} with config.X=...")
    config_kind = "pretrain"          # config_lib.validate's kind; None: the task has no config file to validate
    config_file = "config.json"       # the record in the workdir, checked on resume
    resume_keys = ()                  # dotted keys of the record a resumed run must share
    resume_error = config_lib.ConfigError
    resume_key_prefix = "config."     # how the resume error names a key
    diverged_hint = "lower the learning rate"  # what TrainingDiverged advises
    loss = None                       # the Keras loss of model.compile (None: the model's train_step has its own)

    def __init__(self, config):
        self.config = config
        self.record = config
        self.strategy = None
        self.workdir = None
        self.total_steps = 0
        self.global_batch = 0
        self.checkpoint_every_steps = None  # None: config.checkpoint_every_steps, rounded with the other intervals

    # --- before the Trainer ---

    def check(self, workdir):
        """Checks that need no device, after config_lib.validate (a pretrained path, ...)."""

    def setup(self, strategy, workdir):
        """Opens the data and fixes the run: total_steps, global_batch, record."""
        raise NotImplementedError

    def check_sources(self, strategy, *opened):
        """Refuses, as `resume_error`, a source `strategy`'s input hosts cannot read (sources.check_source_for: an
        array_record set on a TPU pod slice); setup calls it before any model is built."""
        for source in opened:
            try:
                sources.check_source_for(source, strategy)
            except ValueError as err:
                raise self.resume_error(str(err)) from err

    def step_intervals(self):
        """{name: steps}: the step intervals that are rounded to multiples of the steps per host call."""
        return {"log_every_steps": self.config.log_every_steps,
                "checkpoint_every_steps": self.config.checkpoint_every_steps}

    def use_intervals(self, intervals):
        """Records the rounded intervals the run uses (config_file then holds them)."""

    def check_resume(self, workdir):
        """A resume check beyond resume_keys (raises the task's error)."""

    def announce(self, trainer):
        """Prints what the run is, before the model is built (most tasks print task.start_line after the restore)."""

    # --- the model ---

    def precision(self):
        """The Keras dtype policy the model is built and trained under (None: the global one, untouched)."""
        return self.config.mixed_precision

    def jit_compile(self, strategy):
        return trainer_lib.resolve_jit_compile(self.config, strategy)

    def make_model(self):
        raise NotImplementedError

    def make_optimizer(self):
        raise NotImplementedError

    def checkpoint_part(self, model, trainer):
        """What the checkpoints hold beside the optimizer, made before the restore (None: the model)."""
        return None

    def restored(self, model, trainer, start_step):
        """After the restore (start_step 0: none): pretrained weights on a fresh start, evaluation set-up."""

    # --- the loop ---

    def start_line(self, start_step):
        """The line printed before training from start_step (None: none)."""
        return None

    def finished_line(self, start_step):
        """The line printed when the run had already reached total_steps (None: none)."""
        return None

    def dataset(self, start_step):
        """The training batches of steps [start_step, total_steps), distributed over self.strategy."""
        raise NotImplementedError

    def callbacks(self, model, trainer):
        """The loop's Keras callbacks (between the step log and the checkpoint saver)."""
        return []

    def report(self, model, trainer, start_step, history):
        """Writes the report (trainer.report) and returns what `run` returns; history is None when no step ran."""
        raise NotImplementedError


def run(task, workdir, *, strategy=None, tpu="", print_fn=None, extra_callbacks=()):
    """Runs (or resumes) `task` in `workdir` (None: nothing is written; module docstring); returns task.report's
    value. Raises config_lib.ConfigError or the task's error before any work for a bad config or input,
    trainer.TrainingDiverged when the loss stops being finite and trainer.Preempted after a SIGTERM."""
    config = task.config
    if task.config_kind:
        config_lib.validate(config, kind=task.config_kind, workdir=workdir)  # before touching devices
    task.check(workdir)
    strategy = strategy or trainer_lib.strategy_for(config, tpu)
    if task.config_kind:
        config_lib.validate(config, kind=task.config_kind, num_replicas=strategy.num_replicas_in_sync,
                            workdir=workdir)
    task.strategy, task.workdir = strategy, workdir
    task.setup(strategy, workdir)

    steps_per_call = trainer_lib.resolve_steps_per_execution(config, strategy)
    intervals, intervals_line = trainer_lib.round_intervals(steps_per_call, **task.step_intervals())
    task.use_intervals(intervals)
    trainer = trainer_lib.Trainer(
        workdir, strategy=strategy, total_steps=task.total_steps, global_batch=task.global_batch,
        log_every_steps=intervals["log_every_steps"],
        checkpoint_every_steps=task.checkpoint_every_steps or intervals["checkpoint_every_steps"],
        keep_checkpoints=config.keep_checkpoints, config_file=task.config_file, kind=task.kind,
        steps_per_execution=steps_per_call, print_fn=print_fn)
    trainer.check_resume(task.record, task.resume_keys, error_cls=task.resume_error,
                         key_prefix=task.resume_key_prefix)
    if workdir:
        task.check_resume(workdir)
    if intervals_line:
        trainer.say(intervals_line)
    task.announce(trainer)

    policy = task.precision()
    with trainer_lib.precision(policy) if policy else contextlib.nullcontext():
        model = trainer.build(task.make_model, task.make_optimizer, seed=config.seed,
                              jit_compile=task.jit_compile(strategy), loss=task.loss)
        start_step = trainer.restore(model, checkpoint_model=task.checkpoint_part(model, trainer))
        task.restored(model, trainer, start_step)
        trainer.write_config(task.record)
        history = None
        if start_step < task.total_steps:
            line = task.start_line(start_step)
            if line:
                trainer.say(line)
            history = trainer.fit(model, task.dataset(start_step), start_step=start_step,
                                  callbacks=[*task.callbacks(model, trainer), *extra_callbacks],
                                  diverged_hint=task.diverged_hint)
        else:
            line = task.finished_line(start_step)
            if line:
                trainer.say(line)
        return task.report(model, trainer, start_step, history)
