"""MoCo v3 projector and predictor MLPs (the official ``_build_mlp``).

Each layer is a Dense without bias (PyTorch's default init: uniform with
bound ``1 / sqrt(fan_in)``, i.e. ``VarianceScaling(1/3, "fan_in", "uniform")``).
Hidden layers are followed by BatchNorm + ReLU; the last layer, when
``last_bn``, by a BatchNorm without scale and centre (SimCLR's design).
BatchNorm is synchronized across replicas with PyTorch's defaults
(momentum 0.1 = Keras momentum 0.9, epsilon 1e-5).

MoCo_ViT uses a 3-layer projector and a predictor ending in that BN; MoCo_ResNet a 2-layer projector and a
predictor without the last BN (models/backbones.head_layout chooses).

Layer names: ``linear_{i}``, ``bn_{i}``, ``relu_{i}`` for i = 0..num_layers-1.
"""

import numbers

import keras

_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5


def torch_linear_initializer():
    """PyTorch's default Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return keras.initializers.VarianceScaling(
        scale=1.0 / 3.0, mode="fan_in", distribution="uniform"
    )


def _batch_norm(name, affine=True):
    return keras.layers.BatchNormalization(
        synchronized=True,
        momentum=_BN_MOMENTUM,
        epsilon=_BN_EPSILON,
        center=affine,
        scale=affine,
        name=name,
    )


def build_mlp(num_layers, input_dim, mlp_dim, output_dim, last_bn=True, name="mlp", *, hidden_bn=True):
    """Builds the MoCo v3 MLP: ``[B, input_dim] -> [B, output_dim]``.

    Args:
        num_layers: int >= 1, number of Dense layers.
        input_dim: int, width of the input feature.
        mlp_dim: int, width of the hidden layers.
        output_dim: int, width of the output.
        last_bn: bool, follow the last Dense with BatchNorm(center=False, scale=False).
        name: str, the model name.
        hidden_bn: bool, BatchNorm between each hidden Dense and its ReLU (False: Dense -> ReLU; the paper's
            "no BN in the heads" ablation, Table 7).

    Returns:
        A functional ``keras.Model``.
    """
    for key, value in (("num_layers", num_layers), ("input_dim", input_dim),
                       ("mlp_dim", mlp_dim), ("output_dim", output_dim)):
        if not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(
                f"build_mlp needs a positive integer {key}, got {value!r}; fix the "
                f"model config (e.g. model.mlp_dim=4096, model.moco_dim=256)."
            )
    inputs = keras.Input(shape=(input_dim,), name="features")
    x = inputs
    for i in range(num_layers):
        last = i == num_layers - 1
        x = keras.layers.Dense(
            output_dim if last else mlp_dim,
            use_bias=False,
            kernel_initializer=torch_linear_initializer(),
            name=f"linear_{i}",
        )(x)
        if not last:
            if hidden_bn:
                x = _batch_norm(f"bn_{i}")(x)
            x = keras.layers.ReLU(name=f"relu_{i}")(x)
        elif last_bn:
            x = _batch_norm(f"bn_{i}", affine=False)(x)
    return keras.Model(inputs, x, name=name)


def build_projector(input_dim, mlp_dim=4096, dim=256, name="projector", *, num_layers=3, last_bn=True,
                    hidden_bn=True):
    """The projector, last BN without affine: ViT 3 layers (D -> mlp_dim -> mlp_dim -> dim); ResNet
    (MoCo_ResNet, ``num_layers=2``) 2048 -> mlp_dim -> dim. ``last_bn`` / ``hidden_bn`` False drop those BNs
    (BYOL's heads, the BN ablation; models/moco.head_settings chooses)."""
    return build_mlp(num_layers, input_dim, mlp_dim, dim, last_bn=last_bn, name=name, hidden_bn=hidden_bn)


def build_predictor(dim=256, mlp_dim=4096, name="predictor", *, last_bn=True, hidden_bn=True):
    """The predictor, 2 layers dim -> mlp_dim -> dim: ViT ends in a BN without affine; ResNet (MoCo_ResNet,
    ``last_bn=False``) ends in the Dense."""
    return build_mlp(2, dim, mlp_dim, dim, last_bn=last_bn, name=name, hidden_bn=hidden_bn)
