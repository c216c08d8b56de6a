"""Preemption and failed checkpoint writes (training/trainer.py, callbacks.PreemptionWatcher, checkpointing.py).

A SIGTERM mid-run stops the command after the step in flight with exit status 143 and that step's checkpoint, on one
process and on two loopback workers (the signal reaches one of them); the rerun lands on a straight run's weights. A
checkpoint write that really fails is one sentence and keeps the previous checkpoint restorable; a worker that cannot
see the chief's workdir stops at start.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from conftest import ROOT
from conftest import checkpoint_tensors
from conftest import needs_fmnist
import roundoff
from test_training import _free_ports
from test_training import assert_same_weights
from tf_mocov3 import cli
from tf_mocov3.data import sources
from tf_mocov3.models import moco
from tf_mocov3.training import checkpointing
from tf_mocov3.training import optim
from tf_mocov3.training import pretrain
from tf_mocov3.training import trainer as trainer_lib

# Long enough that a SIGTERM sent once step 1 is logged (compilation done) lands mid-run: the remaining steps take
# about half a second even at this machine's fastest, 12 ms per step (a loaded machine only widens the margin). No
# warmup and AdamW eps 1e-3 (tests/roundoff.py, EQUALITY_EPS): Adam moves a weight whose gradient keeps its sign by
# about lr = 1.5e-3 * 8 / 256 = 4.7e-5 a step, so a resume that loses or repeats a step leaves 1e-5, while round-off
# between runs is damped (lr / eps = 0.047 times a gradient's round-off).
STEPS = 40
OVERRIDES = {"max_steps": STEPS, "checkpoint_every_steps": 1000, "optim.warmup_epochs": 0.0, "optim.epsilon": 1e-3}
# Two workers against one process: the existing two-worker test's setting (tests/test_training.py), the tiny
# config's warmup from lr 0, where round-off cannot grow through the weights, over enough steps for a mid-run signal
# (a two-worker step takes far longer than one process's). The batches seen still show in BN's moving statistics.
MULTI_OVERRIDES = {"max_steps": 12, "checkpoint_every_steps": 1000}


def _flags(overrides):
    return [f"--config.{key}={value}" for key, value in overrides.items()]


def _set(config, overrides):
    for key, value in overrides.items():
        section, _, leaf = key.rpartition(".")
        (config[section] if section else config)[leaf] = value
    return config


def _straight(tmp, tiny_config, overrides):
    tmp.mkdir(exist_ok=True)
    config = _set(tiny_config(tmp)[0], overrides)
    workdir = str(tmp / "run")
    assert pretrain.run_pretraining(config, workdir, print_fn=lambda s: None)["step"] == overrides["max_steps"]
    return workdir, config


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_config):
    """The uninterrupted in-process run of OVERRIDES: (workdir, config)."""
    return _straight(tmp_path_factory.mktemp("straight"), tiny_config, OVERRIDES)


def _train(path, workdir, *extra, overrides=None, env=None):
    return subprocess.Popen([sys.executable, "-m", "tf_mocov3.train", f"--config={path}", f"--workdir={workdir}",
                             *_flags(overrides or OVERRIDES), *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_step(workdir, step, procs, timeout=300):
    """Blocks until the chief's metrics.jsonl logs `step` (fails if a process ends first)."""
    log = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert all(p.poll() is None for p in procs), "a run ended before the signal"
        if os.path.exists(log):
            lines = open(log).read().splitlines()
            if lines and json.loads(lines[-1])["step"] >= step:
                return
        time.sleep(0.01)
    raise AssertionError(f"step {step} was not logged within {timeout} s")


def _preempted_step(stderr):
    """N from the run's last line `Preempted by SIGTERM at step N; saved PATH, ...`."""
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("Preempted by SIGTERM at step "), stderr[-3000:]
    return int(line.split("at step ")[1].split(";")[0]), line


def _trained(workdir):
    """The latest checkpoint's tensors without save_counter, which counts saves (a preempted run makes one more)."""
    return {k: v for k, v in checkpoint_tensors(workdir).items() if not k.startswith("save_counter")}


