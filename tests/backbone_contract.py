"""The contract every backbone of the registry (tf_mocov3.models.backbones.ARCHS) keeps, one helper for all of them
(as keras-hub runs one test over every model): tests/test_backbones.py runs each check below for each arch (archs
whose small models are the same model share one run of the checks on it: `small_model_groups`).

* build: `backbones.build_backbone` gives images [B, S, S, 3] -> features [B, D], D the arch's feature width;
* parameters: the count of the full-size arch equals the reference figure (torchvision's or DeiT's published count
  for the archs they publish, less what those models have and ours has not; the architecture's formula otherwise);
* a `.keras` file round trip, a `tf.train.Checkpoint` round trip, and a mixed-precision (bfloat16) forward pass,
  on the arch's small model (`build_small`: a ViT's own patch size, heads and block type in one narrow block; a
  ResNet's own stages, each with its kinds of bottleneck, narrow).

Counting the full-size ViTs does not build them: one block is built at the arch's full width and the count is that
model plus (depth - 1) times its block (every block has the same weights). Built whole on the 2-core development
machine, ViT-L took 4.5 s (1.9 GB resident) and ViT-H 17 s (4.6 GB); one block of ViT-H takes 0.1 s.

A ResNet builder takes no size overrides, so its small model is built with its registry entry narrowed for the time
of the build (`narrowed`): every stage keeps at most two bottlenecks (the first, with the stage's stride and projection
shortcut, and one with an identity shortcut) at width SMALL_RESNET_WIDTH. The build, .keras, checkpoint and
bfloat16 checks took 6.8 CPU seconds on ResNet-50 whole (four builds of its 16 nested block models, 94 MB written and
read) and take 2.2 s on its small model (8 blocks of width 16).
"""

import collections
import contextlib
import functools
import json
from unittest import mock

import keras
import numpy as np
import tensorflow as tf

from tf_mocov3.models import backbones
from tf_mocov3.models import resnet
from tf_mocov3.models import vit

# Parameter counts as their sources publish them. Each model has an ImageNet classifier (`classes` outputs) that our
# backbone has not; a ViT's figure also counts its learned position table, (1 + (image_size / patch)^2) x D entries,
# where ours has a fixed sin-cos constant. BN moving statistics are buffers in PyTorch, not parameters.
Published = collections.namedtuple("Published", "count source classes image_size")
PUBLISHED = {
    # DeiT-S = timm vit_small_patch16_224: 22.05M. DeiT-S has 6 heads, MoCo v3's ViT-S 12: the count is the same.
    "vit_small": Published(22_050_664, "DeiT-S (timm vit_small_patch16_224)", 1000, 224),
    "vit_base": Published(86_567_656, "torchvision vit_b_16 num_params", 1000, 224),
    "vit_large": Published(304_326_632, "torchvision vit_l_16 num_params", 1000, 224),
    "vit_huge": Published(633_470_440, "torchvision vit_h_14 num_params (IMAGENET1K_SWAG_E2E_V1, 518 px)", 1000, 518),
    "resnet50": Published(25_557_032, "torchvision resnet50 num_params", 1000, 224),
}
# BatchNorm moving statistics (mean and variance) of ResNet-50: SPEC.md.
RESNET50_MOVING_STATISTICS = 53_120
# The width D of the feature of each arch: SPEC.md's table, torchvision's 2048, and the tiny models' docstrings.
FEATURE_WIDTH = {"vit_small": 384, "vit_base": 768, "vit_large": 1024, "vit_huge": 1280, "vit_conv_small": 384,
                 "vit_conv_base": 768, "vit_micro": 128, "resnet50": 2048, "resnet_tiny": 512}


# === Reference counts ===


