"""Workdirs written before the stage layout (tests/data/before_layout/) still restore completely and give the numbers.

tests/data/before_layout/make_fixture.py wrote them with the code of the commit before the layout move: a 4-step
pre-training run and a 4-step fine-tuning run, both stopped at step 2 (checkpoints/ckpt-2). The current code must
resume each to step 4 and land on the weights of a straight 4-step run of the current code, and load the old
pre-training backbone with exactly the stored tensors.
"""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from conftest import FMNIST
from conftest import checkpoint_tensors
from conftest import needs_fmnist
import roundoff
from tf_mocov3 import config_lib
from tf_mocov3.data import augment
from tf_mocov3.training import finetune
from tf_mocov3.training import pretrain
from tf_mocov3.weights import pretrained

BEFORE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "before_layout")
# Loading is exact (the stored tensors themselves); the resumed runs' steps 1-2 ran on the fixture's machine and the
# straight runs' here, so they differ by round-off, held to 1e-5 (and to Adam's bound where round-off is all a weight's
# gradient is: tests/roundoff.py).
ATOL = roundoff.ATOL


def pre_config():
    """make_fixture.py's pre_config(), value for value."""
    c = config_lib.base_config()
    c.batch_size = 8
    c.max_steps = 4
    c.jit_compile = "false"
    c.log_every_steps = 1
    c.checkpoint_every_steps = 2
    c.keep_checkpoints = 1
    c.strategy = "one_device"
    c.model.arch = "vit_micro"
    c.model.overrides.embed_dim = 16
    c.model.overrides.depth = 1
    c.model.overrides.num_heads = 2
    c.model.mlp_dim = 16
    c.model.moco_dim = 8
    c.optim.base_lr = 1.5e-3
    c.optim.warmup_epochs = 0.0
    c.dataset.name = "fashion_mnist_idx"
    c.dataset.path = FMNIST
    c.dataset.image_size = 16
    c.dataset.crop_min = 0.2
    return c


def finetune_config():
    """make_fixture.py's fine-tuning config, value for value."""
    c = config_lib.finetune_config()
    c.batch_size = 8
    c.max_steps = 4
    c.image_size = 16
    c.strategy = "one_device"
    c.jit_compile = "false"
    c.log_every_steps = 1
    c.checkpoint_every_steps = 2
    c.keep_checkpoints = 1
    c.model.arch = "vit_micro"
    c.optim.warmup_epochs = 0
    c.dataset.name = "fashion_mnist_idx"
    c.dataset.path = FMNIST
    c.dataset.train_split = "train"
    c.dataset.eval_split = "test"
    c.eval.max_examples = 16
    c.eval.batch_size = 8
    return c


def copy_old(name, tmp_path):
    dst = str(tmp_path / f"old_{name}")
    shutil.copytree(os.path.join(BEFORE, name), dst)
    return dst


def variables_under(prefix, path):
    """{object path below `prefix`: tensor} for every variable the checkpoint at `path` reaches through `prefix`.

    Keras 3 stores a trainable variable once, under the optimizer's list; the object graph still names it below
    model/backbone, so the tensors are found by walking the graph rather than by checkpoint key.
    """
    reader = tf.train.load_checkpoint(path)
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    node = 0
    for name in prefix.split("/"):
        node = next(c.node_id for c in graph.nodes[node].children if c.local_name == name)
    found = {}

    def walk(node_id, names, seen):
        for attr in graph.nodes[node_id].attributes:
            if attr.name == "VARIABLE_VALUE":
                found["/".join(names)] = reader.get_tensor(attr.checkpoint_key)
        for child in graph.nodes[node_id].children:
            if child.node_id not in seen:
                walk(child.node_id, names + [child.local_name], seen | {child.node_id})

    walk(node, [], {node})
    return found


def assert_same_run(want, got, workdir, model, what):
    """The checkpoints of two 4-step runs agree as far as round-off allows (tests/roundoff.py): `model` is the
    straight run's live model, whose variables name the checkpoint keys of `workdir`."""
    variables = roundoff.checkpoint_variables(os.path.join(workdir, "checkpoints"), model)
    assert sum(v is not None for v in variables.values()) > 10
    # Adam's moments (eps 1e-8 here, the recipe's) to 1e-3 of their largest entry: between the fixture machine's
    # steps and an AVX-capped run here they differed by up to 1.2e-4 of it (BUILD_NOTES.md, "Round-off across CPUs");
    # a moment lost or given to another variable on restore differs by the whole of it.
    roundoff.assert_runs_agree(want, got, variables, model=model, lrs=roundoff.learning_rates(model, 4), what=what,
                               slots_scale=1e-3)


def assert_same_tensors(want, got, what):
    assert want.keys() == got.keys(), what
    for key in sorted(want):
        np.testing.assert_allclose(got[key], want[key], atol=ATOL, rtol=0, err_msg=f"{what}: {key}")


