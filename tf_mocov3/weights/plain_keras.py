"""The backbone as a `.keras` file of standard Keras layers only, for fine-tuning jobs outside this project.

`to_plain_keras` rebuilds a tf_mocov3 ViT backbone from stock Keras layers with the same weights, so that
`keras.saving.load_model("backbone.keras")` needs no custom object and no import of tf_mocov3;
`load_keras_backbone` turns such a file back into a tf_mocov3 backbone (at any image size), which is how every
`--pretrained` flag accepts it. The export stage (`export/saved_model.py`) writes the file next to the SavedModel.

A ResNet backbone (models/resnet.py) is already built from standard Keras layers only (Conv2D, BatchNormalization,
ReLU, Add, pooling; each bottleneck a nested functional model), so its plain twin is a fresh build of the same
arch with the same weights, and reading it back is the reverse.
"""

import re

import keras
import numpy as np
import tensorflow as tf

from tf_mocov3.models import resnet
from tf_mocov3.models import vit

_LN_EPSILON = 1e-6


def to_plain_keras(backbone, name="mocov3_backbone"):
    """The same backbone built from standard Keras layers only, with the same weights (trainable as before).

    `keras.saving.load_model` then needs no custom object. The pieces that have no Keras layer of their own:
    the [CLS] token is the bias of a Dense layer `cls_token` whose input is always zero (its kernel never
    matters and gets zero gradient); the fixed sin-cos position table is a `Normalization(invert=True)` layer
    `pos_embed` that adds it (variance 1); the fused qkv projection becomes a `MultiHeadAttention` layer with the
    same numbers; stochastic depth (if any) is a Dropout with one draw per sample. Layer names follow the
    tf_mocov3 backbone ("patch_embed", "block_{i}_attn", ..., "norm").

    Args:
        backbone: a `tf_mocov3.models.vit.build_backbone` model.
        name: the model name.

    Returns:
        keras.Model, normalised float32 images [B, S, S, 3] -> [CLS] features [B, D].
    """
    if _is_resnet_model(backbone):
        arch = _resnet_arch_of(backbone)
        plain = resnet.build_resnet(arch, int(backbone.input_shape[1]), name=name)
        plain.set_weights(backbone.get_weights())
        return plain
    layout = _layout_of_vit(backbone)
    s, d, heads = layout["image_size"], layout["embed_dim"], layout["num_heads"]
    patch = backbone.get_layer("patch_embed")
    inputs = keras.Input(shape=(s, s, 3), name="images")
    x = inputs
    if layout["conv_stem"]:
        for i, (conv, bn) in enumerate(zip(patch.convs, patch.bns)):
            x = keras.layers.ZeroPadding2D(1, name=f"stem_pad_{i}")(x)
            x = keras.layers.Conv2D(conv.filters, 3, strides=2, use_bias=False, name=f"stem_conv_{i}")(x)
            x = keras.layers.BatchNormalization(momentum=bn.momentum, epsilon=bn.epsilon, synchronized=True,
                                                name=f"stem_bn_{i}")(x)
            x = keras.layers.ReLU(name=f"stem_relu_{i}")(x)
        x = keras.layers.Conv2D(d, 1, name="patch_embed")(x)
    else:
        p = layout["patch_size"]
        embed = keras.layers.Conv2D(d, p, strides=p, name="patch_embed")
        embed.trainable = patch.trainable
        x = embed(x)
    grid_h, grid_w = x.shape[1], x.shape[2]
    n = grid_h * grid_w
    has_cls = layout["pooling"] == "cls"
    tokens = keras.layers.Reshape((n, d), name="patch_tokens")(x)
    zero = None
    if has_cls or layout["pos_embed"] == "learned":
        pixel = keras.layers.Cropping2D(((0, s - 1), (0, s - 1)), name="cls_zero_pixel")(inputs)
        zero = keras.layers.Rescaling(0.0, name="cls_zero")(keras.layers.Reshape((1, 3), name="cls_zero_flat")(pixel))
    if has_cls:
        cls = keras.layers.Dense(d, kernel_initializer="zeros", name="cls_token")(zero)
        x = keras.layers.Concatenate(axis=1, name="prepend_cls")([cls, tokens])
    else:
        x = tokens
    num_tokens = n + int(has_cls)
    if layout["pos_embed"] == "sincos":
        table = vit.sincos_2d_position_embedding(grid_h, grid_w, d)[0, 1 - int(has_cls):]
        x = keras.layers.Normalization(axis=(1, 2), mean=table, variance=np.ones_like(table), invert=True,
                                       name="pos_embed")(x)
    elif layout["pos_embed"] == "learned":  # the trained table is the bias of a Dense on zeros, as the [CLS] token
        flat = keras.layers.Dense(num_tokens * d, kernel_initializer="zeros", name="learned_pos_embed")(zero)
        x = keras.layers.Add(name="add_pos_embed")([x, keras.layers.Reshape((num_tokens, d),
                                                                            name="learned_pos_table")(flat)])
    for i, rate in enumerate(layout["drop_path_rates"]):
        def drop(h, tag, rate=rate, i=i):
            if rate <= 0:
                return h
            return keras.layers.Dropout(rate, noise_shape=(None, 1, 1), name=f"block_{i}_drop_{tag}")(h)
        h = keras.layers.LayerNormalization(epsilon=_LN_EPSILON, name=f"block_{i}_norm1")(x)
        h = keras.layers.MultiHeadAttention(heads, d // heads, name=f"block_{i}_attn")(h, h)
        x = keras.layers.Add(name=f"block_{i}_add1")([x, drop(h, "attn")])
        h = keras.layers.LayerNormalization(epsilon=_LN_EPSILON, name=f"block_{i}_norm2")(x)
        h = keras.layers.Dense(layout["mlp_hidden"], activation="gelu", name=f"block_{i}_mlp_fc1")(h)
        h = keras.layers.Dense(d, name=f"block_{i}_mlp_fc2")(h)
        x = keras.layers.Add(name=f"block_{i}_add2")([x, drop(h, "mlp")])
    if has_cls:
        x = keras.layers.Cropping1D((0, n), name="cls_feature")(x)
        x = keras.layers.Flatten(name="cls_flatten")(x)
        outputs = keras.layers.LayerNormalization(epsilon=_LN_EPSILON, name="norm")(x)
    else:
        if layout["pooling"] == "gap_ln":
            x = keras.layers.LayerNormalization(epsilon=_LN_EPSILON, name="norm")(x)
        outputs = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    plain = keras.Model(inputs, outputs, name=name)
    _copy_weights(backbone, plain, to_plain=True)
    return plain


def load_keras_backbone(path, image_size=None):
    """A `backbone.keras` written by this exporter, as a tf_mocov3 ViT backbone (for fine-tuning and evaluation).

    Args:
        path: str, the `.keras` file.
        image_size: int or None; None keeps the exported size. Another size works (the position table is
            recomputed), as for every tf_mocov3 backbone.

    Returns:
        keras.Model from `tf_mocov3.models.vit.build_backbone`, with the exported weights.
    """
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"--pretrained={path} does not exist; pass the backbone.keras file that "
                                f"`python -m export.saved_model` wrote next to the SavedModel.")
    plain = keras.saving.load_model(path, compile=False)
    if _is_resnet_model(plain):
        backbone = resnet.build_resnet(_resnet_arch_of(plain), image_size or int(plain.input_shape[1]))
        backbone.set_weights(plain.get_weights())
        return backbone
    arch, overrides, layout = _arch_of(_layout_of_plain(plain))
    backbone = vit.build_backbone(arch, image_size or layout["image_size"],
                                  train_patch_embed=layout["train_patch_embed"], **overrides)
    _copy_weights(backbone, plain, to_plain=False)
    return backbone


