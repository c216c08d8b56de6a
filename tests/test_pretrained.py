"""load_backbone / load_encoder / restore_moco on pre-training workdirs and checkpoint prefixes, and their errors.

(Converted official weights are covered in test_convert_official.py.)
"""

import os

import keras
import numpy as np
import pytest

from tf_mocov3 import config_lib
from tf_mocov3.models import moco
from tf_mocov3.training import checkpointing
from tf_mocov3.training import optim
from tf_mocov3.weights import pretrained

IMAGE = 16


def tiny_config():
    c = config_lib.base_config()
    c.model.arch = "vit_micro"
    c.model.overrides.embed_dim, c.model.overrides.depth, c.model.overrides.num_heads = 32, 2, 2
    c.model.moco_dim, c.model.mlp_dim = 16, 32
    c.dataset.image_size = IMAGE
    c.batch_size = 8
    return c


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A workdir as training.py writes it: config.json + checkpoints/ckpt-3 (model, optimizer, data position)."""
    path = str(tmp_path_factory.mktemp("run"))
    config = tiny_config()
    keras.utils.set_random_seed(1)
    model = moco.build_moco(config.model, image_size=IMAGE, total_steps=5)
    model.compile(optimizer=optim.build_optimizer(config.optim, global_batch=8, steps_per_epoch=5, total_steps=5))
    model.optimizer.build(model.trainable_variables)
    for v in model.projector.weights:  # non-trivial BN statistics, so that restoring them is visible
        v.assign(np.random.default_rng(0).uniform(0.5, 1.5, v.shape).astype(np.float32))
    checkpointing.Checkpointer(path, model=model, optimizer=model.optimizer).save(3)
    with open(os.path.join(path, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    return path, model


def _images(size=IMAGE):
    return np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)


def test_backbone_from_a_workdir_and_from_a_checkpoint_prefix(workdir):
    path, model = workdir
    want = model.backbone(_images()).numpy()
    np.testing.assert_allclose(pretrained.load_backbone(path)(_images()).numpy(), want, atol=1e-6)
    prefix = os.path.join(path, "checkpoints", "ckpt-3")
    encoder = pretrained.load_encoder(prefix)
    assert encoder.source == "checkpoint" and encoder.config.model.arch == "vit_micro"
    np.testing.assert_allclose(encoder.backbone(_images()).numpy(), want, atol=1e-6)
    feats = np.random.default_rng(1).normal(size=(4, 32)).astype(np.float32)
    np.testing.assert_allclose(encoder.projector(feats).numpy(), model.projector(feats).numpy(), atol=1e-5)
    assert pretrained.load_encoder(path).source == "workdir"


def test_another_image_size_uses_the_same_weights(workdir):
    path, model = workdir
    backbone = pretrained.load_backbone(path, image_size=32)
    assert backbone.input.shape[1:] == (32, 32, 3) and backbone(_images(32)).shape == (2, 32)
    for a, b in zip(backbone.weights, model.backbone.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_restore_moco_reads_every_part(workdir):
    path, model = workdir
    keras.utils.set_random_seed(2)
    fresh = moco.build_moco(tiny_config().model, image_size=IMAGE, total_steps=5)
    pretrained.restore_moco(fresh, path)
    for part in ("backbone", "projector", "predictor", "momentum_backbone", "momentum_projector"):
        for a, b in zip(getattr(fresh, part).weights, getattr(model, part).weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=part)


def test_errors_name_the_path_and_the_fix(workdir, tmp_path):
    path, _ = workdir
    with pytest.raises(ValueError, match="does not exist"):
        pretrained.load_backbone(str(tmp_path / "nowhere"))
    empty = tmp_path / "empty_run"
    (empty / "checkpoints").mkdir(parents=True)
    (empty / "config.json").write_text(tiny_config().to_json_best_effort())
    with pytest.raises(ValueError, match="holds no checkpoint"):
        pretrained.load_backbone(str(empty))
    with pytest.raises(ValueError, match="not the requested vit_small"):
        pretrained.load_backbone(path, arch="vit_small")
    with pytest.raises(ValueError, match="not divisible"):
        pretrained.load_backbone(path, image_size=18)
    with pytest.raises(ValueError, match=r"does not exist; pass the backbone.keras"):
        pretrained.load_backbone(str(tmp_path / "backbone.keras"))
    with pytest.raises(ValueError, match="no linear classifier"):
        pretrained.load_classifier(path)
