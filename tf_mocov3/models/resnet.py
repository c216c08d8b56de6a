"""ResNet backbones for MoCo v3 (torchvision's ResNet-50, as the official `MoCo_ResNet` builds it).

The backbone maps normalised float32 NHWC images ``[B, S, S, 3]`` to the globally average-pooled feature
``[B, 2048]`` (torchvision's ``resnet50`` without its ``fc``, which MoCo replaces by the projector):

* bottleneck v1.5 (the stride sits on the 3x3 conv, as in torchvision), expansion 4, a 1x1 conv + BN shortcut on the
  first block of every stage;
* PyTorch's padding everywhere (explicit symmetric zero padding, then a "valid" conv / max-pool; Keras' "same"
  pads stride-2 layers asymmetrically, which would shift every feature map);
* synchronized BatchNorm with PyTorch's defaults (eps 1e-5, momentum 0.1 = Keras momentum 0.9), as
  ``SyncBatchNorm.convert_sync_batchnorm`` gives the official runs;
* torchvision's initialisation: convs kaiming-normal (fan_out, relu), BN gamma 1 and beta 0, and
  ``zero_init_residual=True`` (main_moco.py): the last BN gamma of every bottleneck starts at 0, so each residual
  branch starts as the identity.

Only standard Keras layers are used (each bottleneck is a small functional model named ``block_{i}``), so the
backbone saves to a ``.keras`` file that opens without this project, and the MoCo step's gradient-norm monitor
finds its first and last block. Weight names (checkpoints depend on them): ``conv1``, ``bn1`` (the stem), then in
block ``i`` (numbered over all stages, 0..15 for ResNet-50) ``block_{i}_conv{1,2,3}``, ``block_{i}_bn{1,2,3}``,
``block_{i}_downsample_conv``, ``block_{i}_downsample_bn``.

Example:

    backbone = build_resnet("resnet50")                 # [B, 224, 224, 3] -> [B, 2048]
    tiny = build_resnet("resnet_tiny", image_size=28)   # tests and the CPU demo -> [B, 512]
"""

import numbers

import keras

_BN_MOMENTUM = 0.9   # PyTorch momentum 0.1
_BN_EPSILON = 1e-5
EXPANSION = 4


def _conv_init():
    """torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu"), std = sqrt(2 / (k * k * out))."""
    return keras.initializers.VarianceScaling(scale=2.0, mode="fan_out", distribution="untruncated_normal")


def _bn(name, zero_gamma=False):
    return keras.layers.BatchNormalization(
        synchronized=True, momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON,
        gamma_initializer="zeros" if zero_gamma else "ones", beta_initializer="zeros", name=name)


def _conv(filters, kernel, stride, name):
    return keras.layers.Conv2D(filters, kernel, strides=stride, padding="valid", use_bias=False,
                               kernel_initializer=_conv_init(), name=name)


# === Layers ===


def _bottleneck(input_shape, planes, stride, downsample, zero_init_residual, name):
    """One torchvision Bottleneck as a functional model: [B, H, W, C] -> [B, H / stride, W / stride, 4 * planes]."""
    inputs = keras.Input(shape=input_shape, name=f"{name}_input")
    x = _conv(planes, 1, 1, f"{name}_conv1")(inputs)
    x = _bn(f"{name}_bn1")(x)
    x = keras.layers.ReLU(name=f"{name}_relu1")(x)
    x = keras.layers.ZeroPadding2D(1, name=f"{name}_pad2")(x)
    x = _conv(planes, 3, stride, f"{name}_conv2")(x)
    x = _bn(f"{name}_bn2")(x)
    x = keras.layers.ReLU(name=f"{name}_relu2")(x)
    x = _conv(planes * EXPANSION, 1, 1, f"{name}_conv3")(x)
    x = _bn(f"{name}_bn3", zero_gamma=zero_init_residual)(x)
    shortcut = inputs
    if downsample:
        shortcut = _conv(planes * EXPANSION, 1, stride, f"{name}_downsample_conv")(inputs)
        shortcut = _bn(f"{name}_downsample_bn")(shortcut)
    x = keras.layers.Add(name=f"{name}_add")([x, shortcut])
    outputs = keras.layers.ReLU(name=f"{name}_out")(x)
    return keras.Model(inputs, outputs, name=name)