def keras_backbone_config(path):
    """A minimal run config (model.arch, model.overrides, model.train_patch_embed, dataset.image_size) of a
    backbone.keras, for `PretrainedEncoder.config` when --pretrained is a .keras file. model.arch is the
    `vit.ARCHS` entry the file matches, with no overrides; otherwise the base arch with every size overridden."""
    import ml_collections  # pylint: disable=import-outside-toplevel

    plain = keras.saving.load_model(path, compile=False)
    if _is_resnet_model(plain):
        return ml_collections.ConfigDict({
            "model": {"arch": _resnet_arch_of(plain), "overrides": {}, "train_patch_embed": False},
            "dataset": {"image_size": int(plain.input_shape[1])}})
    arch, overrides, layout = _arch_of(_layout_of_plain(plain))
    return ml_collections.ConfigDict({
        "model": {"arch": arch, "overrides": overrides, "train_patch_embed": layout["train_patch_embed"]},
        "dataset": {"image_size": layout["image_size"]}})


def _arch_of(layout):
    """(arch, overrides, layout): the vit.ARCHS name and the overrides that build `layout`."""
    sizes = {"embed_dim": layout["embed_dim"], "depth": layout["depth"], "num_heads": layout["num_heads"],
             "mlp_ratio": layout["mlp_hidden"] / layout["embed_dim"], "patch_size": layout["patch_size"]}
    for name, entry in vit.ARCHS.items():
        if bool(entry["conv_stem"]) == layout["conv_stem"] and all(
                float(entry[k]) == float(v) for k, v in sizes.items()):
            overrides = {}
            break
    else:
        name = "vit_conv_small" if layout["conv_stem"] else "vit_small"
        overrides = dict(sizes)
        if layout["conv_stem"]:
            overrides.pop("patch_size")
    rate = max(layout["drop_path_rates"], default=0.0)
    if rate > 0:
        overrides["drop_path_rate"] = rate
    for key, default in (("pos_embed", "sincos"), ("pooling", "cls")):
        if layout[key] != default:
            overrides[key] = layout[key]
    return name, overrides, layout


