"""The SavedModel export: a fresh process without tf_mocov3 gets the live Keras model's features from every
signature, saved_model_cli shows the documented signatures, nothing is trainable, the .keras artefact reloads
without the project and as --pretrained, versions are not overwritten, and the command works on a workdir."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from conftest import ROOT
from conftest import needs_fmnist
from export import saved_model as sm
from tf_mocov3.data import augment
from tf_mocov3.models import heads
from tf_mocov3.models import vit
from tf_mocov3.weights import plain_keras

SIZE = 32
TINY = dict(embed_dim=32, depth=2, num_heads=2)
ATOL = 1e-5


def tiny_encoder(seed=0):
    """vit_micro (width 32, 2 blocks) + projector, with non-trivial BN moving statistics."""
    keras.utils.set_random_seed(seed)
    backbone = vit.build_backbone("vit_micro", SIZE, **TINY)
    projector = heads.build_projector(32, mlp_dim=16, dim=8)
    rng = np.random.default_rng(seed)
    for v in projector.non_trainable_variables:  # moving mean / variance: inference mode must use these
        v.assign(rng.uniform(0.5, 1.5, v.shape).astype("float32") if "variance" in v.path
                 else rng.normal(0, 0.3, v.shape).astype("float32"))
    return backbone, projector


def sample_images(seed=1):
    """Mixed sizes and formats: a landscape JPEG, a portrait PNG, a small square JPEG."""
    rng = np.random.default_rng(seed)
    out = []
    for (h, w), fmt in (((60, 90), "jpeg"), ((70, 41), "png"), ((33, 33), "jpeg")):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        out.append((tf.io.encode_jpeg(img) if fmt == "jpeg" else tf.io.encode_png(img)).numpy())
    return out


def live_features(model, images):
    return model(tf.stack([augment.eval_preprocess(i, SIZE) for i in images]), training=False).numpy()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    backbone, projector = tiny_encoder()
    base = str(tmp_path_factory.mktemp("models") / "mocov3")
    version_dir = sm.export_saved_model(backbone, base, projector=projector)
    return base, version_dir, backbone, projector


def run_fresh(script, *args):
    """Runs `script` in a new Python process whose sys.path does not contain the repository."""
    env = dict(os.environ, PYTHONPATH="", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], capture_output=True, text=True,
                          env=env, cwd="/", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


FRESH = """
    import sys
    import numpy as np
    import tensorflow as tf
    import keras
    version_dir, inputs, outputs = sys.argv[1:]
    data = np.load(inputs, allow_pickle=True)
    loaded = tf.saved_model.load(version_dir)
    out = {}
    calls = {"serving_default": ("image_bytes", tf.constant(list(data["bytes"]), tf.string)),
             "embed_images": ("images", tf.constant(data["uint8"])),
             "embed_preprocessed": ("images", tf.constant(data["pre"]))}
    for name, (key, value) in calls.items():
        fn = loaded.signatures[name]
        for k, v in fn(**{key: value}).items():
            out[f"{name}/{k}"] = v.numpy()
        empty = tf.zeros([0] + value.shape[1:].as_list(), value.dtype)
        out[f"{name}/empty"] = fn(**{key: empty})["features"].numpy()
    single = loaded.signatures["embed_preprocessed"](images=tf.constant(data["pre"][:1]))
    out["single/projection"] = single["projection"].numpy()
    model = keras.saving.load_model(version_dir + "/backbone.keras")
    out["keras/features"] = model(data["pre"], training=False).numpy()
    out["keras/layer_modules"] = np.array(sorted({type(l).__module__ for l in model.layers}))
    out["keras/num_trainable"] = np.array(len(model.trainable_weights))
    out["modules"] = np.array(sorted(m for m in sys.modules if m.startswith(("tf_mocov3", "export"))))
    np.savez(outputs, **out)
