"""Importing the official PyTorch checkpoints: key layout, values, forward parity, safety, round trip.

The state_dicts are built here with torch in the official key layout and shapes (vits.py, moco/builder.py,
main_lincls.py, convert_to_deit.py), with random values, for tiny models. The reference forward is a ViT written
below from the paper's definition with torch.nn.functional, independent of tf_mocov3.
"""

import json
import os

from absl import flags
from absl.testing import flagsaver
import keras
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import torch
import torch.nn.functional as F

from tf_mocov3 import convert_official as convert_command  # the command; defines --input, --output
from tf_mocov3.models import moco
from tf_mocov3.training import optim
from tf_mocov3.weights import convert_official
from tf_mocov3.weights import pretrained

MICRO = {"embed_dim": 32, "depth": 2, "num_heads": 2}   # vit_micro: patch 4, image 16 -> 4 x 4 grid
CONV = {"embed_dim": 32, "depth": 1, "num_heads": 2}    # vit_conv_small: stride 16, image 32 -> 2 x 2 grid
MLP_DIM, MOCO_DIM = 32, 16


# === The official layout, in torch ===


def official_pos_embed(grid, dim):
    """vits.py build_2d_sincos_position_embedding, re-typed: meshgrid 'ij' of (w, h), [sin w, cos w, sin h, cos h]."""
    gw, gh = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32),
                            indexing="ij")
    d = dim // 4
    omega = 1.0 / (10000.0 ** (torch.arange(d, dtype=torch.float32) / d))
    out_w = torch.einsum("m,d->md", gw.flatten(), omega)
    out_h = torch.einsum("m,d->md", gh.flatten(), omega)
    emb = torch.cat([torch.sin(out_w), torch.cos(out_w), torch.sin(out_h), torch.cos(out_h)], dim=1)
    return torch.cat([torch.zeros(1, dim), emb], dim=0)[None]


def _bn(sd, key, n, g, affine=True):
    if affine:
        sd[key + ".weight"] = 1 + 0.1 * torch.randn(n, generator=g)
        sd[key + ".bias"] = 0.1 * torch.randn(n, generator=g)
    sd[key + ".running_mean"] = 0.1 * torch.randn(n, generator=g)
    sd[key + ".running_var"] = 0.5 + torch.rand(n, generator=g)
    sd[key + ".num_batches_tracked"] = torch.tensor(7, dtype=torch.long)


def official_backbone(prefix, *, dim, depth, grid, patch=4, conv_stem=False, g):
    sd = {}
    rnd = lambda *s: 0.2 * torch.randn(*s, generator=g)  # noqa: E731
    if conv_stem:
        cin, cout = 3, dim // 8
        for i in range(4):
            sd[f"{prefix}patch_embed.proj.{3 * i}.weight"] = rnd(cout, cin, 3, 3)
            _bn(sd, f"{prefix}patch_embed.proj.{3 * i + 1}", cout, g)
            cin, cout = cout, cout * 2
        sd[f"{prefix}patch_embed.proj.12.weight"] = rnd(dim, dim, 1, 1)
        sd[f"{prefix}patch_embed.proj.12.bias"] = rnd(dim)
    else:
        sd[f"{prefix}patch_embed.proj.weight"] = rnd(dim, 3, patch, patch)
        sd[f"{prefix}patch_embed.proj.bias"] = rnd(dim)
    sd[f"{prefix}cls_token"] = rnd(1, 1, dim)
    sd[f"{prefix}pos_embed"] = official_pos_embed(grid, dim)
    for i in range(depth):
        b = f"{prefix}blocks.{i}."
        for norm in ("norm1", "norm2"):
            sd[b + norm + ".weight"] = 1 + 0.1 * torch.randn(dim, generator=g)
            sd[b + norm + ".bias"] = rnd(dim)
        for name, (o, n) in {"attn.qkv": (3 * dim, dim), "attn.proj": (dim, dim),
                             "mlp.fc1": (4 * dim, dim), "mlp.fc2": (dim, 4 * dim)}.items():
            sd[b + name + ".weight"] = rnd(o, n)
            sd[b + name + ".bias"] = rnd(o)
    sd[f"{prefix}norm.weight"] = 1 + 0.1 * torch.randn(dim, generator=g)
    sd[f"{prefix}norm.bias"] = rnd(dim)
    return sd