def _latest(workdir):
    return tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))


@needs_fmnist
def test_sigterm_saves_the_step_reached_and_the_rerun_matches_a_straight_run(tmp_path, tiny_config, straight):
    _, path = tiny_config(tmp_path)
    workdir = str(tmp_path / "run")
    proc = _train(path, workdir)
    _wait_for_step(workdir, 1, [proc])
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == cli.PREEMPTED_EXIT_CODE == 143, err[-3000:]
    step, line = _preempted_step(err)
    assert 1 <= step < STEPS
    ckpt = os.path.join(workdir, "checkpoints", f"ckpt-{step}")
    assert _latest(workdir) == ckpt and f"saved {ckpt}," in line
    tensors = checkpoint_tensors(workdir)
    assert tensors["data_position/.ATTRIBUTES/VARIABLE_VALUE"] == step
    # The log reached the same step (one record per step here).
    assert json.loads(open(os.path.join(workdir, "metrics.jsonl")).read().splitlines()[-1])["step"] == step
    assert "Traceback" not in err

    lines = []  # the rerun: what the command runs, in this process (it saves a process start)
    assert pretrain.run_pretraining(straight[1], workdir, print_fn=lines.append)["step"] == STEPS
    assert f"Resuming from step {step} ({ckpt})." in lines
    # One process, the same kernels, the same order of operations: the resumed steps recompute the straight run's
    # numbers, so 1e-5 (roundoff.ATOL, the project's run-to-run tolerance) holds with room; a resume that repeated
    # one batch (tried by hand: make_dataset started one step early) put a weight 0.39 apart.
    assert_same_weights(_trained(straight[0]), _trained(workdir), atol=roundoff.ATOL)


def _workers(path, workdirs, *extra, overrides=MULTI_OVERRIDES):
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    procs = []
    for index, workdir in enumerate(workdirs):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        procs.append(_train(path, workdir, "--strategy=multi_worker", *extra, overrides=overrides, env=env))
    return procs


@needs_fmnist
def test_sigterm_to_one_of_two_workers_stops_both_at_one_step_and_the_rerun_matches(tmp_path, tiny_config):
    _, path = tiny_config(tmp_path)
    steps = MULTI_OVERRIDES["max_steps"]
    workdir = str(tmp_path / "multi")
    procs = _workers(path, [workdir, workdir])
    _wait_for_step(workdir, 1, procs)
    procs[1].send_signal(signal.SIGTERM)  # the worker that is not the chief: the chief learns it from the exchange
    outputs = [p.communicate(timeout=300) for p in procs]
    stopped = []
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 143, err[-3000:]
        stopped.append(_preempted_step(err)[0])
    step = stopped[0]
    assert stopped == [step, step] and 1 <= step < steps
    assert _latest(workdir) == os.path.join(workdir, "checkpoints", f"ckpt-{step}")
    assert checkpoint_tensors(workdir)["data_position/.ATTRIBUTES/VARIABLE_VALUE"] == step
    assert not [d for d in os.listdir(workdir) if d.startswith(".")]  # no scratch checkpoint, no token file

    procs = _workers(path, [workdir, workdir])
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    assert f"Resuming from step {step} " in outputs[0][0]
    # As tests/test_training.py's two-worker test, with its helper and tolerances: two workers against one process
    # differ by the all-reduce's round-off; weights within 1e-5, Adam's moments within 1e-3 of their size, structural
    # zeros within Adam's bound for the steps' learning rates (tests/roundoff.py).
    straight, config = _straight(tmp_path / "straight", tiny_config, MULTI_OVERRIDES)
    model = moco.build_moco(config.model, image_size=config.dataset.image_size, total_steps=steps)
    model.compile(optimizer=optim.build_optimizer(config.optim, global_batch=config.batch_size,
                                                  steps_per_epoch=sources.steps_per_epoch(config), total_steps=steps))
    variables = roundoff.checkpoint_variables(os.path.join(straight, "checkpoints"), model)
    roundoff.assert_runs_agree(_trained(straight), _trained(workdir), variables, model=model,
                               lrs=roundoff.learning_rates(model, steps), slots_rtol=1e-3,
                               what=f"{steps} steps: 2 workers preempted at {step} and rerun vs 1 process")


