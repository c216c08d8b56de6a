"""ResNet-50 MoCo v3 (official MoCo_ResNet): backbone, heads, BN per view, LARS, recipes, and every command on a
tiny ResNet workdir (pre-training with exact resume, kNN, linear probe, fine-tuning, export).

The parameter counts, the .keras file, the checkpoint and mixed-precision round trips of resnet50 and resnet_tiny are
the backbone contract of tests/test_backbones.py."""

import importlib.util
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import backbone_contract as contract
from conftest import ROOT
from conftest import StopAt
from conftest import checkpoint_tensors
from export import saved_model as sm
from tf_mocov3 import config_lib
from tf_mocov3.data import augment
from tf_mocov3.evaluation import demo
from tf_mocov3.evaluation import knn
from tf_mocov3.models import backbones
from tf_mocov3.models import moco
from tf_mocov3.models import resnet
from tf_mocov3.testing.fixtures_data import random_fashion_mnist
from tf_mocov3.training import finetune
from tf_mocov3.training import linear_probe
from tf_mocov3.training import optim
from tf_mocov3.training import pretrain
from tf_mocov3.weights import plain_keras
from tf_mocov3.weights import pretrained

SIZE = 32


def load_config(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(), module.__doc__


def _images(n, size=SIZE, seed=0):
    return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def resnet50():
    """ResNet-50 at 224 px (the stage shapes are torchvision's at that size), seed 0: the one the backbone contract
    counts (built once per process; read it, do not change it)."""
    return contract.full_resnet("resnet50")


# === The backbone (parameter counts: tests/test_backbones.py) ===


def test_zero_init_residual_and_torchvision_init(resnet50):
    blocks = resnet.blocks_of(resnet50)
    assert len(blocks) == 16
    for block in blocks:
        for layer in block.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                assert layer.synchronized and layer.momentum == 0.9 and layer.epsilon == 1e-5
                want = 0.0 if layer.name.endswith("_bn3") else 1.0  # zero_init_residual=True
                np.testing.assert_array_equal(layer.gamma.numpy(), want, err_msg=layer.name)
                np.testing.assert_array_equal(layer.beta.numpy(), 0.0, err_msg=layer.name)
    # kaiming_normal_(mode="fan_out", nonlinearity="relu"): std = sqrt(2 / (k * k * out_channels)).
    for kernel, fan_out in ((resnet50.get_layer("conv1").kernel, 7 * 7 * 64),
                            (blocks[-1].get_layer("block_15_conv2").kernel, 3 * 3 * 512)):
        values = kernel.numpy()
        assert abs(values.std() / np.sqrt(2.0 / fan_out) - 1) < 0.03
        assert abs(values.mean()) < 0.1 * values.std()


def test_bottleneck_v15_strides_and_stage_shapes(resnet50):
    model = resnet50
    blocks = resnet.blocks_of(model)
    # Stride on the 3x3 conv (v1.5) of the first block of stages 2-4; a 1x1 projection shortcut on every stage's
    # first block (stage 1 changes 64 -> 256 channels).
    for i, block in enumerate(blocks):
        first = i in (0, 3, 7, 13)
        stride = (2, 2) if i in (3, 7, 13) else (1, 1)
        assert block.get_layer(f"block_{i}_conv1").strides == (1, 1)
        assert block.get_layer(f"block_{i}_conv2").strides == stride
        names = {layer.name for layer in block.layers}
        assert (f"block_{i}_downsample_conv" in names) == first
    shapes = [tuple(block.output.shape) for block in (blocks[2], blocks[6], blocks[12], blocks[15])]
    assert shapes == [(None, 56, 56, 256), (None, 28, 28, 512), (None, 14, 14, 1024), (None, 7, 7, 2048)]
    assert not pretrained.untracked_weights(model)  # every weight reaches tf.train.Checkpoint


def test_one_builder_for_every_arch_and_vit_options_are_refused():
    assert set(backbones.ARCHS) >= {"resnet50", "resnet_tiny", "vit_small", "vit_micro"}
    assert backbones.is_vit("vit_small") and not backbones.is_vit("resnet50")
    assert backbones.has_batchnorm("resnet50") and not backbones.has_batchnorm("vit_small")
    # What build_backbone gives for every arch (resnet_tiny and vit_micro at 32 px among them): test_backbones.py.
    for kwargs, fragment in (({"train_patch_embed": True}, "train_patch_embed=True is a ViT option"),
                             ({"patch_size": 8}, "patch_size=8 is a ViT option"),
                             ({"drop_path_rate": 0.1}, "drop_path_rate=0.1 is a ViT option")):
        with pytest.raises(ValueError, match=fragment):
            backbones.build_backbone("resnet_tiny", SIZE, **kwargs)
    with pytest.raises(ValueError, match="resnet50"):
        backbones.build_backbone("resnet_101", SIZE)

    config = config_lib.base_config()
    config.model.arch = "resnet50"
    config_lib.validate(config)
    config.model.overrides.depth = 6
    config.model.train_patch_embed = True
    with pytest.raises(config_lib.ConfigError) as err:
        config_lib.validate(config)
    assert "config.model.overrides.depth=6 is a ViT option" in str(err.value)
    assert "config.model.train_patch_embed=True is a ViT option" in str(err.value)
    config.model.arch = "resnet18"
    with pytest.raises(config_lib.ConfigError, match="resnet50, resnet_tiny"):
        config_lib.validate(config)


# === MoCo: heads, BN per view, momentum encoder, LARS ===


def tiny_model_config(arch="resnet_tiny"):
    c = config_lib.base_config()
    c.model.arch = arch
    c.model.mlp_dim, c.model.moco_dim = 32, 16
    c.model.temperature = 1.0
    return c


def test_moco_resnet_heads():
    model = moco.build_moco(tiny_model_config().model, image_size=SIZE, total_steps=1)
    # Projector _build_mlp(2, 512, 32, 16): Linear BN ReLU Linear BN(affine=False).
    proj = [layer.name for layer in model.projector.layers[1:]]
    assert proj == ["linear_0", "bn_0", "relu_0", "linear_1", "bn_1"]
    assert model.projector.input_shape == (None, 512) and model.projector.output_shape == (None, 16)
    last = model.projector.get_layer("bn_1")
    assert not last.center and not last.scale
    # Predictor _build_mlp(2, 16, 32, 16, last_bn=False): no BN after the last Linear.
    pred = [layer.name for layer in model.predictor.layers[1:]]
    assert pred == ["linear_0", "bn_0", "relu_0", "linear_1"]
    assert model.predictor.get_layer("linear_1").kernel.shape == (32, 16)
    # The ViT keeps MoCo_ViT's heads.
    vit_model = moco.build_moco(tiny_model_config("vit_micro").model, image_size=SIZE, total_steps=1)
    assert sum(layer.name.startswith("linear_") for layer in vit_model.projector.layers) == 3
    assert vit_model.predictor.layers[-1].name == "bn_1"


def test_each_view_runs_through_the_bn_backbone_on_its_own():
    keras.utils.set_random_seed(1)
    model = moco.build_moco(tiny_model_config().model, image_size=SIZE, total_steps=1)
    assert not model.batch_views
    x1, x2 = _images(4, seed=1), _images(4, seed=2)
    q1, q2 = model.queries(x1, x2, training=True)

    def query(x):
        return model.predictor(model.projector(model.backbone(x, training=True), training=True), training=True)

    np.testing.assert_allclose(q1, query(x1), atol=1e-5)
    np.testing.assert_allclose(q2, query(x2), atol=1e-5)
    joint = model.backbone(np.concatenate([x1, x2]), training=True)[:4]  # shared statistics: not what MoCo does
    assert np.abs(model.predictor(model.projector(joint, training=True), training=True) - q1).max() > 1e-3


def test_momentum_encoder_covers_backbone_and_projector_parameters_only():
    model = moco.build_moco(tiny_model_config().model, image_size=SIZE, total_steps=1)
    online = model.backbone.trainable_weights + model.projector.trainable_weights
    pairs = model._momentum_pairs  # pylint: disable=protected-access
    assert [id(theta) for _, theta in pairs] == [id(w) for w in online]
    assert not any("moving_" in xi.path for xi, _ in pairs)
    for a, b in zip(model.momentum_backbone.weights, model.backbone.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_lars_skips_bn_and_biases_and_adapts_kernels():
    model = moco.build_moco(tiny_model_config().model, image_size=SIZE, total_steps=1)
    variables = model.trainable_variables
    opt = optim.LARS(learning_rate=0.5, weight_decay=1e-2, momentum=0.9, trust_coefficient=0.001)
    opt.build(variables)
    flags = dict(zip((id(v) for v in variables), opt._adapt_flags))  # pylint: disable=protected-access
    bn = [v for v in variables if "bn" in v.path]
    assert bn and all(not flags[id(v)] for v in bn)
    assert all(flags[id(v)] == (len(v.shape) > 1) for v in variables)
    gamma = model.backbone.get_layer("bn1").gamma
    kernel = model.backbone.get_layer("conv1").kernel
    rng = np.random.default_rng(0)
    grads = [tf.constant(rng.normal(size=v.shape).astype(np.float32)) for v in variables]
    g_gamma = grads[[id(v) for v in variables].index(id(gamma))].numpy()
    g_kernel = grads[[id(v) for v in variables].index(id(kernel))].numpy()
    w_gamma, w_kernel = gamma.numpy(), kernel.numpy()
    opt.apply(grads, variables)
    np.testing.assert_allclose(gamma.numpy(), w_gamma - 0.5 * g_gamma, atol=1e-6)  # no decay, no adaptation
    d = g_kernel + 1e-2 * w_kernel
    d = d * 0.001 * np.linalg.norm(w_kernel) / np.linalg.norm(d)
    np.testing.assert_allclose(kernel.numpy(), w_kernel - 0.5 * d, atol=1e-6)


# === Recipes ===


@pytest.mark.parametrize("name, epochs, lr, wd, m, top1", [
    ("r50_100ep", 100, 0.6, 1e-6, 0.99, "68.9"),
    ("r50_300ep", 300, 0.3, 1e-6, 0.99, "72.8"),
    ("r50_1000ep", 1000, 0.3, 1.5e-6, 0.996, "74.6"),
])
def test_r50_recipes(name, epochs, lr, wd, m, top1):
    config, doc = load_config(name)
    config_lib.validate(config)
    assert f"python -m tf_mocov3.train --config=configs/{name}.py" in doc and f"{top1}%" in doc
    assert (config.model.arch, config.batch_size, config.epochs) == ("resnet50", 4096, epochs)
    assert (config.model.temperature, config.model.momentum, config.model.momentum_cosine) == (1.0, m, True)
    assert (config.model.mlp_dim, config.model.moco_dim, config.dataset.crop_min) == (4096, 256, 0.2)
    assert (config.optim.name, config.optim.base_lr, config.optim.weight_decay) == ("lars", lr, wd)
    assert config.optim.warmup_epochs == 10
    opt = optim.build_optimizer(config.optim, global_batch=4096, steps_per_epoch=10, total_steps=10 * epochs)
    assert isinstance(opt, optim.LARS)
    assert (opt.momentum, opt.trust_coefficient, opt.weight_decay) == (0.9, 0.001, wd)
    # lr = base_lr * batch / 256 at the end of the 10 warmup epochs (main_moco.py).
    schedule = opt._learning_rate  # pylint: disable=protected-access
    assert float(schedule(100)) == pytest.approx(lr * 4096 / 256, rel=1e-6)


def test_linear_probe_and_demo_configs():
    config, doc = load_config("linear_imagenet_r50")
    config_lib.validate(config, kind="probe")
    assert 0.1 in config.base_lrs and config.batch_size == 1024 and config.epochs == 90
    assert config.model.arch == "resnet50" and "python -m tf_mocov3.linear_probe" in doc
    config, doc = load_config("r50_demo_fashion_mnist")
    config_lib.validate(config)
    assert config.model.arch == "resnet_tiny" and config.optim.name == "lars" and "python -m tf_mocov3.train" in doc
    assert demo._random_backbone(config, 28).output_shape == (None, 512)  # pylint: disable=protected-access


# === Every command on a tiny ResNet workdir ===


@pytest.fixture(scope="module")
def fake_fmnist(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("fmnist"))
    random_fashion_mnist(folder, n=64, seed=0, split="train")
    random_fashion_mnist(folder, n=40, seed=1, split="test")
    return folder


def tiny_pretrain_config(data):
    c = tiny_model_config()
    c.batch_size, c.max_steps = 8, 4
    c.strategy, c.jit_compile = "one_device", "false"
    c.log_every_steps, c.checkpoint_every_steps = 1, 2
    c.optim.name, c.optim.base_lr, c.optim.weight_decay, c.optim.warmup_epochs = "lars", 0.6, 1e-6, 0.0
    c.dataset.name, c.dataset.path, c.dataset.image_size, c.dataset.crop_min = "fashion_mnist_idx", data, SIZE, 0.2
    return c


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory, fake_fmnist):
    """4 LARS steps of resnet_tiny straight, and 2 + 2 with a restart: (straight workdir, resumed workdir, lines)."""
    tmp = tmp_path_factory.mktemp("resnet_run")
    config = tiny_pretrain_config(fake_fmnist)
    straight, resumed = str(tmp / "straight"), str(tmp / "resumed")
    assert pretrain.run_pretraining(config, straight, print_fn=lambda s: None)["step"] == 4
    assert pretrain.run_pretraining(config, resumed, extra_callbacks=[StopAt(2)], print_fn=lambda s: None)[
        "step"] == 2
    lines = []
    assert pretrain.run_pretraining(config, resumed, print_fn=lines.append)["step"] == 4
    return straight, resumed, lines


def test_tiny_resnet_pretraining_resumes_exactly(resnet_run):
    straight, resumed, lines = resnet_run
    assert any("Resuming from step 2" in line for line in lines)
    a, b = checkpoint_tensors(straight), checkpoint_tensors(resumed)
    assert a.keys() == b.keys() and any("moving_mean" in k for k in a)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    records = [json.loads(line) for line in open(os.path.join(resumed, "metrics.jsonl"))]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for key in ("loss", "grad_norm_first_block", "grad_norm_last_block"):  # bottlenecks block_0 and block_3
        assert all(np.isfinite(r[key]) and r[key] > 0 for r in records), key
    # tau = 1: the loss starts near 2 * 2tau * ln(8) at batch 8 (random queries and keys).
    assert records[0]["loss"] == pytest.approx(4 * np.log(8), rel=0.1)


def test_knn_and_linear_probe_accept_the_resnet_workdir(resnet_run, fake_fmnist, tmp_path):
    workdir = resnet_run[0]
    record = knn.evaluate_pretrained(workdir, data_path=fake_fmnist, k=5)
    assert (record["num_train"], record["num_eval"], record["image_size"]) == (64, 40, SIZE)
    assert 0.0 <= record["knn_top1"] <= 100.0

    probe, _ = load_config("linear_fashion_mnist")
    probe.epochs, probe.batch_size, probe.base_lrs, probe.holdout_fraction = 1, 16, (0.1, 1.0), 0.25
    probe.dataset.path = fake_fmnist
    before = pretrained.load_backbone(workdir).get_weights()
    metrics = linear_probe.run_probe(probe, workdir, str(tmp_path / "probe"), print_fn=lambda s: None)
    assert 0.0 <= metrics["linear_probe_top1"] <= 100.0
    for x, y in zip(before, pretrained.load_backbone(workdir).get_weights()):
        np.testing.assert_array_equal(x, y)  # frozen, BN statistics included


def test_finetune_accepts_the_resnet_workdir(resnet_run, fake_fmnist, tmp_path):
    workdir = resnet_run[0]
    ft = config_lib.finetune_config()
    ft.batch_size, ft.max_steps, ft.image_size = 4, 2, SIZE
    ft.strategy, ft.jit_compile, ft.log_every_steps, ft.checkpoint_every_steps = "one_device", "false", 1, 2
    ft.model.arch = "resnet_tiny"
    ft.optim.warmup_epochs, ft.optim.base_lr = 0, 1e-3
    ft.eval.max_examples, ft.eval.batch_size = 8, 8
    ft.dataset.name, ft.dataset.path, ft.dataset.eval_split = "fashion_mnist_idx", fake_fmnist, "test"
    with pytest.raises(finetune.FinetuneError, match=r"config.model.drop_path_rate=0.1 is a ViT option"):
        finetune.run_finetune(ft, str(tmp_path / "ft_bad"), workdir, print_fn=lambda s: None)
    ft.model.drop_path_rate = 0.0
    out = finetune.run_finetune(ft, str(tmp_path / "ft"), workdir, print_fn=lambda s: None)
    assert out["step"] == 2 and 0.0 <= out["top1"] <= 100.0


def test_export_of_a_resnet_workdir(resnet_run, tmp_path):
    encoder = pretrained.load_encoder(resnet_run[0])
    assert encoder.projector is not None and encoder.projector.output_shape == (None, 16)
    version = sm.export_saved_model(encoder.backbone, str(tmp_path / "models"), projector=encoder.projector,
                                    warmup=False)
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (3, 40, 50, 3), dtype=np.uint8)
    pre = tf.stack([augment.eval_preprocess(tf.constant(x), SIZE) for x in raw])
    live = encoder.backbone(pre, training=False).numpy()
    loaded = tf.saved_model.load(version)
    assert set(loaded.signatures) == set(sm.SIGNATURES)
    byte_inputs = tf.constant([tf.io.encode_png(x).numpy() for x in raw])
    for name, kwargs in ((sm.SERVING_DEFAULT, {"image_bytes": byte_inputs}),
                         (sm.EMBED_IMAGES, {"images": tf.constant(raw)}),
                         (sm.EMBED_PREPROCESSED, {"images": pre})):
        out = loaded.signatures[name](**kwargs)
        assert out["features"].shape == (3, 512) and out["projection"].shape == (3, 16)
        np.testing.assert_allclose(out["features"].numpy(), live, atol=1e-5, err_msg=name)
    # backbone.keras: plain Keras layers only, the same features, and every --pretrained flag takes it back.
    path = os.path.join(version, sm.KERAS_FILE)
    plain = keras.saving.load_model(path, compile=False)
    modules = {type(layer).__module__ for layer in plain.layers}
    assert all(m.startswith("keras.") for m in modules), modules
    np.testing.assert_allclose(plain(pre, training=False).numpy(), live, atol=1e-5)
    back = pretrained.load_backbone(path, image_size=48)
    assert plain_keras.keras_backbone_config(path).model.arch == "resnet_tiny"
    for x, y in zip(back.get_weights(), encoder.backbone.get_weights()):
        np.testing.assert_array_equal(x, y)