# === Functional Model ===


def build_resnet(arch="resnet50", image_size=224, *, zero_init_residual=True, name="backbone"):
    """Builds a ResNet backbone: images ``[B, S, S, 3]`` -> pooled feature ``[B, 4 * width * 8]``.

    Args:
        arch: str, a key of ``ARCHS`` ("resnet50", or "resnet_tiny" for tests and the CPU demo).
        image_size: int, the square input size S (any size >= 32 works for ResNet-50: the pooling is global).
        zero_init_residual: bool, start the last BN gamma of every bottleneck at 0 (main_moco.py: True).
        name: str, the model name ("backbone" is what the train step expects).

    Returns:
        A functional ``keras.Model``. Layers: "pad1", "conv1", "bn1", "relu1", "pool_pad", "maxpool",
        "block_0" ... "block_{n-1}" (functional bottlenecks), "avgpool".

    Raises:
        ValueError: unknown arch or a bad image size.
    """
    entry = arch_entry(arch)
    if not isinstance(image_size, numbers.Integral) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}; set dataset.image_size "
                         f"(e.g. 224).")
    width, image_size = entry["width"], int(image_size)
    inputs = keras.Input(shape=(image_size, image_size, 3), name="images")
    x = keras.layers.ZeroPadding2D(3, name="pad1")(inputs)
    x = _conv(width, 7, 2, "conv1")(x)
    x = _bn("bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    # PyTorch pads the max-pool with -inf; after the ReLU every value is >= 0 and every window holds at least
    # one real pixel, so zero padding gives the same maximum.
    x = keras.layers.ZeroPadding2D(1, name="pool_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="valid", name="maxpool")(x)
    channels, index = width, 0
    for stage, blocks in enumerate(entry["blocks"]):
        planes = width * 2 ** stage
        for b in range(blocks):
            stride = 2 if (stage > 0 and b == 0) else 1
            downsample = b == 0 and (stride != 1 or channels != planes * EXPANSION)
            block = _bottleneck(tuple(x.shape[1:]), planes, stride, downsample, zero_init_residual,
                                f"block_{index}")
            x = block(x)
            channels = planes * EXPANSION
            index += 1
    outputs = keras.layers.GlobalAveragePooling2D(name="avgpool")(x)
    return keras.Model(inputs, outputs, name=name)


def blocks_of(backbone):
    """The bottleneck models of a ResNet backbone, in order (block_0, block_1, ...)."""
    blocks = {int(layer.name.split("_")[1]): layer for layer in backbone.layers
              if layer.name.startswith("block_") and layer.name.split("_")[1].isdigit()}
    return [blocks[i] for i in sorted(blocks)]


def stage_of_blocks(arch):
    """[(stage, index in stage)] of every block of `arch`, in block order (torchvision's layer{stage+1}.{b})."""
    return [(stage, b) for stage, n in enumerate(arch_entry(arch)["blocks"]) for b in range(n)]


def feature_dim(arch):
    """Width of the pooled feature of `arch` (2048 for ResNet-50)."""
    return arch_entry(arch)["width"] * 8 * EXPANSION


def arch_entry(arch):
    if arch not in ARCHS:
        raise ValueError(f"Unknown ResNet arch {arch!r}; choose one of: {', '.join(sorted(ARCHS))}.")
    return ARCHS[arch]


# === Config ===

ARCHS = {
    # torchvision resnet50: Bottleneck, [3, 4, 6, 3], width 64 -> 2048 features.
    "resnet50": {"blocks": (3, 4, 6, 3), "width": 64},
    # Tiny model for tests and the CPU demo: one bottleneck per stage, width 16 -> 512 features.
    "resnet_tiny": {"blocks": (1, 1, 1, 1), "width": 16},
}
