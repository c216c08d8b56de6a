"""Shared by the fine-tuning tests: a tiny pre-training workdir writer, the tiny fine-tuning config, a builder."""

import os

import keras
import numpy as np

from conftest import FMNIST
from tf_mocov3 import config_lib
from tf_mocov3.models import moco
from tf_mocov3.training import checkpointing
from tf_mocov3.training import finetune
from tf_mocov3.training import optim

PRE_SIZE = 16
TINY = dict(embed_dim=32, depth=2, num_heads=2)


def write_pretrained_dir(path):
    """A pre-training workdir as training writes it (vit_micro, 32 wide, 2 blocks, 16 px), non-trivial weights."""
    path = str(path)
    c = config_lib.base_config()
    c.model.arch = "vit_micro"
    c.model.overrides.embed_dim, c.model.overrides.depth, c.model.overrides.num_heads = 32, 2, 2
    c.model.moco_dim, c.model.mlp_dim = 16, 32
    c.dataset.image_size = PRE_SIZE
    keras.utils.set_random_seed(3)
    model = moco.build_moco(c.model, image_size=PRE_SIZE, total_steps=5)
    model.compile(optimizer=optim.build_optimizer(c.optim, global_batch=8, steps_per_epoch=5, total_steps=5))
    model.optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(0)
    for v in model.backbone.weights:  # every weight non-default, so a missed copy is visible
        v.assign(rng.normal(0, 0.1, v.shape).astype(np.float32))
    checkpointing.Checkpointer(path, model=model, optimizer=model.optimizer).save(2)
    with open(os.path.join(path, "config.json"), "w") as f:
        f.write(c.to_json_best_effort(indent=2))
    return path


def tiny_config(**dataset):
    c = config_lib.finetune_config()
    c.batch_size, c.max_steps, c.image_size = 4, 4, PRE_SIZE
    c.strategy, c.jit_compile = "one_device", "false"
    c.log_every_steps, c.checkpoint_every_steps = 1, 2
    c.model.arch = "vit_micro"
    c.optim.warmup_epochs = 0
    c.optim.base_lr = 1e-3
    c.eval.max_examples, c.eval.batch_size = 8, 8
    c.dataset.name, c.dataset.path = "fashion_mnist_idx", FMNIST
    c.dataset.update(dataset)
    return c


def build(config, path):
    arch, overrides = finetune.check_pretrained(config, path)
    return finetune.build_classifier(config, arch=arch, overrides=overrides, num_classes=10)
