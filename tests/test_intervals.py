"""Steps per host call (config.steps_per_execution) against the intervals of every shipped config: what each loop
resolves (trainer.round_intervals, trainer.crossed), and one short run of configs/vit_base.py with 32 steps per call,
the README's TPU command shrunk to a tiny model."""

import glob
import importlib.util
import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import FMNIST
from conftest import ROOT
from conftest import needs_fmnist
from tf_mocov3.training import finetune
from tf_mocov3.training import linear_probe
from tf_mocov3.training import pretrain
from tf_mocov3.training import trainer as trainer_lib

CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))


def _load(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _kind(config):
    return "probe" if "base_lrs" in config else "finetune" if "aug" in config else "pretrain"


def _resolved(config, k):
    """{key: steps} a run of `config` with k steps per call uses, and the printed line (None = unchanged)."""
    kind = _kind(config)
    if kind == "pretrain":
        used, line = pretrain.round_intervals(config, k)
        of = lambda c: {"log_every_steps": c.log_every_steps, "checkpoint_every_steps": c.checkpoint_every_steps,
                        **({"knn.every_steps": c.knn.every_steps} if c.knn.enabled else {})}
        return of(used), of(config), line
    module = finetune if kind == "finetune" else linear_probe
    used, line = module.step_intervals(config, k)
    return used, {key: config[key] for key in used}, line


def _call_ends(total, k):
    """The steps at which Keras' host calls of k steps end (the last one short), from step 0."""
    return list(range(k, total, k)) + [total]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.basename(p)[:-3])
def test_every_shipped_config_runs_with_32_and_with_1_step_per_call(path):
    config = _load(path)
    used, given, line = _resolved(config, 32)
    assert used.keys() == given.keys() and used
    for key, steps in used.items():  # the smallest multiple of 32 at or above the config's value
        assert steps % 32 == 0 and given[key] <= steps < given[key] + 32, key
    changed = [key for key in used if used[key] != given[key]]
    if changed:
        assert line.startswith("With 32 steps per host call") and all(f"{key} {given[key]} -> " in line
                                                                      for key in changed)
    else:
        assert line is None
    used, given, line = _resolved(config, 1)
    assert used == given and line is None


def test_readme_tpu_config_rounds_to_the_ends_of_calls():
    config = _load(os.path.join(ROOT, "configs", "vit_base.py"))
    used, line = pretrain.round_intervals(config, 32)
    assert (used.log_every_steps, used.checkpoint_every_steps) == (64, 1024)
    assert (config.log_every_steps, config.checkpoint_every_steps) == (50, 1000)  # the caller's config unchanged
    assert line == ("With 32 steps per host call (config.steps_per_execution) the intervals act on the ends of "
                    "calls, so they are rounded up to multiples of 32: log_every_steps 50 -> 64, "
                    "checkpoint_every_steps 1000 -> 1024.")


@pytest.mark.parametrize("name", ["linear_imagenet", "linear_imagenet_official", "finetune_imagenet_vit_base"])
def test_epoch_intervals_act_at_the_end_of_the_call_that_completes_them(name):
    config = _load(os.path.join(ROOT, "configs", f"{name}.py"))
    train = 1_281_167 - int(config.get("holdout_examples", 0))  # ImageNet's training split less the holdout
    if _kind(config) == "probe":
        spe = math.ceil(train / config.batch_size)  # the probe keeps each epoch's last, partial batch
    else:
        spe = train // config.batch_size
    assert spe % 32, "an epoch length 32 divides would not test the rule"
    epochs = int(config.epochs)
    acted, previous = [], 0
    for step in _call_ends(spe * epochs, 32):
        if trainer_lib.crossed(previous, step, spe):
            acted.append(step)
        previous = step
    ends = [e * spe for e in range(1, epochs + 1)]
    assert len(acted) == epochs  # once per epoch, at the first call end at or after the epoch's last step
    assert all(end <= step < end + 32 and (step % 32 == 0 or step == ends[-1]) for end, step in zip(ends, acted))
    assert [s for s in _call_ends(spe * epochs, 1) if trainer_lib.crossed(s - 1, s, spe)] == ends


@pytest.mark.roundoff
def test_probe_epochs_under_three_steps_per_call_train_the_heads_of_one(tmp_path):
    # 10 features of 4 classes in batches of 2: 5 steps an epoch, which 3 does not divide.
    rng = np.random.default_rng(0)
    features, labels = rng.normal(size=(10, 6)).astype(np.float32), rng.integers(0, 4, 10)
    heads, curves = {}, {}
    for k in (1, 3):  # base lrs 12.8 and 64 at batch 2: the heads' lrs 0.1 and 0.5
        run = linear_probe.probe_on_features((features, labels), (features, labels), (features, labels), 4,
                                             base_lrs=[12.8, 64.0], batch_size=2, epochs=2, seed=0,
                                             steps_per_execution=k)
        assert [row["lr"] for row in run["table"]] == pytest.approx([0.1, 0.5])  # base * 2 / 256 in float64
        curves[k] = run["curves"]
        heads[k] = [w.numpy() for w in run["model"].trainable_weights]
    # float32 sums of the same steps in another loop shape: round-off of a few ulps at most
    for a, b in zip(heads[1], heads[3]):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    steps = lambda k: [step for step, _ in curves[k]["train loss (epoch mean)"]]
    assert steps(1) == [5, 10] and steps(3) == [6, 10]  # epoch 1 ends in the call of steps 4-6


@needs_fmnist
def test_vit_base_trains_with_32_steps_per_call(tmp_path):
    """configs/vit_base.py as the README's TPU command runs it (--config.steps_per_execution=32), shrunk by
    overrides to a tiny model on Fashion-MNIST: its intervals are rounded, it logs and checkpoints at call ends."""
    config = _load(os.path.join(ROOT, "configs", "vit_base.py"))
    config.steps_per_execution = "32"  # as the flag gives it
    config.strategy, config.jit_compile = "one_device", "false"
    config.dataset.name, config.dataset.path, config.dataset.image_size = "fashion_mnist_idx", FMNIST, 16
    config.model.arch = "vit_micro"
    config.model.overrides.embed_dim, config.model.overrides.depth, config.model.overrides.num_heads = 32, 1, 2
    config.model.mlp_dim, config.model.moco_dim = 32, 16
    config.batch_size, config.max_steps = 4, 96
    config.log_every_steps, config.checkpoint_every_steps = 20, 40  # not multiples of 32, as 50 and 1000
    lines = []
    workdir = str(tmp_path / "run")
    result = pretrain.run_pretraining(config, workdir, print_fn=lines.append)
    assert result["step"] == 96
    assert ("With 32 steps per host call (config.steps_per_execution) the intervals act on the ends of calls, so "
            "they are rounded up to multiples of 32: log_every_steps 20 -> 32, checkpoint_every_steps 40 -> 64."
            in lines)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert [row["step"] for row in rows] == [32, 64, 96]
    assert all(math.isfinite(row["loss"]) for row in rows)
    state = tf.train.get_checkpoint_state(os.path.join(workdir, "checkpoints"))
    assert sorted(int(p.rsplit("-", 1)[1]) for p in state.all_model_checkpoint_paths) == [64, 96]
    with open(os.path.join(workdir, "config.json")) as f:
        recorded = json.load(f)
    assert (recorded["log_every_steps"], recorded["checkpoint_every_steps"]) == (32, 64)