def official_mlp(prefix, num_layers, in_dim, mlp_dim, out_dim, g):
    """moco/builder.py _build_mlp: [Linear(no bias), BN, ReLU] * (n-1), Linear, BN(affine=False)."""
    sd = {}
    for i in range(num_layers):
        last = i == num_layers - 1
        d1, d2 = (in_dim if i == 0 else mlp_dim), (out_dim if last else mlp_dim)
        sd[f"{prefix}.{3 * i}.weight"] = 0.2 * torch.randn(d2, d1, generator=g)
        _bn(sd, f"{prefix}.{3 * i + 1}", d2, g, affine=not last)
    return sd


def official_pretrain_state(g, dim=32, depth=2, grid=4, patch=4, conv_stem=False):
    sd = {}
    for enc in ("base_encoder", "momentum_encoder"):
        sd.update(official_backbone(f"module.{enc}.", dim=dim, depth=depth, grid=grid, patch=patch,
                                    conv_stem=conv_stem, g=g))
        sd.update(official_mlp(f"module.{enc}.head", 3, dim, MLP_DIM, MOCO_DIM, g))
    sd.update(official_mlp("module.predictor", 2, MOCO_DIM, MLP_DIM, MOCO_DIM, g))
    return sd


def save(tmp_path, name, obj):
    path = str(tmp_path / name)
    torch.save(obj, path)
    return path


# === The reference forward (the paper's ViT, torch.nn.functional) ===


def torch_vit_features(sd, prefix, images_nhwc, *, heads, depth, patch=4, conv_stem=False):
    p = lambda k: sd[prefix + k]  # noqa: E731
    x = torch.from_numpy(images_nhwc).permute(0, 3, 1, 2)
    if conv_stem:
        for i in range(4):
            x = F.conv2d(x, p(f"patch_embed.proj.{3 * i}.weight"), stride=2, padding=1)
            bn = f"patch_embed.proj.{3 * i + 1}"
            x = F.batch_norm(x, p(bn + ".running_mean"), p(bn + ".running_var"), p(bn + ".weight"),
                             p(bn + ".bias"), training=False, eps=1e-5)
            x = F.relu(x)
        x = F.conv2d(x, p("patch_embed.proj.12.weight"), p("patch_embed.proj.12.bias"))
    else:
        x = F.conv2d(x, p("patch_embed.proj.weight"), p("patch_embed.proj.bias"), stride=patch)
    b, dim = x.shape[0], x.shape[1]
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([p("cls_token").expand(b, -1, -1), x], dim=1) + p("pos_embed")
    n, dh = x.shape[1], dim // heads
    for i in range(depth):
        k = f"blocks.{i}."
        h = F.layer_norm(x, (dim,), p(k + "norm1.weight"), p(k + "norm1.bias"), eps=1e-6)
        qkv = F.linear(h, p(k + "attn.qkv.weight"), p(k + "attn.qkv.bias")).reshape(b, n, 3, heads, dh)
        q, kk, v = qkv.permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ kk.transpose(-2, -1) * dh ** -0.5, dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, dim)
        x = x + F.linear(out, p(k + "attn.proj.weight"), p(k + "attn.proj.bias"))
        h = F.layer_norm(x, (dim,), p(k + "norm2.weight"), p(k + "norm2.bias"), eps=1e-6)
        h = F.gelu(F.linear(h, p(k + "mlp.fc1.weight"), p(k + "mlp.fc1.bias")))
        x = x + F.linear(h, p(k + "mlp.fc2.weight"), p(k + "mlp.fc2.bias"))
    x = F.layer_norm(x, (dim,), p("norm.weight"), p("norm.bias"), eps=1e-6)
    return x[:, 0].numpy()


def _images(size, n=3, seed=0):
    return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype(np.float32)


# === Tests ===


