"""A run whose workdir and export are URLs keeps every file there: on TensorFlow's in-process `ram://` file system
(what a gs:// bucket is to tf.io.gfile, without a network), a tiny pre-training run with the kNN monitor, its resume,
its reports, the `--pretrained` look-ups, a SavedModel export and the official-checkpoint converter's output write
nothing on the local disk, and the probe's and fine-tuning's resume checks read their records there. A plain Python
file call on such a path would create a local folder named `ram:` instead (or fail to find the file)."""

import json
import os
import uuid

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT
from conftest import make_tiny_config
from conftest import needs_fmnist
from export import saved_model as sm
from tf_mocov3 import config_lib
from tf_mocov3.evaluation import knn
from tf_mocov3.training import finetune
from tf_mocov3.training import linear_probe
from tf_mocov3.training import pretrain
from tf_mocov3.training import reports
from tf_mocov3.weights import convert_official
from tf_mocov3.weights import pretrained

gfile = tf.io.gfile


def _bucket():
    """A fresh ram:// "bucket" (the file system lives as long as the process, so each test takes its own)."""
    return f"ram://cloud_paths_{uuid.uuid4().hex[:8]}"


@needs_fmnist
def test_pretraining_resume_reports_and_export_stay_on_ram(tmp_path, tmp_path_factory, monkeypatch):
    config, _ = make_tiny_config(tmp_path_factory.mktemp("cloud_config"))  # the config file lives elsewhere
    config.knn.update(dict(enabled=True, every_steps=2, bank="queue", queue_size=16, max_eval_examples=64,
                           batch_size=64, dip_margin=100.0))
    monkeypatch.chdir(tmp_path)  # an empty current directory: a plain open("ram://...") would land here
    bucket = _bucket()
    workdir = f"{bucket}/run"
    lines = []

    pretrain.run_pretraining(config, workdir, make_callbacks=knn.monitor_callbacks, print_fn=lines.append)
    config.max_steps = 6  # the second call resumes from the checkpoint of step 4 and continues to step 6
    second = pretrain.run_pretraining(config, workdir, make_callbacks=knn.monitor_callbacks, print_fn=lines.append)
    assert second["step"] == 6
    assert f"Resuming from step 4 ({workdir}/checkpoints/ckpt-4)." in lines

    # The resume check reads config.json back from ram://: a changed RESUME_KEYS key is refused with its sentence.
    changed = ml_collections.ConfigDict(config.to_dict())
    changed.seed, changed.max_steps = 1, 8
    with pytest.raises(config_lib.ConfigError) as err:
        pretrain.run_pretraining(changed, workdir, print_fn=lines.append)
    assert str(err.value) == (f"--workdir={workdir} holds a run with config.seed=0, not 1; resume with the same "
                              f"config or choose a new --workdir.")

    # Everything of the run is under the ram:// workdir.
    assert config_lib.read_json(f"{workdir}/config.json")["max_steps"] == 6
    records = reports.read_log(workdir)
    assert [r["step"] for r in records if "knn_top1" in r] == [2, 4, 6]  # the kNN monitor logged through gfile
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]  # both calls appended to one log
    assert reports.read_metrics(workdir)["pretrain"]["step"] == 6
    with gfile.GFile(f"{workdir}/pretrain.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert tf.train.latest_checkpoint(f"{workdir}/checkpoints") == f"{workdir}/checkpoints/ckpt-6"
    assert any(name.startswith("events.out.tfevents") for name in gfile.listdir(f"{workdir}/tensorboard"))
    assert not [name for name in gfile.listdir(workdir) if name.startswith(".write_check")]

    # --pretrained=ram://...: a checkpoint prefix and WORKDIR/checkpoints resolve through gfile (no CWD/ram:/...).
    assert pretrained.resolve(f"{workdir}/checkpoints/ckpt-4")[::2] == (f"{workdir}/checkpoints/ckpt-4", "checkpoint")
    assert pretrained.resolve(f"{workdir}/checkpoints/")[::2] == (f"{workdir}/checkpoints/ckpt-6", "workdir")
    # An export of the workdir's backbone to ram:// that loads back with the live backbone's features.
    backbone = pretrained.load_backbone(workdir)
    output = f"{bucket}/models"
    version_dir = sm.export_saved_model(backbone, output, warmup=False)
    assert version_dir == f"{output}/1"
    assert sorted(gfile.listdir(output)) == ["1"]  # the temporary directory was moved, not left behind
    info = json.loads(gfile.GFile(f"{version_dir}/assets.extra/{sm.INFO_FILE}").read())
    assert info["keras_file"] == sm.KERAS_FILE and gfile.exists(f"{version_dir}/{sm.KERAS_FILE}")
    loaded = tf.saved_model.load(version_dir)
    images = tf.random.stateless_normal([3, 16, 16, 3], seed=[1, 2])
    live = second["model"].backbone(images, training=False).numpy()
    exported = loaded.signatures[sm.EMBED_PREPROCESSED](images=images)[sm.FEATURES].numpy()
    # 1e-5: the SavedModel runs the same float32 ops on copies of the same weights in a graph, where TensorFlow may
    # fuse or order them differently; features are of order 1, so this allows a few float32 ulps of round-off.
    np.testing.assert_allclose(exported, live, atol=1e-5, rtol=0)
    # The export's backbone.keras as --pretrained=ram://... (Keras copies a remote .keras to a system temp folder,
    # outside the current directory, and loads it from there). Same tolerance, same reason.
    from_keras = pretrained.load_backbone(f"{version_dir}/{sm.KERAS_FILE}")(images, training=False).numpy()
    np.testing.assert_allclose(from_keras, live, atol=1e-5, rtol=0)

    # Nothing landed on the local disk: not in the current directory (tmp_path), not beside the repository.
    assert os.listdir(tmp_path) == []
    assert not os.path.exists(os.path.join(ROOT, "ram:"))


def test_converted_official_weights_are_written_to_ram_and_load_back(tmp_path, monkeypatch):
    """The converter's output (checkpoint, config.json, conversion.json) on ram://, read back as --pretrained."""
    import torch  # pylint: disable=import-outside-toplevel  (requirements-convert.txt, as test_convert_official)

    from test_convert_official import MICRO
    from test_convert_official import _images
    from test_convert_official import official_backbone
    from test_convert_official import torch_vit_features

    state = official_backbone("", dim=32, depth=2, grid=4, g=torch.Generator().manual_seed(2))  # DeiT layout
    result = convert_official.convert_state_dict(convert_official.extract_state_dict({"model": state}),
                                                 arch="vit_micro", overrides=MICRO, source="official:deit.pth")
    monkeypatch.chdir(tmp_path)
    out = f"{_bucket()}/converted"
    convert_official.write_converted(result, out)
    assert config_lib.read_json(f"{out}/conversion.json")["tensors_converted"] == result["report"]["tensors_converted"]
    encoder = pretrained.load_encoder(out)
    assert encoder.source == "official"
    images = _images(16)
    # 1e-4: test_convert_official's bound for this comparison (float32 TensorFlow against float32 torch, which sum
    # in other orders).
    np.testing.assert_allclose(encoder.backbone(images, training=False).numpy(),
                               torch_vit_features(state, "", images, heads=2, depth=2), atol=1e-4, rtol=0)
    with pytest.raises(convert_official.ConversionError, match=r"already holds a config.json; choose a new"):
        convert_official.write_converted(result, out)  # the existence check reads ram://, not a local folder
    assert os.listdir(tmp_path) == []


def test_probe_and_finetune_resume_checks_read_a_ram_workdir():
    """The linear probe's and fine-tuning's own resume checks read config.json through tf.io.gfile too."""
    workdir = f"{_bucket()}/probe"
    gfile.makedirs(workdir)
    config_lib.write_json(f"{workdir}/{linear_probe.CONFIG_FILE}", {"model": {"bn_before_head": True}})
    probe = ml_collections.ConfigDict({"model": {"bn_before_head": False}})
    with pytest.raises(linear_probe.ProbeError, match=r"holds a probe with model.bn_before_head=True, not False"):
        linear_probe._check_bn_resume(workdir, probe)  # pylint: disable=protected-access

    workdir = f"{_bucket()}/finetune"
    gfile.makedirs(workdir)
    config_lib.write_json(f"{workdir}/{finetune.CONFIG_FILE}", {"model": {"train_pos_embed": True}})
    tuned = config_lib.finetune_config()
    with pytest.raises(finetune.FinetuneError,
                       match=r"holds a fine-tuning run with config.model.train_pos_embed=True, not False;"):
        finetune.check_resume_options(workdir, tuned)


def test_absolute_path_keeps_urls():
    assert config_lib.absolute_path("gs://bucket/run") == "gs://bucket/run"
    assert config_lib.absolute_path("ram://b/run/checkpoints/ckpt-4") == "ram://b/run/checkpoints/ckpt-4"
    assert config_lib.absolute_path("runs/demo") == os.path.join(os.getcwd(), "runs", "demo")
