"""The paper's ablations as switches (config.model.pos_embed / pooling / head_bn / predictor): each changes what it
says, bad values are refused in one sentence, and a run with non-default switches loads back through
weights/pretrained.py (and the fine-tuning copy) with identical features."""

import importlib.util
import math
import os
import re

import keras
import ml_collections
import numpy as np
import pytest

from tf_mocov3 import config_lib
from tf_mocov3.models import backbones
from tf_mocov3.models import moco
from tf_mocov3.models import vit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {"embed_dim": 32, "depth": 2, "num_heads": 2}
IMAGE = 16


def images(n=3, seed=0):
    return np.random.default_rng(seed).normal(size=(n, IMAGE, IMAGE, 3)).astype(np.float32)


def backbone(**kwargs):
    keras.utils.set_random_seed(0)
    return vit.build_backbone("vit_micro", IMAGE, **SIZES, **kwargs)


def tokens_after(model, layer_name, x):
    return keras.Model(model.input, model.get_layer(layer_name).output)(x).numpy()


def weight_names(model):
    return sorted(w.path for w in model.weights)


def test_gap_pooling_has_no_cls_token_and_returns_the_mean_of_the_last_blocks_tokens():
    model = backbone(pooling="gap")
    assert not any("cls_token" in name for name in weight_names(model))
    assert "norm" not in [layer.name for layer in model.layers]
    x = images()
    tokens = tokens_after(model, "block_1", x)
    assert tokens.shape[1] == (IMAGE // 4) ** 2  # no [CLS] slot
    np.testing.assert_allclose(model(x).numpy(), tokens.mean(axis=1), rtol=1e-5, atol=1e-6)


def test_gap_ln_pooling_averages_the_normalised_tokens():
    model = backbone(pooling="gap_ln")
    assert not any("cls_token" in name for name in weight_names(model))
    x = images()
    tokens = tokens_after(model, "block_1", x).astype(np.float64)
    norm = model.get_layer("norm")
    mean, var = tokens.mean(-1, keepdims=True), tokens.var(-1, keepdims=True)
    normed = (tokens - mean) / np.sqrt(var + 1e-6) * norm.gamma.numpy() + norm.beta.numpy()
    np.testing.assert_allclose(model(x).numpy(), normed.mean(axis=1), rtol=1e-4, atol=1e-5)


def test_default_pooling_and_pos_embed_keep_the_layer_and_weight_names():
    model = backbone()
    names = weight_names(model)
    assert "cls_pos_embed/cls_token" in names and "norm/gamma" in names
    assert not any(name.endswith("pos_embed/pos_embed") for name in names)
    layer = model.get_layer("cls_pos_embed")
    assert "pos_embed" not in layer.get_config() and "cls_token" not in layer.get_config()  # config as before
    assert model.get_layer("cls_feature") is not None


def test_pos_embed_none_adds_nothing_and_sincos_adds_the_table():
    x = images()
    none = backbone(pos_embed="none")
    sincos = backbone()
    for model in (none, sincos):
        assert not [w for w in model.weights if w.path.endswith("/pos_embed")]
    patches = tokens_after(none, "patch_embed", x).reshape(len(x), -1, SIZES["embed_dim"])
    out = tokens_after(none, "cls_pos_embed", x)
    cls = none.get_layer("cls_pos_embed").cls_token.numpy()
    np.testing.assert_array_equal(out[:, 1:], patches)
    np.testing.assert_array_equal(out[:, :1], np.broadcast_to(cls, (len(x), 1, SIZES["embed_dim"])))
    # The same weights (same seed) with the sin-cos table: the output differs by exactly the table.
    table = vit.sincos_2d_position_embedding(IMAGE // 4, IMAGE // 4, SIZES["embed_dim"])
    np.testing.assert_allclose(tokens_after(sincos, "cls_pos_embed", x) - out,
                               np.broadcast_to(table, out.shape), atol=1e-6)


def test_learned_pos_embed_is_a_trained_weight():
    model = backbone(pos_embed="learned", pooling="gap")
    learned = [w for w in model.trainable_weights if w.path == "cls_pos_embed/pos_embed"]
    assert len(learned) == 1 and tuple(learned[0].shape) == (1, (IMAGE // 4) ** 2, SIZES["embed_dim"])
    table = learned[0].numpy()
    # timm's trunc_normal_(std=.02) cuts at +-2 absolute (100 std): N(0, 0.02). The std of 512 draws has a standard
    # error of 0.02 / sqrt(2 * 512) = 0.0006, so 0.002 is over 3 of them and still excludes the 0.0176 of a normal cut
    # at 2 std (Keras' TruncatedNormal), which also never exceeds 0.04; N(0, 0.02) does, in 4.6% of draws.
    assert abs(float(np.std(table)) - 0.02) < 0.002
    assert np.abs(table).max() > 0.04
    x = images()
    before = model(x).numpy()
    learned[0].assign(learned[0].numpy() + 1.0)
    assert not np.allclose(model(x).numpy(), before)


def model_config(**switches):
    c = ml_collections.ConfigDict(dict(arch="vit_micro", overrides=dict(SIZES), train_patch_embed=False,
                                       moco_dim=16, mlp_dim=32, temperature=0.2, momentum=0.99,
                                       momentum_cosine=True, monitor_grad_norms=True))
    c.update(switches)
    return config_lib.complete(c, part="model")  # pos_embed, pooling, head_bn, predictor: base_config's


def bn_layers(model):
    return [layer.name for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


@pytest.mark.parametrize("head_bn, projector_bns, predictor_bns", [
    ("all", ["bn_0", "bn_1", "bn_2"], ["bn_0", "bn_1"]),
    ("projector", ["bn_0", "bn_1", "bn_2"], []),
    ("hidden", ["bn_0", "bn_1"], ["bn_0"]),
    ("none", [], []),
])
def test_head_bn_removes_the_batch_norms_it_names(head_bn, projector_bns, predictor_bns):
    keras.utils.set_random_seed(0)
    model = moco.build_moco(model_config(head_bn=head_bn), image_size=IMAGE, total_steps=1)
    assert bn_layers(model.projector) == projector_bns
    assert bn_layers(model.momentum_projector) == projector_bns
    assert bn_layers(model.predictor) == predictor_bns


def test_auto_head_bn_is_the_methods():
    assert moco.resolved_head_bn(model_config(head_bn="auto"), "mocov3") == "all"
    assert moco.resolved_head_bn(model_config(head_bn="auto"), "byol") == "hidden"
    assert moco.resolved_head_bn(model_config(head_bn="none"), "byol") == "none"


def test_predictor_false_has_no_predictor_and_the_queries_are_the_projections():
    keras.utils.set_random_seed(0)
    model = moco.build_moco(model_config(predictor=False), image_size=IMAGE, total_steps=1)
    assert model.predictor is None
    assert not any(w.path.startswith("predictor/") for w in model.trainable_weights)
    x1, x2 = images(4, 1), images(4, 2)
    q1, _ = model.queries(x1, x2, training=False)
    np.testing.assert_allclose(q1.numpy(), model.projector(model.backbone(x1), training=False).numpy(), atol=1e-6)


def test_momentum_zero_makes_the_keys_those_of_the_query_encoder():
    keras.utils.set_random_seed(0)
    model = moco.build_moco(model_config(predictor=False, momentum=0.0, momentum_cosine=False), image_size=IMAGE,
                            total_steps=10)
    for w in model.backbone.trainable_weights + model.projector.trainable_weights:
        w.assign(w.numpy() + 0.01)  # as after an optimizer step: the momentum encoder now differs
    assert float(model.momentum_at(3)) == 0.0
    model.update_momentum_encoder(model.momentum_at(3))
    x1, x2 = images(4, 1), images(4, 2)
    k1, _ = model.keys(x1, x2)
    np.testing.assert_allclose(k1.numpy(), model.projector(model.backbone(x1), training=True).numpy(), atol=1e-5)


def base_with(**model_keys):
    config = config_lib.base_config()
    config.model.update(model_keys)
    return config


@pytest.mark.parametrize("key, value, message", [
    ("pos_embed", "rope", "config.model.pos_embed='rope' is unknown; choose one of sincos, learned, none."),
    ("pooling", "max", "config.model.pooling='max' is unknown; choose one of cls, gap_ln, gap."),
    ("head_bn", "some", "config.model.head_bn='some' is unknown; choose one of auto, all, projector, hidden, none."),
])
def test_validation_refuses_unknown_switch_values(key, value, message):
    with pytest.raises(config_lib.ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        config_lib.validate(base_with(**{key: value}))


def test_validation_refuses_vit_switches_for_a_resnet():
    config = base_with(arch="resnet50", pooling="gap")
    with pytest.raises(config_lib.ConfigError, match=r"config.model.pooling='gap' is a ViT option that resnet50 "
                                                     r"does not have"):
        config_lib.validate(config)
    config_lib.validate(base_with(arch="resnet50"))  # the defaults are fine


def test_ablation_configs_set_their_switch_and_validate():
    expected = {"ablation_posemb": ("pos_embed", "sincos"), "ablation_cls_token": ("pooling", "cls"),
                "ablation_head_bn": ("head_bn", "all"), "ablation_predictor": ("predictor", True),
                "ablation_momentum": ("momentum", 0.99)}
    for name, (key, value) in expected.items():
        spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config()
        config_lib.validate(config)
        assert config.model[key] == value and config.model.arch == "vit_base", name
        assert f"config.model.{key}" in module.__doc__, name


def table_rows(doc):
    """{first cell: [(dotted key, value string), ...]} of the `  | m | paper | command` table of a docstring."""
    rows, current = {}, None
    for line in doc.splitlines():
        cell = re.match(r"\s*\|\s*([0-9.]*)\s*\|", line)
        if not cell:
            continue
        if cell.group(1):
            current = cell.group(1)
            rows[current] = []
        if current is not None:
            rows[current] += re.findall(r"--config\.([\w.]+)=(\S+)", line)
    return rows


def test_table_9_commands_mean_their_rows():
    spec = importlib.util.spec_from_file_location("ablation_momentum", os.path.join(ROOT, "configs",
                                                                                    "ablation_momentum.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = table_rows(module.__doc__)
    assert sorted(rows, key=float) == ["0", "0.9", "0.99", "0.999"]  # the paper's four m
    total = 1000
    for m, flags in rows.items():
        config = module.get_config()
        for key, value in flags:
            section, name = key.split(".")
            old = config[section][name]
            config[section][name] = (value == "True") if isinstance(old, bool) else type(old)(value)
        assert config.model.momentum == float(m)
        got = [float(moco.momentum_schedule(t, config.model.momentum, total, cosine=config.model.momentum_cosine))
               for t in (0, total // 2, total - 1)]
        if m == "0":  # no momentum: the key encoder is the query encoder at every step
            assert got == [0.0, 0.0, 0.0]
        else:  # the recipe's cosine from m to 1 (SPEC: m_t = 1 - (1 - m0) (1 + cos(pi t / T)) / 2)
            want = [1 - (1 - float(m)) * (1 + math.cos(math.pi * t / total)) / 2 for t in (0, total // 2, total - 1)]
            assert got == pytest.approx(want, abs=1e-7)  # float32 values near 1: an ulp is 6e-8


def test_backbones_feature_dim_and_resolve_accept_the_switches():
    cfg = backbones.resolve_config("vit_micro", IMAGE, dict(SIZES, pooling="gap", pos_embed="none"))
    assert (cfg["pooling"], cfg["pos_embed"]) == ("gap", "none")
    assert vit.config_overrides(model_config(pooling="gap", pos_embed="sincos")) == dict(SIZES, pooling="gap")


def test_an_ablation_run_loads_back_with_identical_features(tiny_config, tmp_path):
    from conftest import FMNIST  # pylint: disable=import-outside-toplevel
    if not os.path.exists(os.path.join(FMNIST, "train-images-idx3-ubyte.gz")):
        pytest.skip("scripts/setup.sh installs dataset-fashion-mnist")
    from tf_mocov3.training import finetune  # pylint: disable=import-outside-toplevel
    from tf_mocov3.training import pretrain  # pylint: disable=import-outside-toplevel
    from tf_mocov3.weights import pretrained  # pylint: disable=import-outside-toplevel

    config, _ = tiny_config(tmp_path)
    config.max_steps = 2
    config.model.update(dict(pooling="gap", pos_embed="learned", head_bn="none", predictor=False))
    workdir = str(tmp_path / "run")
    result = pretrain.run_pretraining(config, workdir, print_fn=lambda line: None)
    trained = result["model"]
    x = images()
    encoder = pretrained.load_encoder(workdir)
    assert weight_names(encoder.backbone) == weight_names(trained.backbone)
    np.testing.assert_allclose(encoder.backbone(x).numpy(), trained.backbone(x).numpy(), rtol=1e-6, atol=1e-6)
    z_loaded = encoder.projector(encoder.backbone(x), training=False).numpy()
    z_trained = trained.projector(trained.backbone(x), training=False).numpy()
    np.testing.assert_allclose(z_loaded, z_trained, rtol=1e-5, atol=1e-6)
    # Fine-tuning copies every weight, the learned table included, into a backbone built from the run's config.
    arch, overrides = finetune.check_pretrained(
        ml_collections.ConfigDict(dict(model=dict(arch="", drop_path_rate=0.0), image_size=IMAGE)), workdir)
    tuned = backbones.build_backbone(arch, IMAGE, train_patch_embed=True, **overrides)
    finetune.copy_pretrained_weights(tuned, workdir)
    np.testing.assert_allclose(tuned(x).numpy(), trained.backbone(x).numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("switches", [dict(pooling="gap", pos_embed="learned"),
                                      dict(pooling="gap_ln", pos_embed="none"), dict(pos_embed="learned")])
def test_plain_keras_export_of_an_ablation_backbone_round_trips(switches, tmp_path):
    from tf_mocov3.weights import plain_keras  # pylint: disable=import-outside-toplevel

    model = backbone(**switches)
    x = images()
    plain = plain_keras.to_plain_keras(model)
    np.testing.assert_allclose(plain(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)
    path = str(tmp_path / "backbone.keras")
    plain.save(path)
    back = plain_keras.load_keras_backbone(path)
    assert weight_names(back) == weight_names(model)
    np.testing.assert_allclose(back(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)
    overrides = dict(plain_keras.keras_backbone_config(path).model.overrides)
    assert {k: overrides.get(k, d) for k, d in (("pooling", "cls"), ("pos_embed", "sincos"))} == \
        {"pooling": switches.get("pooling", "cls"), "pos_embed": switches.get("pos_embed", "sincos")}


def test_resume_refuses_another_method_or_ablation_and_accepts_records_from_before_the_switches(tmp_path):
    import json  # pylint: disable=import-outside-toplevel

    from tf_mocov3.training import pretrain  # pylint: disable=import-outside-toplevel

    config = config_lib.base_config()
    record = config_lib.as_record(config)
    for key in ("method",):
        record.pop(key)
    for key in ("pos_embed", "pooling", "head_bn", "predictor"):
        record["model"].pop(key, None)
    (tmp_path / "config.json").write_text(json.dumps(record))   # what a run wrote before these keys existed
    config_lib.check_resume_compatible(str(tmp_path), config, pretrain.RESUME_KEYS)
    config.model.pooling = "gap"
    with pytest.raises(config_lib.ConfigError, match=r"holds a run with config.model.pooling='cls', not 'gap'; "):
        config_lib.check_resume_compatible(str(tmp_path), config, pretrain.RESUME_KEYS)
    config.model.pooling, config.method = "cls", "byol"
    with pytest.raises(config_lib.ConfigError, match=r"config.method='mocov3', not 'byol'"):
        config_lib.check_resume_compatible(str(tmp_path), config, pretrain.RESUME_KEYS)