def _is_resnet_model(model):
    names = {layer.name for layer in model.layers}
    return "conv1" in names and "block_0" in names and "patch_embed" not in names


def _resnet_arch_of(model):
    """The resnet.ARCHS name of a ResNet backbone (stages start at the blocks with a downsample shortcut)."""
    blocks = resnet.blocks_of(model)
    stages = []
    for block in blocks:
        if any(layer.name.endswith("_downsample_conv") for layer in block.layers) or not stages:
            stages.append(0)
        stages[-1] += 1
    width = int(model.get_layer("conv1").filters)
    for arch, entry in resnet.ARCHS.items():
        if tuple(entry["blocks"]) == tuple(stages) and entry["width"] == width:
            return arch
    raise ValueError(f"{model.name!r} is a ResNet with {stages} blocks per stage and width {width}, which no "
                     f"tf_mocov3 arch has ({', '.join(sorted(resnet.ARCHS))}); export a backbone built by "
                     f"tf_mocov3.models.backbones.build_backbone.")


def _blocks(model, pattern):
    found = {}
    for layer in model.layers:
        m = re.fullmatch(pattern, layer.name)
        if m:
            found[int(m.group(1))] = layer
    return [found[i] for i in sorted(found)]


def _layout_of_vit(backbone):
    patch = backbone.get_layer("patch_embed")
    blocks = _blocks(backbone, r"block_(\d+)")
    if not blocks:
        raise ValueError(f"Model {backbone.name!r} has no transformer blocks named block_0...; export a "
                         f"backbone built by tf_mocov3.models.vit.build_backbone.")
    conv_stem = isinstance(patch, vit.ConvStem)
    d = int(blocks[0].norm1.gamma.shape[0])
    return {"image_size": int(backbone.input_shape[1]), "embed_dim": d, "conv_stem": conv_stem,
            "patch_size": 16 if conv_stem else int(patch.kernel.shape[0]), "depth": len(blocks),
            "num_heads": int(blocks[0].num_heads), "mlp_hidden": int(blocks[0].fc1.units),
            "drop_path_rates": [float(b.drop_path_rate) for b in blocks],
            "train_patch_embed": bool(patch.trainable),
            "pos_embed": backbone.get_layer("cls_pos_embed").pos_embed_kind, "pooling": _pooling_of(backbone)}


def _pooling_of(model):
    names = {layer.name for layer in model.layers}
    if "pool" not in names:
        return "cls"
    return "gap_ln" if "norm" in names else "gap"


def _layout_of_plain(plain):
    names = {layer.name for layer in plain.layers}
    attn = _blocks(plain, r"block_(\d+)_attn")
    if "patch_embed" not in names or not attn:
        raise ValueError(f"{plain.name!r} is not a MoCo v3 backbone written by export.saved_model (it has no "
                         f"patch_embed / block_0_attn layers); pass a backbone.keras from the exporter.")
    conv_stem = "stem_conv_0" in names
    patch = plain.get_layer("patch_embed")
    rates = []
    for i in range(len(attn)):
        rate = 0.0
        if f"block_{i}_drop_attn" in names:
            rate = float(plain.get_layer(f"block_{i}_drop_attn").rate)
        rates.append(rate)
    pos_embed = "learned" if "learned_pos_embed" in names else "sincos" if "pos_embed" in names else "none"
    return {"image_size": int(plain.input_shape[1]),
            "embed_dim": int(plain.get_layer("block_0_norm1").gamma.shape[0]),
            "conv_stem": conv_stem, "patch_size": 16 if conv_stem else int(patch.kernel.shape[0]),
            "depth": len(attn), "num_heads": int(attn[0].num_heads),
            "mlp_hidden": int(plain.get_layer("block_0_mlp_fc1").units), "drop_path_rates": rates,
            "train_patch_embed": bool(patch.trainable), "pos_embed": pos_embed, "pooling": _pooling_of(plain)}