def test_every_tensor_lands_in_its_keras_variable(tmp_path):
    g = torch.Generator().manual_seed(0)
    sd = official_pretrain_state(g)
    path = save(tmp_path, "vit-micro.pth.tar", {"epoch": 3, "arch": "vit_micro", "state_dict": sd})
    out = str(tmp_path / "converted")
    report = convert_official.convert_file(path, out, arch="vit_micro", overrides=MICRO)

    with open(os.path.join(out, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    assert config.source == "official:vit-micro.pth.tar"
    assert (config.model.arch, config.dataset.image_size) == ("vit_micro", 16)
    assert (config.model.mlp_dim, config.model.moco_dim) == (MLP_DIM, MOCO_DIM)
    assert config.model.overrides.embed_dim == 32 and config.model.overrides.num_heads == 2
    assert report["kind"] == "pretrain" and report["pos_embed_max_abs_diff"] < 1e-6

    model = moco.build_moco(config.model, image_size=16, total_steps=1)
    pretrained.restore_moco(model, out)
    t = lambda k: sd["module." + k].numpy()  # noqa: E731
    checked = set()

    def same(keras_value, key, transform=lambda a: a):
        np.testing.assert_array_equal(keras_value.numpy(), transform(t(key)), err_msg=key)
        checked.add("module." + key)

    lin, conv = np.transpose, lambda a: a.transpose(2, 3, 1, 0)
    for enc, backbone, projector in (("base_encoder", model.backbone, model.projector),
                                     ("momentum_encoder", model.momentum_backbone, model.momentum_projector)):
        e = enc + "."
        same(backbone.get_layer("patch_embed").kernel, e + "patch_embed.proj.weight", conv)
        same(backbone.get_layer("patch_embed").bias, e + "patch_embed.proj.bias")
        same(backbone.get_layer("cls_pos_embed").cls_token, e + "cls_token")
        for i in range(2):
            blk, k = backbone.get_layer(f"block_{i}"), f"{e}blocks.{i}."
            same(blk.norm1.gamma, k + "norm1.weight")
            same(blk.norm1.beta, k + "norm1.bias")
            same(blk.attn.qkv.kernel, k + "attn.qkv.weight", lin)
            same(blk.attn.qkv.bias, k + "attn.qkv.bias")
            same(blk.attn.proj.kernel, k + "attn.proj.weight", lin)
            same(blk.attn.proj.bias, k + "attn.proj.bias")
            same(blk.norm2.gamma, k + "norm2.weight")
            same(blk.norm2.beta, k + "norm2.bias")
            same(blk.fc1.kernel, k + "mlp.fc1.weight", lin)
            same(blk.fc1.bias, k + "mlp.fc1.bias")
            same(blk.fc2.kernel, k + "mlp.fc2.weight", lin)
            same(blk.fc2.bias, k + "mlp.fc2.bias")
        same(backbone.get_layer("norm").gamma, e + "norm.weight")
        same(backbone.get_layer("norm").beta, e + "norm.bias")
        for mlp, prefix, layers in ((projector, e + "head", 3),) + (
                ((model.predictor, "predictor", 2),) if enc == "base_encoder" else ()):
            for i in range(layers):
                same(mlp.get_layer(f"linear_{i}").kernel, f"{prefix}.{3 * i}.weight", lin)
                bn, k = mlp.get_layer(f"bn_{i}"), f"{prefix}.{3 * i + 1}."
                if i < layers - 1:
                    same(bn.gamma, k + "weight")
                    same(bn.beta, k + "bias")
                same(bn.moving_mean, k + "running_mean")
                same(bn.moving_variance, k + "running_var")
    # Everything else is the fixed position embedding (compared, not stored) and the BN step counters.
    rest = set(sd) - checked
    assert rest and all(k.endswith(("pos_embed", "num_batches_tracked")) for k in rest), sorted(rest)


def test_forward_parity_with_a_pytorch_vit(tmp_path):
    g = torch.Generator().manual_seed(1)
    sd = official_pretrain_state(g)
    out = str(tmp_path / "converted")
    convert_official.convert_file(save(tmp_path, "a.pth.tar", {"state_dict": sd}), out, arch="vit_micro",
                                  overrides=MICRO)
    images = _images(16)
    ours = pretrained.load_backbone(out)(images).numpy()
    theirs = torch_vit_features(sd, "module.base_encoder.", images, heads=2, depth=2)
    assert np.max(np.abs(ours - theirs)) <= 1e-4
    assert np.std(theirs) > 0.1  # not a degenerate comparison


def test_conv_stem_deit_layout_forward_parity(tmp_path):
    """convert_to_deit.py output ({'model': base encoder without 'module.' and head}) of a conv-stem ViT."""
    g = torch.Generator().manual_seed(2)
    sd = official_backbone("", dim=32, depth=1, grid=2, conv_stem=True, g=g)
    out = str(tmp_path / "converted")
    report = convert_official.convert_file(save(tmp_path, "deit.pth", {"model": sd}), out,
                                           arch="vit_conv_small", overrides=CONV)
    assert report["kind"] == "backbone" and report["image_size"] == 32
    images = _images(32)
    encoder = pretrained.load_encoder(out)
    assert encoder.projector is None and encoder.source == "official"
    theirs = torch_vit_features(sd, "", images, heads=2, depth=1, conv_stem=True)
    assert np.max(np.abs(encoder.backbone(images, training=False).numpy() - theirs)) <= 1e-4
    with pytest.raises(ValueError, match="holds only a backbone"):
        pretrained.restore_moco(moco.build_moco(encoder.config.model, image_size=32, total_steps=1), out)


def test_linear_probe_checkpoint_gives_the_full_classifier(tmp_path):
    g = torch.Generator().manual_seed(3)
    sd = {"module." + k: v for k, v in official_backbone("", dim=32, depth=2, grid=4, g=g).items()}
    sd["module.head.weight"] = 0.01 * torch.randn(5, 32, generator=g)
    sd["module.head.bias"] = 0.1 * torch.randn(5, generator=g)
    path = save(tmp_path, "linear.pth.tar", {"epoch": 90, "arch": "vit_micro", "state_dict": sd,
                                             "best_acc1": torch.tensor(12.5)})
    out = str(tmp_path / "converted")
    assert convert_official.convert_file(path, out, arch="vit_micro", overrides=MICRO)["num_classes"] == 5
    images = _images(16)
    feats = torch_vit_features(sd, "module.", images, heads=2, depth=2)
    theirs = torch.from_numpy(feats) @ sd["module.head.weight"].T + sd["module.head.bias"]
    logits = pretrained.load_classifier(out)(images).numpy()
    assert np.max(np.abs(logits - theirs.numpy())) <= 1e-4


def test_a_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    path = save(tmp_path, "evil.pth.tar", {"state_dict": {"cls_token": torch.zeros(1)}, "x": Payload()})
    with pytest.raises(convert_official.ConversionError, match="Refused to read"):
        convert_official.convert_file(path, str(tmp_path / "out"))
    assert not marker.exists()
    assert not (tmp_path / "out" / "config.json").exists()


def test_every_bad_key_is_named(tmp_path):
    g = torch.Generator().manual_seed(4)
    sd = official_pretrain_state(g)
    sd["module.base_encoder.head.9.weight"] = torch.zeros(3)         # unexpected
    del sd["module.predictor.0.weight"]                              # missing
    sd["module.momentum_encoder.blocks.1.attn.qkv.bias"] = torch.zeros(95)  # shape mismatch
    state = convert_official.extract_state_dict({"state_dict": sd})
    with pytest.raises(convert_official.ConversionError) as err:
        convert_official.convert_state_dict(state, arch="vit_micro", overrides=MICRO)
    message = str(err.value)
    for text in ("unexpected key(s): base_encoder.head.9.weight", "missing key(s): predictor.0.weight",
                 "momentum_encoder.blocks.1.attn.qkv.bias: checkpoint (95,)"):
        assert text in message


def test_a_learned_position_embedding_is_rejected_with_the_reason():
    g = torch.Generator().manual_seed(5)
    sd = official_backbone("", dim=32, depth=2, grid=4, g=g)
    sd["pos_embed"] = sd["pos_embed"] + 0.01 * torch.randn(sd["pos_embed"].shape, generator=g)
    with pytest.raises(convert_official.ConversionError, match=r"pos_embed differs .* sin-cos"):
        convert_official.convert_state_dict(convert_official.extract_state_dict({"model": sd}), arch="vit_micro",
                                            overrides=MICRO)


def test_the_official_archs_are_inferred_from_the_shapes():
    def shapes(prefix, dim, depth, conv_stem):
        zero = lambda *s: np.broadcast_to(np.float32(0), s)  # noqa: E731  (shapes only, no memory)
        sd = {prefix + "cls_token": zero(1, 1, dim), prefix + "pos_embed": zero(1, 197, dim),
              prefix + "blocks.0.mlp.fc1.weight": zero(4 * dim, dim), prefix + f"blocks.{depth - 1}.norm1.weight":
              zero(dim)}
        sd[prefix + ("patch_embed.proj.0.weight" if conv_stem else "patch_embed.proj.weight")] = (
            zero(dim // 8, 3, 3, 3) if conv_stem else zero(dim, 3, 16, 16))
        return sd

    for arch, dim, depth, stem in (("vit_small", 384, 12, False), ("vit_base", 768, 12, False),
                                   ("vit_conv_small", 384, 11, True), ("vit_conv_base", 768, 11, True)):
        dims = convert_official._backbone_dims(shapes("base_encoder.", dim, depth, stem), "base_encoder.")
        assert convert_official.infer_arch(dims) == arch and dims["grid"] * dims["patch_size"] == 224
    with pytest.raises(convert_official.ConversionError, match="--arch"):
        convert_official.infer_arch(convert_official._backbone_dims(shapes("", 32, 2, False), ""))


def test_without_torch_the_command_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "torch", None)
    with pytest.raises(ImportError, match="pip install -r requirements-convert.txt"):
        convert_official.read_torch_checkpoint("x.pth.tar")


def test_round_trip_linear_probe_and_pretraining_step(tmp_path):
    g = torch.Generator().manual_seed(6)
    sd = official_pretrain_state(g)
    out = str(tmp_path / "converted")
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    with flagsaver.flagsaver(input=save(tmp_path, "b.pth.tar", {"state_dict": sd}), output=out, arch="vit_micro",
                             model_overrides=json.dumps(MICRO)):
        convert_command.main([])

    # Linear probe: a Dense on the frozen features, one SGD step.
    backbone = pretrained.load_backbone(out)
    backbone.trainable = False
    probe = keras.Sequential([backbone, keras.layers.Dense(3)])
    probe.compile(optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.SparseCategoricalCrossentropy(True))
    images, labels = _images(16, n=6), np.array([0, 1, 2, 0, 1, 2])
    before = [w.numpy().copy() for w in backbone.weights]
    loss = probe.train_on_batch(images, labels)
    assert np.isfinite(loss)
    for a, w in zip(before, backbone.weights):
        np.testing.assert_array_equal(a, w.numpy())

    # Pre-training continues from the converted weights.
    with open(os.path.join(out, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    model = moco.build_moco(config.model, image_size=16, total_steps=2)
    pretrained.restore_moco(model, out)
    np.testing.assert_array_equal(model.predictor.get_layer("linear_0").kernel.numpy(),
                                  sd["module.predictor.0.weight"].numpy().T)
    opt_config = ml_collections.ConfigDict(dict(config.optim))
    opt_config.warmup_epochs = 0
    model.compile(optimizer=optim.build_optimizer(opt_config, global_batch=4, steps_per_epoch=1, total_steps=2),
                  jit_compile=False)
    x = _images(16, n=4, seed=1)
    data = tf.data.Dataset.from_tensors((x, x[::-1].copy()))
    history = model.fit(data, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    assert not np.array_equal(model.backbone.get_layer("norm").gamma.numpy(), sd["module.base_encoder.norm.weight"])


# === ResNet-50 (moco/builder.py MoCo_ResNet, torchvision resnet50, main_lincls.py) ===

R50_BLOCKS, TINY_BLOCKS = (3, 4, 6, 3), (1, 1, 1, 1)


def official_resnet(prefix, blocks, width, g):
    """torchvision ResNet keys (conv1, bn1, layer{s}.{b}.conv{1,2,3} / bn{1,2,3} / downsample.{0,1}), random values:
    kaiming-normal convs (so activations keep their scale through 16 blocks) and BN with non-trivial statistics."""
    sd = {}

    def conv(key, cout, cin, k):
        sd[key] = torch.randn(cout, cin, k, k, generator=g) * (2.0 / (cin * k * k)) ** 0.5

    conv(f"{prefix}conv1.weight", width, 3, 7)
    _bn(sd, f"{prefix}bn1", width, g)
    cin = width
    for stage, n in enumerate(blocks):
        planes = width * 2 ** stage
        for b in range(n):
            key = f"{prefix}layer{stage + 1}.{b}"
            conv(f"{key}.conv1.weight", planes, cin, 1)
            _bn(sd, f"{key}.bn1", planes, g)
            conv(f"{key}.conv2.weight", planes, planes, 3)
            _bn(sd, f"{key}.bn2", planes, g)
            conv(f"{key}.conv3.weight", 4 * planes, planes, 1)
            _bn(sd, f"{key}.bn3", 4 * planes, g)
            sd[f"{key}.bn3.weight"] *= 0.2  # zero-init residual gammas stay small: activations keep their scale
            if b == 0:
                conv(f"{key}.downsample.0.weight", 4 * planes, cin, 1)
                _bn(sd, f"{key}.downsample.1", 4 * planes, g)
            cin = 4 * planes
    return sd


def official_resnet_mlp(prefix, in_dim, mlp_dim, out_dim, last_bn, g):
    """_build_mlp(2, ...): Linear BN ReLU Linear [BN(affine=False) when last_bn]."""
    sd = {f"{prefix}.0.weight": 0.05 * torch.randn(mlp_dim, in_dim, generator=g)}
    _bn(sd, f"{prefix}.1", mlp_dim, g)
    sd[f"{prefix}.3.weight"] = 0.05 * torch.randn(out_dim, mlp_dim, generator=g)
    if last_bn:
        _bn(sd, f"{prefix}.4", out_dim, g, affine=False)
    return sd


def official_resnet_pretrain_state(g, blocks=R50_BLOCKS, width=64):
    sd = {}
    for enc in ("base_encoder", "momentum_encoder"):
        sd.update(official_resnet(f"module.{enc}.", blocks, width, g))
        sd.update(official_resnet_mlp(f"module.{enc}.fc", 32 * width, MLP_DIM, MOCO_DIM, True, g))
    sd.update(official_resnet_mlp("module.predictor", MOCO_DIM, MLP_DIM, MOCO_DIM, False, g))
    return sd


def torch_resnet_features(sd, prefix, images_nhwc, blocks, training):
    """torchvision's ResNet forward (Bottleneck, stride on the 3x3 conv) with torch.nn.functional, pooled [B, C]."""
    p = lambda k: sd[prefix + k]  # noqa: E731

    def bn(x, key):
        # Copies: training-mode F.batch_norm updates the running statistics in place.
        return F.batch_norm(x, p(key + ".running_mean").clone(), p(key + ".running_var").clone(),
                            p(key + ".weight"), p(key + ".bias"), training=training, momentum=0.1, eps=1e-5)

    x = torch.from_numpy(images_nhwc).permute(0, 3, 1, 2)
    x = F.relu(bn(F.conv2d(x, p("conv1.weight"), stride=2, padding=3), "bn1"))
    x = F.max_pool2d(x, 3, stride=2, padding=1)
    for stage, n in enumerate(blocks):
        for b in range(n):
            key = f"layer{stage + 1}.{b}"
            stride = 2 if stage > 0 and b == 0 else 1
            out = F.relu(bn(F.conv2d(x, p(f"{key}.conv1.weight")), f"{key}.bn1"))
            out = F.relu(bn(F.conv2d(out, p(f"{key}.conv2.weight"), stride=stride, padding=1), f"{key}.bn2"))
            out = bn(F.conv2d(out, p(f"{key}.conv3.weight")), f"{key}.bn3")
            if prefix + f"{key}.downsample.0.weight" in sd:
                x = bn(F.conv2d(x, p(f"{key}.downsample.0.weight"), stride=stride), f"{key}.downsample.1")
            x = F.relu(out + x)
    return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def torch_mlp(sd, prefix, x, training, last_bn):
    def bn(x, key, affine=True):
        return F.batch_norm(x, sd[key + ".running_mean"].clone(), sd[key + ".running_var"].clone(),
                            sd[key + ".weight"] if affine else None, sd[key + ".bias"] if affine else None,
                            training=training, eps=1e-5)

    x = F.relu(bn(F.linear(x, sd[f"{prefix}.0.weight"]), f"{prefix}.1"))
    x = F.linear(x, sd[f"{prefix}.3.weight"])
    return bn(x, f"{prefix}.4", affine=False) if last_bn else x


@pytest.fixture(scope="module")
def converted_r50(tmp_path_factory):
    """A random ResNet-50 pre-training checkpoint in the official layout (r-50-*ep.pth.tar), converted."""
    tmp = tmp_path_factory.mktemp("r50")
    sd = official_resnet_pretrain_state(torch.Generator().manual_seed(10))
    path = save(tmp, "r-50-100ep.pth.tar", {"epoch": 100, "arch": "resnet50", "state_dict": sd,
                                            "optimizer": {"state": {}, "param_groups": []}})
    out = str(tmp / "converted")
    report = convert_official.convert_file(path, out)  # arch inferred from the shapes
    return sd, out, report


def test_r50_pretraining_checkpoint_every_key_used_and_arch_inferred(converted_r50):
    sd, out, report = converted_r50
    assert (report["kind"], report["arch"], report["image_size"]) == ("pretrain", "resnet50", 224)
    # Every key lands in a variable except the BN step counters; the heads' sizes are read from the shapes.
    assert report["tensors_converted"] + len(report["keys_dropped"]) == len(sd) == report["keys_read"]
    assert all(k.endswith("num_batches_tracked") for k in report["keys_dropped"])
    with open(os.path.join(out, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    assert (config.model.arch, config.model.mlp_dim, config.model.moco_dim) == ("resnet50", MLP_DIM, MOCO_DIM)
    model = moco.build_moco(config.model, image_size=64, total_steps=1)
    pretrained.restore_moco(model, out)
    t = lambda k: sd["module." + k].numpy()  # noqa: E731
    conv = lambda a: a.transpose(2, 3, 1, 0)  # noqa: E731
    block = model.momentum_backbone.get_layer("block_13")  # layer4.0, with its downsample shortcut
    np.testing.assert_array_equal(block.get_layer("block_13_conv2").kernel.numpy(),
                                  conv(t("momentum_encoder.layer4.0.conv2.weight")))
    np.testing.assert_array_equal(block.get_layer("block_13_downsample_bn").moving_variance.numpy(),
                                  t("momentum_encoder.layer4.0.downsample.1.running_var"))
    np.testing.assert_array_equal(model.projector.get_layer("bn_1").moving_mean.numpy(),
                                  t("base_encoder.fc.4.running_mean"))
    np.testing.assert_array_equal(model.predictor.get_layer("linear_1").kernel.numpy(), t("predictor.3.weight").T)


def test_r50_forward_parity_with_an_independent_pytorch_resnet(converted_r50):
    sd, out, _ = converted_r50
    images = _images(64, n=4)
    encoder = pretrained.load_encoder(out, image_size=64)
    with open(os.path.join(out, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    model = moco.build_moco(config.model, image_size=64, total_steps=1)
    pretrained.restore_moco(model, out)
    for training in (False, True):
        theirs = torch_resnet_features(sd, "module.base_encoder.", images, R50_BLOCKS, training)
        ours = encoder.backbone(images, training=training).numpy()
        assert float(theirs.abs().max()) > 1.0  # not a degenerate comparison (23 in inference, 1.8 in training)
        assert np.max(np.abs(ours - theirs.numpy())) <= 1e-4, training  # measured 1.5e-5 / 1.3e-5
        # The momentum encoder and the heads: q = predictor(fc(f)), k = momentum fc(momentum f).
        q_theirs = torch_mlp(sd, "module.predictor", torch_mlp(sd, "module.base_encoder.fc", theirs, training, True),
                             training, False)
        q_ours = model.predictor(model.projector(model.backbone(images, training=training), training=training),
                                 training=training).numpy()
        assert np.max(np.abs(q_ours - q_theirs.numpy())) <= 1e-4
        k_theirs = torch_mlp(sd, "module.momentum_encoder.fc",
                             torch_resnet_features(sd, "module.momentum_encoder.", images, R50_BLOCKS, training),
                             training, True)
        k_ours = model.momentum_projector(model.momentum_backbone(images, training=training),
                                          training=training).numpy()
        assert np.max(np.abs(k_ours - k_theirs.numpy())) <= 1e-4


def test_r50_linear_checkpoint_gives_the_classifier(tmp_path):
    g = torch.Generator().manual_seed(11)
    sd = {"module." + k: v for k, v in official_resnet("", TINY_BLOCKS, 16, g).items()}
    sd["module.fc.weight"] = 0.01 * torch.randn(5, 512, generator=g)
    sd["module.fc.bias"] = 0.1 * torch.randn(5, generator=g)
    path = save(tmp_path, "linear-100ep.pth.tar", {"epoch": 90, "arch": "resnet50", "state_dict": sd,
                                                   "best_acc1": torch.tensor(12.5)})
    out = str(tmp_path / "converted")
    report = convert_official.convert_file(path, out)
    assert (report["kind"], report["arch"], report["num_classes"]) == ("linear_probe", "resnet_tiny", 5)
    images = _images(32, n=2)
    feats = torch_resnet_features(sd, "module.", images, TINY_BLOCKS, False)
    theirs = (feats @ sd["module.fc.weight"].T + sd["module.fc.bias"]).numpy()
    np.testing.assert_allclose(pretrained.load_classifier(out, image_size=32)(images).numpy(), theirs, atol=1e-4)
    with pytest.raises(ValueError, match="holds only a backbone"):
        pretrained.restore_moco(moco.build_moco(pretrained.resolve(out).config.model, image_size=32,
                                                total_steps=1), out)


def test_r50_every_bad_key_is_named():
    g = torch.Generator().manual_seed(12)
    sd = official_resnet_pretrain_state(g, blocks=TINY_BLOCKS, width=16)
    _bn(sd, "module.predictor.4", MOCO_DIM, g, affine=False)               # a ViT-style last BN: unexpected
    del sd["module.base_encoder.layer3.0.bn2.running_var"]                  # missing
    sd["module.momentum_encoder.layer2.0.conv2.weight"] = torch.zeros(32, 32, 1, 1)  # shape mismatch
    with pytest.raises(convert_official.ConversionError) as err:
        convert_official.convert_state_dict(convert_official.extract_state_dict({"state_dict": sd}))
    message = str(err.value)
    for text in ("unexpected key(s): predictor.4.num_batches_tracked, predictor.4.running_mean",
                 "missing key(s): base_encoder.layer3.0.bn2.running_var",
                 "momentum_encoder.layer2.0.conv2.weight: checkpoint (32, 32, 1, 1)"):
        assert text in message, message
    with pytest.raises(convert_official.ConversionError, match=r"\[2, 2, 2, 2\] blocks per stage"):
        convert_official.infer_resnet_arch({"blocks": (2, 2, 2, 2), "width": 64})
    with pytest.raises(convert_official.ConversionError, match="ViT option"):
        convert_official.convert_state_dict(convert_official.extract_state_dict({"state_dict": sd}),
                                            arch="resnet_tiny", overrides={"depth": 2})