@needs_fmnist
def test_a_failed_checkpoint_write_is_one_sentence_and_the_previous_checkpoint_restores(tmp_path, tiny_config):
    config, _ = tiny_config(tmp_path)
    workdir = str(tmp_path / "run")

    def trainer_and_model():
        trainer = trainer_lib.Trainer(workdir, total_steps=4, global_batch=config.batch_size)
        model = trainer.build(
            lambda: moco.build_moco(config.model, image_size=config.dataset.image_size, total_steps=4),
            lambda: optim.build_optimizer(config.optim, global_batch=config.batch_size,
                                          steps_per_epoch=sources.steps_per_epoch(config), total_steps=4),
            seed=config.seed)
        return trainer, model, trainer.restore(model)

    trainer, model, _ = trainer_and_model()
    model.optimizer.iterations.assign(2)
    kept = trainer.checkpointer.save(2)
    # A real write failure, which root cannot bypass: a regular file where the save of step 4 makes its directory.
    with open(os.path.join(workdir, "checkpoints", "ckpt-4_temp"), "w"):
        pass
    model.optimizer.iterations.assign(4)
    with pytest.raises(checkpointing.CheckpointWriteError) as err:
        trainer.checkpointer.save(4)
    message = str(err.value)
    assert message.startswith(f"Writing the checkpoint of step 4 to {os.path.join(workdir, 'checkpoints', 'ckpt-4')} "
                              f"failed ("), message
    assert message.endswith(f"); the last complete checkpoint, {kept}, is kept, and running the same command again "
                            f"resumes from it once the storage is fixed."), message
    assert "Not a directory" in message and "{{" not in message  # the system's reason, without TensorFlow's op name
    # What the command prints: this sentence on one line after "error: ", exit status 1, no traceback.
    assert cli.is_user_error(err.value) and cli.one_line(err.value) == message and "\n" not in message
    assert _latest(workdir) == kept
    trainer, model, start = trainer_and_model()
    assert start == 2  # the restore matched every object and the data position (Checkpointer)

    # Under several workers the others stop too (checkpointing.Checkpointer.save): here a second worker whose own
    # scratch save succeeds hears, through the exchange (stubbed: the chief's flag set), that the chief's failed.
    other = checkpointing.Checkpointer(workdir, model=model, optimizer=model.optimizer, is_chief=False,
                                       worker_index=1, worker_values=lambda failed: [1.0, float(failed)])
    with pytest.raises(checkpointing.CheckpointWriteError) as err:
        other.save(2)
    assert str(err.value) == (
        f"The chief (worker 0) could not write the checkpoint of step 2 to {os.path.join(workdir, 'checkpoints')}; "
        f"the last complete checkpoint, {kept}, is kept, and running the same command again resumes from it once "
        f"that worker's storage is fixed.")
    assert not os.path.exists(os.path.join(workdir, ".scratch_worker_1"))


@needs_fmnist
def test_a_worker_that_cannot_see_the_chiefs_workdir_stops_at_start(tmp_path, tiny_config):
    _, path = tiny_config(tmp_path)
    chief, other = str(tmp_path / "chief_disk"), str(tmp_path / "other_disk")  # two local disks, not one workdir
    procs = _workers(path, [chief, other])
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, workdir, (_, err) in zip(procs, (chief, other), outputs):
        assert p.returncode == 1, err[-3000:]
        assert err.strip().splitlines()[-1] == (
            f"error: Worker 1 cannot see the chief's workdir {workdir} (the token file the chief "
            f"wrote there is missing or different); a run of several workers needs a --workdir on storage all of "
            f"them share, such as gs://BUCKET/DIR.")
    assert not os.path.exists(os.path.join(chief, "checkpoints"))