def _copy_weights(backbone, plain, *, to_plain):
    """Copies every weight between a tf_mocov3 backbone and its plain-Keras twin, in the direction asked."""
    pairs = []  # (vit variable, plain variable, vit->plain fn, plain->vit fn)

    def same(a, b):
        pairs.append((a, b, lambda v: v, lambda v: v))

    patch = backbone.get_layer("patch_embed")
    if isinstance(patch, vit.ConvStem):
        for i, (conv, bn) in enumerate(zip(patch.convs, patch.bns)):
            for a, b in zip(conv.weights + bn.weights,
                            plain.get_layer(f"stem_conv_{i}").weights + plain.get_layer(f"stem_bn_{i}").weights):
                same(a, b)
        for a, b in zip(patch.proj.weights, plain.get_layer("patch_embed").weights):
            same(a, b)
    else:
        for a, b in zip(patch.weights, plain.get_layer("patch_embed").weights):
            same(a, b)
    tokens = backbone.get_layer("cls_pos_embed")
    d = int(tokens.dim)
    if tokens.use_cls_token:
        pairs.append((tokens.cls_token, plain.get_layer("cls_token").bias,
                      lambda v: v.reshape(d), lambda v: v.reshape(1, 1, d)))
    if tokens.pos_embed_kind == "learned":
        pairs.append((tokens.pos_embed, plain.get_layer("learned_pos_embed").bias,
                      lambda v: v.reshape(-1), lambda v: v.reshape(1, -1, d)))
    for i, block in enumerate(_blocks(backbone, r"block_(\d+)")):
        heads = block.num_heads
        dh = d // heads
        for a, b in zip(block.norm1.weights, plain.get_layer(f"block_{i}_norm1").weights):
            same(a, b)
        for a, b in zip(block.norm2.weights, plain.get_layer(f"block_{i}_norm2").weights):
            same(a, b)
        for a, b in zip(block.fc1.weights, plain.get_layer(f"block_{i}_mlp_fc1").weights):
            same(a, b)
        for a, b in zip(block.fc2.weights, plain.get_layer(f"block_{i}_mlp_fc2").weights):
            same(a, b)
        mha = plain.get_layer(f"block_{i}_attn")
        parts = (mha._query_dense, mha._key_dense, mha._value_dense)  # pylint: disable=protected-access
        # Fused qkv columns are ordered (q|k|v, head, head_dim); MultiHeadAttention keeps [D, heads, head_dim].
        for j, dense in enumerate(parts):
            pairs.append((block.attn.qkv.kernel, dense.kernel, _qkv_slice(j, d, heads, dh, kernel=True), None))
            pairs.append((block.attn.qkv.bias, dense.bias, _qkv_slice(j, d, heads, dh, kernel=False), None))
        out = mha._output_dense  # pylint: disable=protected-access
        pairs.append((block.attn.proj.kernel, out.kernel, lambda v, h=heads, e=dh: v.reshape(h, e, -1),
                      lambda v: v.reshape(-1, v.shape[-1])))
        same(block.attn.proj.bias, out.bias)
    if tokens.use_cls_token or _pooling_of(backbone) == "gap_ln":
        for a, b in zip(backbone.get_layer("norm").weights, plain.get_layer("norm").weights):
            same(a, b)

    if to_plain:
        for a, b, forward, _ in pairs:
            b.assign(forward(np.asarray(a.numpy())))
        return
    fused = {}
    for a, b, _, backward in pairs:
        value = np.asarray(b.numpy())
        if backward is None:  # one third of a fused qkv weight
            fused.setdefault(id(a), (a, []))[1].append(value.reshape(value.shape[0], -1) if value.ndim == 3
                                                       else value.reshape(-1))
        else:
            a.assign(backward(value))
    for a, thirds in fused.values():
        a.assign(np.concatenate(thirds, axis=-1))


def _qkv_slice(j, d, heads, dh, *, kernel):
    if kernel:
        return lambda v: v[:, j * d:(j + 1) * d].reshape(-1, heads, dh)
    return lambda v: v[j * d:(j + 1) * d].reshape(heads, dh)