def vit_parameters(depth, dim, patch, mlp_ratio=4, conv_stem=False):
    """Parameters of the official vits.py backbone without its head and position table (ours is a constant).

    Returns (parameters, BN moving statistics): the patch projection (a p x p conv with bias, or the conv stem's four
    3x3 convs without bias, each with a BN, then a 1x1 conv with bias), the [CLS] token, `depth` pre-norm blocks and
    the final LayerNorm.
    """
    hidden = int(mlp_ratio * dim)
    block = (2 * 2 * dim                    # norm1, norm2 (gamma, beta)
             + dim * 3 * dim + 3 * dim      # fused qkv with bias
             + dim * dim + dim              # proj
             + dim * hidden + hidden        # mlp fc1
             + hidden * dim + dim)          # mlp fc2
    moving = 0
    if conv_stem:
        stem, channels_in = 0, 3
        for channels in (dim // 8, dim // 4, dim // 2, dim):
            stem += 9 * channels_in * channels + 2 * channels   # 3x3 conv, BN gamma and beta
            moving += 2 * channels
            channels_in = channels
        stem += dim * dim + dim                                  # 1x1 conv with bias
    else:
        stem = 3 * patch * patch * dim + dim
    return stem + dim + depth * block + 2 * dim, moving


def resnet_parameters(blocks, width):
    """Parameters of a torchvision bottleneck ResNet (expansion 4, convs without bias) without its fc.

    Returns (parameters, BN moving statistics): the 7x7 stem conv and its BN, then per bottleneck three convs (1x1,
    3x3, 1x1) with a BN each, and on every stage's first block a 1x1 projection shortcut with its BN.
    """
    params, moving = 7 * 7 * 3 * width + 2 * width, 2 * width
    channels = width
    for stage, n in enumerate(blocks):
        planes = width * 2 ** stage
        for b in range(n):
            convs = channels * planes + 9 * planes * planes + planes * 4 * planes
            bn_channels = planes + planes + 4 * planes
            if b == 0:
                convs += channels * 4 * planes
                bn_channels += 4 * planes
            params += convs + 2 * bn_channels
            moving += 2 * bn_channels
            channels = 4 * planes
    return params, moving


def formula_counts(arch):
    """(parameters, BN moving statistics) of `arch` at full size, from the architecture's formula."""
    if backbones.is_resnet(arch):
        entry = resnet.ARCHS[arch]
        return resnet_parameters(entry["blocks"], entry["width"])
    a = vit.ARCHS[arch]
    return vit_parameters(a["depth"], a["embed_dim"], a["patch_size"], a["mlp_ratio"], a["conv_stem"])


def published_backbone_parameters(arch):
    """The published count of `arch` less its classifier and (ViT) its learned position table; None if unpublished."""
    if arch not in PUBLISHED:
        return None
    ref = PUBLISHED[arch]
    width = FEATURE_WIDTH[arch]
    count = ref.count - (width * ref.classes + ref.classes)
    if backbones.is_vit(arch):
        tokens = 1 + (ref.image_size // vit.ARCHS[arch]["patch_size"]) ** 2
        count -= tokens * width
    return count


# === Measured counts ===


def weight_counts(model):
    """{"params", "trainable", "moving"}: entries of the model's weights, of its trainable ones, of its BN moving
    statistics (the only weights that are not parameters)."""
    moving = [w for w in model.weights if "moving_" in w.path]
    return {"params": _size(model.weights) - _size(moving), "trainable": _size(model.trainable_weights),
            "moving": _size(moving)}


def _size(weights):
    return sum(int(np.prod(w.shape)) for w in weights)


@functools.lru_cache(maxsize=None)
def full_resnet(arch):
    """The ResNet `arch` at full size and 224 px (torchvision's stage shapes), seed 0, built once per process:
    tests share it (ResNet-50 takes most of a second to build) and must not change it."""
    keras.utils.set_random_seed(0)
    return backbones.build_backbone(arch, 224)


def full_size_counts(arch):
    """weight_counts of `arch` at full size and its feature width, without building a full-depth ViT.

    A ViT is built with one block at its full width (at the smallest image size: the weights do not depend on it);
    its count plus (depth - 1) times that block's is the full model's. A ResNet is built whole (full_resnet).
    """
    if backbones.is_resnet(arch):
        model = full_resnet(arch)
        return weight_counts(model), model.output_shape[-1]
    entry = vit.ARCHS[arch]
    model = backbones.build_backbone(arch, 16 if entry["conv_stem"] else entry["patch_size"], depth=1)
    counts, block = weight_counts(model), weight_counts(model.get_layer("block_0"))
    return {k: counts[k] + (entry["depth"] - 1) * block[k] for k in counts}, model.output_shape[-1]


# === The small model every other check runs on ===

SMALL_RESNET_WIDTH = 16


@contextlib.contextmanager
def narrowed(arch):
    """While in this context a ResNet has at most two bottlenecks per stage and at most SMALL_RESNET_WIDTH (the
    same stages and kinds of block); any other arch, and a ResNet already that small (resnet_tiny), is left as is."""
    entry = resnet.ARCHS.get(arch) if backbones.is_resnet(arch) else None
    small = entry and {"blocks": tuple(min(n, 2) for n in entry["blocks"]),
                       "width": min(entry["width"], SMALL_RESNET_WIDTH)}
    if small and small != entry:
        with mock.patch.dict(resnet.ARCHS, {arch: small}):
            yield
    else:
        yield


def small_variant(arch):
    """(image_size, overrides) of the small model of `arch` for the save / checkpoint / precision checks.

    A ResNet has no size overrides: 32 px (its size: `narrowed`). vit_micro is tiny already: itself at 32 px, with
    stochastic depth so that a saved file must keep the per-block rates. Other ViTs: one block with the arch's own
    heads (8 wide each) and its own patch size or conv stem, at two patches across.
    """
    if backbones.is_resnet(arch):
        return 32, {}
    if arch == "vit_micro":
        return 32, {"drop_path_rate": 0.1}
    entry = vit.ARCHS[arch]
    heads = entry["num_heads"]
    return 2 * (16 if entry["conv_stem"] else entry["patch_size"]), {"depth": 1, "embed_dim": 8 * heads,
                                                                      "num_heads": heads}


def build_small(arch, seed=0):
    """The small model of `arch` (small_variant, narrowed), with the global dtype policy in force."""
    keras.utils.set_random_seed(seed)
    image_size, overrides = small_variant(arch)
    with narrowed(arch):
        return backbones.build_backbone(arch, image_size, **overrides)


def small_model_groups():
    """The archs of the registry grouped by their small model: archs whose small models resolve to the same
    configuration (vit_small and vit_base: one block of 12 heads on 16 px patches) are one model, checked once."""
    groups = {}
    for arch in backbones.ARCHS:
        image_size, overrides = small_variant(arch)
        with narrowed(arch):
            resolved = backbones.resolve_config(arch, image_size, overrides)
        key = (backbones.is_resnet(arch), image_size, json.dumps(resolved, sort_keys=True))
        groups.setdefault(key, []).append(arch)
    return list(groups.values())


def small_width(arch):
    """backbones.feature_dim of the small model of `arch`."""
    with narrowed(arch):
        return backbones.feature_dim(arch, small_variant(arch)[1])


def images(model, batch=2, seed=0):
    size = model.input_shape[1]
    return np.random.default_rng(seed).standard_normal((batch, size, size, 3)).astype("float32")


# === The checks ===


def check_build(arch, model):
    """The small model maps [B, S, S, 3] to finite float32 [B, D] with D = backbones.feature_dim of its options."""
    width = small_width(arch)
    assert model.output_shape == (None, width)
    out = model(images(model), training=False)
    assert out.shape == (2, width) and out.dtype == "float32"
    assert np.all(np.isfinite(out))


def check_parameter_count(arch):
    """The full-size arch has the reference's parameters: the published figure where there is one (and the formula
    agrees with it), else the formula; its BN statistics are the formula's, and its only non-trainable parameter is
    the frozen patch projection of a plain ViT."""
    counts, width = full_size_counts(arch)
    params, moving = formula_counts(arch)
    assert width == FEATURE_WIDTH[arch] == backbones.feature_dim(arch)
    published = published_backbone_parameters(arch)
    if published is not None:
        assert params == published, f"the formula gives {params:,}, {PUBLISHED[arch].source} {published:,}"
    assert (counts["params"], counts["moving"]) == (params, moving)
    frozen = 0
    if backbones.is_vit(arch) and not vit.ARCHS[arch]["conv_stem"]:
        patch = vit.ARCHS[arch]["patch_size"]
        frozen = 3 * patch * patch * width + width
    assert counts["trainable"] == params - frozen
    return counts


def check_keras_file(model, path):
    """A `.keras` file of the model loads back (no custom_objects) with the same config, weights (names, values,
    trainable flags) and outputs."""
    model.save(path)
    loaded = keras.saving.load_model(path)
    # Compared as JSON: a loaded config holds lists where the built one holds tuples.
    assert json.loads(loaded.to_json()) == json.loads(model.to_json())
    assert [(w.path, w.trainable) for w in loaded.weights] == [(w.path, w.trainable) for w in model.weights]
    assert [(layer.name, layer.trainable) for layer in loaded.layers] == [(layer.name, layer.trainable)
                                                                           for layer in model.layers]
    for a, b in zip(loaded.weights, model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    x = images(model)
    # The same graph on the same weights and inputs: the same float32 operations in the same order.
    np.testing.assert_array_equal(loaded(x, training=False), model(x, training=False))
    return loaded


def check_checkpoint(model, fresh, prefix):
    """Every weight reaches tf.train.Checkpoint, and a checkpoint of `model` restored into `fresh` (the same arch
    built with another seed) consumes every saved value and gives `model`'s weights and outputs back."""
    reachable = {id(obj) for obj in tf.train.TrackableView(model).descendants()}
    assert [w.path for w in model.weights if id(w) not in reachable] == []
    path = tf.train.Checkpoint(model=model).write(prefix)
    saved = [name for name, _ in tf.train.list_variables(path)
             if name.endswith("VARIABLE_VALUE") and not name.startswith("save_counter")]
    assert len(saved) == len(model.weights)
    assert any(np.any(a.numpy() != b.numpy()) for a, b in zip(fresh.weights, model.weights))
    tf.train.Checkpoint(model=fresh).read(path).assert_consumed()
    for a, b in zip(fresh.weights, model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    x = images(model)
    np.testing.assert_array_equal(fresh(x, training=False), model(x, training=False))


def check_mixed_precision(arch, model):
    """Built under the mixed_bfloat16 policy with `model`'s weights: the weights stay float32, the feature comes out
    bfloat16, finite, and close to the float32 model's."""
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        mixed = build_small(arch)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    mixed.set_weights(model.get_weights())
    assert all(w.dtype == "float32" for w in mixed.weights)
    x = images(model, batch=4)
    out = mixed(x, training=False)
    assert out.dtype == "bfloat16"
    out = tf.cast(out, tf.float32).numpy()
    assert np.all(np.isfinite(out))
    reference = model(x, training=False).numpy()
    # bfloat16 keeps 8 significant bits (inputs and products rounded by up to 0.4 %, sums in float32): the small
    # models land 0.5-0.8 % of their largest feature away from float32. 5 % of it (0.15 for vit_micro's features of
    # unit variance, the bound this test had before) leaves room for other CPUs' kernels. It catches a model that
    # breaks under the policy (NaN, overflow, a layer left out of the weights); which op runs in which dtype is
    # tests/test_precision.py's business (at these depths a bfloat16 residual stream is still within 0.8 %).
    np.testing.assert_allclose(out, reference, atol=0.05 * np.abs(reference).max())
    return out, reference