"""


def test_fresh_process_without_tf_mocov3_gets_the_live_features(exported, tmp_path):
    _, version_dir, backbone, projector = exported
    images = sample_images()
    rng = np.random.default_rng(2)
    uint8 = rng.integers(0, 256, (2, 45, 37, 3), dtype=np.uint8)
    pre = tf.stack([augment.eval_preprocess(i, SIZE) for i in images]).numpy()
    np.savez(tmp_path / "in.npz", bytes=np.array(images, dtype=object), uint8=uint8, pre=pre)
    run_fresh(FRESH, version_dir, str(tmp_path / "in.npz"), str(tmp_path / "out.npz"))
    out = np.load(tmp_path / "out.npz")

    assert list(out["modules"]) == []  # neither tf_mocov3 nor export was imported
    want = {"serving_default": live_features(backbone, images),
            "embed_images": live_features(backbone, list(uint8)),
            "embed_preprocessed": backbone(pre, training=False).numpy()}
    for name, features in want.items():
        assert out[f"{name}/features"].dtype == np.float32
        np.testing.assert_allclose(out[f"{name}/features"], features, atol=ATOL, rtol=0, err_msg=name)
        np.testing.assert_allclose(out[f"{name}/projection"], projector(features, training=False).numpy(),
                                   atol=ATOL, rtol=0, err_msg=name)
        assert out[f"{name}/empty"].shape == (0, 32)
    # BN in inference mode: an image's projection does not depend on the rest of the batch.
    np.testing.assert_allclose(out["single/projection"], out["embed_preprocessed/projection"][:1], atol=ATOL, rtol=0)
    # The .keras artefact: standard Keras layers only, trainable, same features as the SavedModel.
    assert all(m.startswith("keras.") for m in out["keras/layer_modules"]), out["keras/layer_modules"]
    assert int(out["keras/num_trainable"]) > 0
    np.testing.assert_allclose(out["keras/features"], out["embed_preprocessed/features"], atol=ATOL, rtol=0)


def test_saved_model_has_no_trainable_variable(exported):
    _, version_dir, backbone, projector = exported
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(version_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    variables = [n.variable for n in proto.meta_graphs[0].object_graph_def.nodes if n.WhichOneof("kind") == "variable"]
    assert len(variables) == len(backbone.weights) + len(projector.weights)
    assert not any(v.trainable for v in variables)


def _signature_blocks(text):
    blocks = {}
    for chunk in text.split("signature_def['")[1:]:
        name, body = chunk.split("']", 1)
        blocks[name] = " ".join(body.split())
    return blocks


def test_saved_model_cli_lists_the_documented_signatures(exported):
    _, version_dir, _, _ = exported
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    proc = subprocess.run([cli, "show", "--dir", version_dir, "--all"], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    blocks = _signature_blocks(proc.stdout)
    expected = {"serving_default": ("image_bytes", "DT_STRING", "(-1)"),
                "embed_images": ("images", "DT_UINT8", "(-1, -1, -1, 3)"),
                "embed_preprocessed": ("images", "DT_FLOAT", f"(-1, {SIZE}, {SIZE}, 3)")}
    for name, (key, dtype, shape) in expected.items():
        body = blocks[name]
        assert f"inputs['{key}'] tensor_info: dtype: {dtype} shape: {shape}" in body, body
        assert "outputs['features'] tensor_info: dtype: DT_FLOAT shape: (-1, 32)" in body, body
        assert "outputs['projection'] tensor_info: dtype: DT_FLOAT shape: (-1, 8)" in body, body
        assert "Method name is: tensorflow/serving/predict" in body


def test_layout_and_export_info(exported):
    base, version_dir, _, _ = exported
    assert version_dir == os.path.join(base, "1")
    assert sorted(os.listdir(base)) == ["1"]  # no temporary directory left behind
    for name in ("saved_model.pb", "variables/variables.index", "assets.extra/tf_serving_warmup_requests",
                 "backbone.keras"):
        assert os.path.exists(os.path.join(version_dir, name)), name
    with open(os.path.join(version_dir, "assets.extra", sm.INFO_FILE)) as f:
        info = json.load(f)
    assert info["image_size"] == SIZE and info["feature_dim"] == 32 and info["projection_dim"] == 8
    assert sorted(info["signatures"]) == sorted(sm.SIGNATURES)


def test_python_api_errors_and_empty_batch(exported):
    _, version_dir, _, _ = exported
    serve = tf.saved_model.load(version_dir).signatures["serving_default"]
    good = sample_images()[0]
    with pytest.raises(tf.errors.InvalidArgumentError, match="not a JPEG, PNG, GIF or BMP image at batch"):
        serve(image_bytes=tf.constant([good, b"definitely not an image"]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="JPEG"):
        serve(image_bytes=tf.constant([good[:len(good) // 3]]))  # truncated JPEG
    assert serve(image_bytes=tf.constant([], tf.string))["features"].shape == (0, 32)


def test_refuses_to_overwrite_a_version_unless_told(exported, tmp_path):
    _, _, backbone, _ = exported
    base = str(tmp_path / "m")
    sm.export_saved_model(backbone, base, version=3, warmup=False, write_keras=False)
    with pytest.raises(FileExistsError, match="already exists; pass --overwrite"):
        sm.export_saved_model(backbone, base, version=3, warmup=False, write_keras=False)
    sm.export_saved_model(backbone, base, version=3, overwrite=True, warmup=False, write_keras=False)
    assert sm.export_saved_model(backbone, base, warmup=False, write_keras=False).endswith(os.sep + "4")
    assert sorted(os.listdir(base)) == ["3", "4"]


def test_plain_keras_backbone_round_trips_into_tf_mocov3_at_any_size(exported):
    _, version_dir, backbone, _ = exported
    path = os.path.join(version_dir, sm.KERAS_FILE)
    x = np.random.default_rng(3).normal(size=(2, SIZE, SIZE, 3)).astype("float32")
    same = plain_keras.load_keras_backbone(path)
    np.testing.assert_array_equal(same(x).numpy(), backbone(x).numpy())
    assert not same.get_layer("patch_embed").trainable  # the frozen random patch projection stays frozen
    bigger = plain_keras.load_keras_backbone(path, image_size=48)
    reference = vit.build_backbone("vit_micro", 48, **TINY)
    reference.set_weights(backbone.get_weights())
    x48 = np.random.default_rng(4).normal(size=(2, 48, 48, 3)).astype("float32")
    np.testing.assert_allclose(bigger(x48).numpy(), reference(x48).numpy(), atol=ATOL, rtol=0)
    config = plain_keras.keras_backbone_config(path)
    assert config.model.arch == "vit_small" and config.model.overrides.embed_dim == 32
    assert config.dataset.image_size == SIZE


def test_keras_file_of_a_standard_arch_is_named_by_its_arch(tmp_path):
    backbone = vit.build_backbone("vit_micro", SIZE)
    path = str(tmp_path / "micro.keras")
    plain_keras.to_plain_keras(backbone).save(path)
    config = plain_keras.keras_backbone_config(path)
    assert config.model.arch == "vit_micro" and dict(config.model.overrides) == {}
    assert not config.model.train_patch_embed


def test_plain_keras_conv_stem_with_drop_path_matches():
    keras.utils.set_random_seed(5)
    backbone = vit.build_backbone("vit_conv_small", SIZE, embed_dim=32, depth=2, num_heads=2, drop_path_rate=0.1)
    for v in backbone.non_trainable_variables:
        v.assign(np.random.default_rng(0).uniform(0.5, 1.5, v.shape).astype("float32"))
    plain = plain_keras.to_plain_keras(backbone)
    x = np.random.default_rng(6).normal(size=(2, SIZE, SIZE, 3)).astype("float32")
    np.testing.assert_allclose(plain(x, training=False).numpy(), backbone(x, training=False).numpy(), atol=ATOL,
                               rtol=0)
    assert plain.get_layer("block_1_drop_mlp").rate == pytest.approx(0.1)  # linear rule: 0 in block_0
    assert "block_0_drop_mlp" not in [layer.name for layer in plain.layers]
    dropped = plain(np.repeat(x[:1], 64, axis=0), training=True).numpy()
    assert np.abs(dropped - dropped[:1]).max() > 0  # stochastic depth acts per sample when training


def test_pretrained_loader_accepts_the_keras_file(exported):
    from tf_mocov3.weights import pretrained  # pylint: disable=import-outside-toplevel

    _, version_dir, backbone, _ = exported
    path = os.path.join(version_dir, sm.KERAS_FILE)
    loaded = pretrained.load_backbone(path)
    assert pretrained.load_encoder(path).source == "keras"
    x = np.random.default_rng(7).normal(size=(2, SIZE, SIZE, 3)).astype("float32")
    np.testing.assert_allclose(loaded(x).numpy(), backbone(x).numpy(), atol=ATOL, rtol=0)


@needs_fmnist
def test_command_exports_a_pretraining_workdir(tmp_path, pretrained_run):
    from tf_mocov3.weights import pretrained  # pylint: disable=import-outside-toplevel

    workdir = pretrained_run[0]  # the session's tiny pre-training run; the export only reads it

    out = str(tmp_path / "serving")
    cmd = [sys.executable, "-m", "export.saved_model", f"--pretrained={workdir}", f"--output={out}",
           "--image_size=32", "--with_projector"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tensorflow_model_server" in proc.stdout
    version_dir = os.path.join(out, "1")

    encoder = pretrained.load_encoder(workdir, image_size=32)
    images = sample_images()
    loaded = tf.saved_model.load(version_dir)
    got = loaded.signatures["serving_default"](image_bytes=tf.constant(images))
    want = live_features(encoder.backbone, images)
    np.testing.assert_allclose(got["features"].numpy(), want, atol=ATOL, rtol=0)
    np.testing.assert_allclose(got["projection"].numpy(), encoder.projector(want, training=False).numpy(),
                               atol=ATOL, rtol=0)

    again = subprocess.run(cmd + ["--version=1"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert again.returncode == 1
    assert "already exists; pass --overwrite" in again.stderr

    # Re-export from the backbone.keras of version 1 (no projector there): same features as version 2.
    keras_cmd = [sys.executable, "-m", "export.saved_model", f"--pretrained={version_dir}/backbone.keras",
                 f"--output={out}"]
    proc = subprocess.run(keras_cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from_keras = tf.saved_model.load(os.path.join(out, "2")).signatures["serving_default"]
    np.testing.assert_allclose(from_keras(image_bytes=tf.constant(images))["features"].numpy(), want, atol=ATOL,
                               rtol=0)