@pytest.mark.roundoff
@needs_fmnist
def _float_views(crop1, coins1, jitter1, crop2, coins2, jitter2):
    """The fixture's batch augmentation: normalised float32 views (the pipeline now rounds them to uint8 levels
    and the train step normalises, which changes the inputs by up to 0.5/255, not the checkpoint)."""
    def one_example(t):
        return (augment._apply_view(t[0], t[1], t[2], **augment.VIEW1),  # pylint: disable=protected-access
                augment._apply_view(t[3], t[4], t[5], **augment.VIEW2))  # pylint: disable=protected-access

    return tf.map_fn(one_example, (crop1, coins1, jitter1, crop2, coins2, jitter2),
                     fn_output_signature=(tf.float32, tf.float32))


def test_old_pretraining_checkpoint_resumes_to_the_numbers_of_a_straight_run(tmp_path, monkeypatch):
    # Both runs see the views the fixture's steps 1-2 saw (float32, XLA as the fixture's code compiled them).
    monkeypatch.setattr(augment, "augment_two_view_batch", tf.function(_float_views, jit_compile=True))
    old = copy_old("pretrain", tmp_path)
    lines = []
    resumed = pretrain.run_pretraining(pre_config(), old, print_fn=lines.append)
    assert any("Resuming from step 2" in line for line in lines), lines
    assert resumed["step"] == 4
    straight_dir = str(tmp_path / "straight")
    straight = pretrain.run_pretraining(pre_config(), straight_dir, print_fn=lambda s: None)
    assert straight["step"] == 4
    want, got = checkpoint_tensors(straight_dir), checkpoint_tensors(old)
    assert any(k.startswith("model/momentum_backbone/") for k in want)
    assert int(got["optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"]) == 4
    assert_same_run(want, got, straight_dir, straight["model"],
                    "step-4 pre-training checkpoint, resumed old run vs straight current run")


def test_load_backbone_of_an_old_workdir_gives_the_stored_tensors(tmp_path):
    old = copy_old("pretrain", tmp_path)
    backbone = pretrained.load_backbone(old)
    stored = variables_under("model/backbone", os.path.join(old, "checkpoints", "ckpt-2"))
    loaded_path = tf.train.Checkpoint(backbone=backbone).write(str(tmp_path / "loaded" / "ckpt"))
    loaded = variables_under("backbone", loaded_path)
    assert len(stored) == len(backbone.weights) > 10  # every weight of the 1-block ViT, frozen patch embed included
    assert_same_tensors(stored, loaded, "backbone loaded from the old workdir vs its ckpt-2")


@pytest.mark.roundoff
@needs_fmnist
def test_old_finetuning_checkpoint_resumes_to_the_numbers_of_a_straight_run(tmp_path):
    old_pre = copy_old("pretrain", tmp_path)
    old = copy_old("finetune", tmp_path)
    # The resume check (config_lib.check_resume_compatible with finetune._RESUME_KEYS) does not compare "pretrained"
    # today; the copied record still names the copied pre-training workdir, so a check that did would pass too.
    record_path = os.path.join(old, "config.json")
    record = json.load(open(record_path))
    assert record["pretrained"] == "/tmp/work/ckfix/v1/pretrain"
    record["pretrained"] = os.path.abspath(old_pre)
    with open(record_path, "w") as f:
        json.dump(record, f, indent=2)

    lines = []
    resumed = finetune.run_finetune(finetune_config(), old, old_pre, print_fn=lines.append)
    assert any("Resuming from step 2" in line for line in lines), lines
    assert resumed["step"] == 4
    straight_dir = str(tmp_path / "straight")
    straight = finetune.run_finetune(finetune_config(), straight_dir, old_pre, print_fn=lambda s: None)
    assert straight["step"] == 4
    want, got = checkpoint_tensors(straight_dir), checkpoint_tensors(old)
    assert sum("_trainable_variables" in k for k in want) > 10  # the trained weights themselves are compared
    assert int(got["optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"]) == 4
    assert_same_run(want, got, straight_dir, straight["model"],
                    "step-4 fine-tuning checkpoint, resumed old run vs straight current run")
    assert resumed["top1"] == straight["top1"]


def test_old_finetuning_workdir_meets_deits_schedule_with_one_sentence_before_any_work(tmp_path):
    old_pre = copy_old("pretrain", tmp_path)
    old = copy_old("finetune", tmp_path)
    record_path = os.path.join(old, "config.json")
    record = open(record_path).read()
    # Written before optim.schedule and aug.mixup_group existed: it ran the per-step lr and one lambda per batch.
    assert "schedule" not in json.loads(record)["optim"] and "mixup_group" not in json.loads(record)["aug"]
    finetune.check_resume_options(old, finetune_config())  # finetune_config's defaults are what it ran: it resumes
    deit = finetune_config()
    deit.optim.schedule, deit.aug.mixup_group = "per_epoch", 4  # the transfer recipes' switches (groups of 4 of 8)
    before = checkpoint_tensors(old)
    with pytest.raises(finetune.FinetuneError) as refused:
        finetune.run_finetune(deit, old, old_pre, print_fn=lambda s: None)
    assert str(refused.value) == (
        f"--workdir={old} holds a fine-tuning run with config.optim.schedule='per_step' and config.aug.mixup_group=0, "
        f"not 'per_epoch' and 4; resume with --config.optim.schedule=per_step --config.aug.mixup_group=0 or choose a "
        f"new --workdir.")
    after = checkpoint_tensors(old)  # nothing was written: the same checkpoint and record
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)
    assert open(record_path).read() == record
