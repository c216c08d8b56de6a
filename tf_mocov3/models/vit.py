"""Vision Transformer backbones for MoCo v3 (ViT and conv-stem ViT).

The backbone maps normalised float32 NHWC images ``[B, S, S, 3]`` to the
[CLS] feature ``[B, D]`` after the final LayerNorm, following the official
``vits.py`` of facebookresearch/moco-v3:

* pre-norm transformer blocks (LayerNorm eps 1e-6, fused qkv with bias,
  MLP ratio 4 with exact erf GELU), no dropout;
* a fixed 2-D sine-cosine position embedding that is never trained (it is a
  constant, not a variable, recomputed from the image size so the same
  weights run at any resolution divisible by the patch size);
* a random patch projection that is frozen by default (the paper's
  stability trick), or a trained convolutional stem (``vit_conv_*``);
* the official initialisation: xavier-uniform Dense kernels with zero bias,
  qkv bound ``sqrt(6 / (D + D))``, [CLS] ~ N(0, 1e-6), patch conv bound
  ``sqrt(6 / (3 p^2 + D))``.

Weights are resolution-independent: position embeddings are constants, so a
backbone built at 224 px can load the weights of one built at 28 px (same arch).

Example:

    backbone = build_backbone("vit_small")            # [B, 224, 224, 3] -> [B, 384]
    micro = build_backbone("vit_micro", image_size=28)  # the CPU demo (Fashion-MNIST at 28 px)
"""

import math

import keras
from keras import ops
import numpy as np

from tf_mocov3.models import custom_gradients

_PACKAGE = "tf_mocov3"
_LN_EPSILON = 1e-6
# The paper's ablations (Tables 5 and 6): the position embedding, and how the feature is read from the tokens.
POS_EMBEDS = ("sincos", "learned", "none")
POOLINGS = ("cls", "gap_ln", "gap")


def sincos_2d_position_embedding(grid_h, grid_w, dim, temperature=10000.0):
    """Fixed 2-D sine-cosine position embedding of MoCo v3, with a [CLS] slot.

    With ``d = dim // 4`` and ``omega_i = 1 / temperature**(i / d)`` for
    ``i = 0..d-1``, the patch token at grid row ``r`` and column ``c``
    (tokens in row-major order, token index ``1 + r * grid_w + c``) gets

        [sin(r * omega), cos(r * omega), sin(c * omega), cos(c * omega)]

    and the [CLS] slot (index 0) gets zeros.

    Why the ROW index comes first: the official ``vits.py`` builds
    ``grid_w, grid_h = torch.meshgrid(arange(w), arange(h))`` (indexing
    'ij'), so its tensor named ``grid_w`` varies along the first axis and
    after flattening (row-major, like the patch tokens) holds the token's
    row index; ``out_w`` therefore encodes rows and ``out_h`` columns, and it
    concatenates ``[sin(out_w), cos(out_w), sin(out_h), cos(out_h)]``. For
    square grids (every official configuration) this function reproduces the
    official table exactly. For non-square grids the official flattening
    would not line up with the token order; here the first half always
    encodes the row and the second half the column.

    Args:
        grid_h: int, number of patch rows.
        grid_w: int, number of patch columns.
        dim: int, embedding width; must be divisible by 4.
        temperature: float, the base of the frequencies (10000 as in vits.py).

    Returns:
        float32 numpy array of shape ``[1, 1 + grid_h * grid_w, dim]``.
    """
    if dim % 4 != 0:
        raise ValueError(
            f"The 2-D sin-cos position embedding needs a width divisible by 4, "
            f"got {dim}; choose an embed_dim that is a multiple of 4."
        )
    d = dim // 4
    omega = 1.0 / (temperature ** (np.arange(d, dtype=np.float64) / d))
    rows, cols = np.meshgrid(
        np.arange(grid_h, dtype=np.float64),
        np.arange(grid_w, dtype=np.float64),
        indexing="ij",
    )
    out_r = rows.reshape(-1, 1) * omega[None, :]
    out_c = cols.reshape(-1, 1) * omega[None, :]
    patches = np.concatenate(
        [np.sin(out_r), np.cos(out_r), np.sin(out_c), np.cos(out_c)], axis=1
    )
    table = np.concatenate([np.zeros((1, dim)), patches], axis=0)
    return table[None].astype(np.float32)


def _uniform(bound):
    return keras.initializers.RandomUniform(minval=-bound, maxval=bound)


# === Layers ===


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ClassTokenPositionEmbedding(keras.layers.Layer):
    """Flattens the patch grid, prepends [CLS] and adds the fixed position table.

    The [CLS] token is a trainable weight named ``cls_token`` (~ N(0, 1e-6)).
    By default (pre-training) the sin-cos table is a constant recomputed in
    ``build`` from the grid shape, so it is never a variable (never trained,
    never decayed, never saved) and any resolution divisible by the patch size
    works. With ``train_pos_embed=True`` (fine-tuning, as DeiT loads the
    converted table into its trainable ``pos_embed``) the table is a trainable
    weight named ``pos_embed`` [1, 1 + grid_h * grid_w, D], initialised to the
    sin-cos table of this grid (a fine-tuning run may then assign another
    starting value, e.g. the pre-training table interpolated).

    Args:
        cls_init_std: float, standard deviation of the [CLS] initialisation.
        train_pos_embed: bool, make the position table a trainable weight.

    Input: ``[B, grid_h, grid_w, D]``. Output: ``[B, 1 + grid_h * grid_w, D]``.
    """

    def __init__(self, cls_init_std=1e-6, train_pos_embed=False, pos_embed="sincos", cls_token=True, **kwargs):
        super().__init__(**kwargs)
        if pos_embed not in POS_EMBEDS:
            raise ValueError(f"pos_embed={pos_embed!r} is unknown; choose one of {', '.join(POS_EMBEDS)}.")
        self.cls_init_std = cls_init_std
        self.pos_embed_kind = pos_embed
        self.use_cls_token = bool(cls_token)
        # A trainable table: the fine-tuning switch on the sin-cos table, or the learned ablation (always trained).
        self.train_pos_embed = (bool(train_pos_embed) and pos_embed == "sincos") or pos_embed == "learned"

    def build(self, input_shape):
        _, grid_h, grid_w, dim = input_shape
        if grid_h is None or grid_w is None:
            raise ValueError(
                "The ViT backbone needs a static image size to build its position "
                "embedding; pass image_size to build_backbone."
            )
        self.grid_h, self.grid_w, self.dim = int(grid_h), int(grid_w), int(dim)
        table = sincos_2d_position_embedding(self.grid_h, self.grid_w, self.dim)
        if not self.use_cls_token:
            table = table[:, 1:]  # no [CLS] slot
        self._pos_embed = table if self.pos_embed_kind == "sincos" else None
        if self.use_cls_token:
            self.cls_token = self.add_weight(
                name="cls_token",
                shape=(1, 1, self.dim),
                initializer=keras.initializers.RandomNormal(stddev=self.cls_init_std),
                trainable=True,
            )
        if self.train_pos_embed:
            # sincos (fine-tuning): starts at the table. learned (ablation): timm's trunc_normal_(std=.02), whose
            # bounds a=-2, b=2 are absolute (+-100 std), i.e. N(0, 0.02); Keras' TruncatedNormal would cut at 2 std.
            initializer = (keras.initializers.Constant(table) if self.pos_embed_kind == "sincos"
                           else keras.initializers.RandomNormal(stddev=0.02))
            self.pos_embed = self.add_weight(
                name="pos_embed",
                shape=table.shape,
                initializer=initializer,
                trainable=True,
            )

    def call(self, inputs):
        batch = ops.shape(inputs)[0]
        num_patches = self.grid_h * self.grid_w
        tokens = ops.reshape(inputs, (-1, num_patches, self.dim))
        if self.use_cls_token:
            cls = ops.cast(self.cls_token, tokens.dtype)
            cls = ops.broadcast_to(cls, (batch, 1, self.dim))
            tokens = ops.concatenate([cls, tokens], axis=1)
        if self.train_pos_embed:
            pos = ops.cast(self.pos_embed, tokens.dtype)
        elif self.pos_embed_kind == "sincos":
            pos = ops.convert_to_tensor(self._pos_embed, dtype=tokens.dtype)
        else:  # "none": the tokens carry no position at all
            return tokens
        return tokens + pos

    def compute_output_shape(self, input_shape):
        _, grid_h, grid_w, dim = input_shape
        return (input_shape[0], int(self.use_cls_token) + grid_h * grid_w, dim)

    def get_config(self):
        config = super().get_config()
        config.update({"cls_init_std": self.cls_init_std})
        # Only when set: the default layer's config stays what it was.
        if self.pos_embed_kind != "sincos":
            config["pos_embed"] = self.pos_embed_kind
        elif self.train_pos_embed:
            config["train_pos_embed"] = True
        if not self.use_cls_token:
            config["cls_token"] = False
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MultiHeadSelfAttention(keras.layers.Layer):
    """timm-style self-attention: one fused qkv Dense(3D) with bias, then proj.

    Attention is two batched matmuls on ``[B, heads, N, D / heads]``; the
    softmax runs in float32 under mixed precision. qkv is initialised uniform
    with bound ``sqrt(6 / (D + D))`` (Q, K, V as three D x D matrices), proj
    xavier-uniform, biases zero.

    Args:
        num_heads: int, number of attention heads; must divide the width.
    """

    def __init__(self, num_heads, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads

    def build(self, input_shape):
        dim = int(input_shape[-1])
        if dim % self.num_heads != 0:
            raise ValueError(
                f"Attention width {dim} is not divisible by num_heads="
                f"{self.num_heads}; choose a num_heads that divides embed_dim."
            )
        self.dim = dim
        self.head_dim = dim // self.num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = keras.layers.Dense(
            3 * dim,
            kernel_initializer=_uniform(math.sqrt(6.0 / (dim + dim))),
            bias_initializer="zeros",
            dtype=self.dtype_policy,
            name="qkv",
        )
        self.proj = keras.layers.Dense(
            dim,
            kernel_initializer="glorot_uniform",
            bias_initializer="zeros",
            dtype=self.dtype_policy,
            name="proj",
        )
        self.qkv.build(input_shape)
        self.proj.build(input_shape)

    def call(self, inputs):
        return self.proj(self._attention_core(self.qkv(inputs)))

    def _attention_core(self, qkv):
        """[B, N, 3D] fused qkv -> [B, N, D]; hand-written gradient (tf_mocov3.models.custom_gradients)."""
        return custom_gradients.attention_core(qkv, self.num_heads)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"num_heads": self.num_heads})
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LayerNorm(keras.layers.LayerNormalization):
    """keras.layers.LayerNormalization (same weights, config and float32 compute) over the
    last axis, with the hand-written gradient of tf_mocov3.models.custom_gradients.layer_norm."""

    def call(self, inputs):
        last_axis = list(self.axis) in ([-1], [len(inputs.shape) - 1])
        if self.rms_scaling or not (self.center and self.scale and last_axis):
            return super().call(inputs)
        outputs = custom_gradients.layer_norm(inputs, self.gamma, self.beta, self.epsilon)
        return ops.cast(outputs, self.compute_dtype)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DropPath(keras.layers.Layer):
    """Stochastic depth per sample (drops a residual branch); identity at inference.

    Args:
        rate: float in [0, 1), probability of dropping the branch for a sample.
        seed: optional int seed for the layer's random generator.
    """

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(
                f"DropPath rate must be in [0, 1), got {rate}; pass a drop_path_rate "
                f"such as 0.1."
            )
        self.rate = rate
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if rate > 0 else None

    def call(self, inputs, training=False):
        if not training or self.rate == 0.0:
            return inputs
        keep = 1.0 - self.rate
        shape = (ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
        noise = keras.random.uniform(shape, seed=self.seed_generator, dtype="float32")
        mask = ops.floor(keep + noise) / keep
        return inputs * ops.cast(mask, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"rate": self.rate, "seed": self.seed})
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TransformerBlock(keras.layers.Layer):
    """Pre-norm ViT block: x + attn(norm1(x)), then x + mlp(norm2(x)).

    The MLP is Dense(mlp_ratio * D) -> exact (erf) GELU -> Dense(D), both
    xavier-uniform with zero bias. LayerNorms use eps 1e-6 and compute in
    float32. No dropout; optional stochastic depth (``drop_path_rate``).

    Mixed precision as PyTorch autocast runs the official model: with ``dtype="float32"`` and a mixed
    ``sublayer_dtype`` (build_backbone does this under a mixed global policy), the residual stream x and the adds
    stay float32, the LayerNorms read it in float32, and attention and the MLP compute in the mixed policy's dtype.

    Args:
        num_heads: int, attention heads.
        mlp_ratio: float, hidden width of the MLP relative to D.
        drop_path_rate: float, stochastic-depth rate of both residual branches.
        sublayer_dtype: dtype policy (name) of the norms, attention and MLP; None = the block's own.
    """

    def __init__(self, num_heads, mlp_ratio=4.0, drop_path_rate=0.0, sublayer_dtype=None, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.drop_path_rate = drop_path_rate
        self.sublayer_dtype = sublayer_dtype

    def build(self, input_shape):
        dim = int(input_shape[-1])
        hidden = int(dim * self.mlp_ratio)
        policy = self.sublayer_dtype or self.dtype_policy
        self.norm1 = LayerNorm(
            epsilon=_LN_EPSILON, dtype=policy, name="norm1"
        )
        self.attn = MultiHeadSelfAttention(self.num_heads, dtype=policy, name="attn")
        self.norm2 = LayerNorm(
            epsilon=_LN_EPSILON, dtype=policy, name="norm2"
        )
        self.fc1 = keras.layers.Dense(
            hidden, kernel_initializer="glorot_uniform", dtype=policy, name="mlp_fc1"
        )
        self.fc2 = keras.layers.Dense(
            dim, kernel_initializer="glorot_uniform", dtype=policy, name="mlp_fc2"
        )
        self.drop_path = (
            DropPath(self.drop_path_rate, dtype=policy, name="drop_path")
            if self.drop_path_rate > 0
            else None
        )
        self.norm1.build(input_shape)
        self.attn.build(input_shape)
        self.norm2.build(input_shape)
        self.fc1.build(input_shape)
        self.fc2.build(tuple(input_shape[:-1]) + (hidden,))

    def _branch(self, x, training):
        if self.drop_path is None:
            return x
        return self.drop_path(x, training=training)

    def call(self, inputs, training=False):
        x = inputs  # the residual stream keeps the block's dtype; the branches are cast to it before the add
        x = x + ops.cast(self._branch(self.attn(self.norm1(x)), training), x.dtype)
        h = custom_gradients.gelu_erf(self.fc1(self.norm2(x)))
        return x + ops.cast(self._branch(self.fc2(h), training), x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "mlp_ratio": self.mlp_ratio,
                "drop_path_rate": self.drop_path_rate,
                "sublayer_dtype": self.sublayer_dtype,
            }
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ConvStem(keras.layers.Layer):
    """Convolutional stem of the ``vit_conv_*`` models (Xiao et al. 2021).

    Four 3x3 stride-2 conv (no bias, symmetric padding 1 as in PyTorch) ->
    BatchNorm -> ReLU stages with D/8, D/4, D/2, D channels, then a 1x1 conv
    to D with bias: total stride 16. Trained normally. Convs use PyTorch's
    default init (kaiming-uniform a=sqrt(5), i.e. bound 1/sqrt(fan_in)), as
    the official code leaves them untouched. BatchNorm is synchronized across
    replicas with PyTorch's defaults (momentum 0.1 = Keras 0.9, eps 1e-5).

    Args:
        embed_dim: int, output width D; must be divisible by 8.

    Input: ``[B, S, S, 3]``. Output: ``[B, S / 16, S / 16, D]``.
    """

    def __init__(self, embed_dim, **kwargs):
        super().__init__(**kwargs)
        if embed_dim % 8 != 0:
            raise ValueError(
                f"The conv stem needs embed_dim divisible by 8, got {embed_dim}; "
                f"choose a multiple of 8."
            )
        self.embed_dim = embed_dim

    def build(self, input_shape):
        policy = self.dtype_policy
        torch_default = keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")
        self.pads, self.convs, self.bns = [], [], []
        shape = tuple(input_shape)
        channels = self.embed_dim // 8
        for i in range(4):
            pad = keras.layers.ZeroPadding2D(1, dtype=policy, name=f"pad_{i}")
            conv = keras.layers.Conv2D(
                channels, 3, strides=2, padding="valid", use_bias=False,
                kernel_initializer=torch_default, dtype=policy, name=f"conv_{i}",
            )
            bn = keras.layers.BatchNormalization(
                synchronized=True, momentum=0.9, epsilon=1e-5, dtype=policy,
                name=f"bn_{i}",
            )
            shape = pad.compute_output_shape(shape)
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            bn.build(shape)
            self.pads.append(pad)
            self.convs.append(conv)
            self.bns.append(bn)
            # Keras 3 does not hand the layers inside a Python list to TensorFlow checkpoints: give each
            # one its own attribute, or tf.train.Checkpoint silently skips the stem's convs and BNs.
            setattr(self, f"conv_{i}", conv)
            setattr(self, f"bn_{i}", bn)
            channels *= 2
        fan_in = self.embed_dim  # 1x1 conv over D channels
        self.proj = keras.layers.Conv2D(
            self.embed_dim, 1, use_bias=True, kernel_initializer=torch_default,
            bias_initializer=_uniform(1.0 / math.sqrt(fan_in)), dtype=policy,
            name="proj",
        )
        self.proj.build(shape)

    def call(self, inputs, training=False):
        x = inputs
        for pad, conv, bn in zip(self.pads, self.convs, self.bns):
            x = ops.relu(bn(conv(pad(x)), training=training))
        return self.proj(x)

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        for _ in range(4):
            h = None if h is None else (h - 1) // 2 + 1
            w = None if w is None else (w - 1) // 2 + 1
        return (b, h, w, self.embed_dim)

    def get_config(self):
        config = super().get_config()
        config.update({"embed_dim": self.embed_dim})
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ClassTokenFeature(keras.layers.Layer):
    """Selects the [CLS] token: ``[B, N, D] -> [B, D]``."""

    def call(self, inputs):
        return inputs[:, 0]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TokenAverage(keras.layers.Layer):
    """Average of all tokens (global average pooling without a [CLS] token): ``[B, N, D] -> [B, D]``.

    The mean is taken in float32 and returned in the layer's compute dtype.
    """

    def call(self, inputs):
        return ops.cast(ops.mean(ops.cast(inputs, "float32"), axis=1), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])


# === Functional Model ===


def build_backbone(
    arch, image_size=224, *, train_patch_embed=False, train_pos_embed=False, name="backbone", **overrides
):
    """Builds a MoCo v3 ViT backbone: images ``[B, S, S, 3]`` -> [CLS] feature ``[B, D]``.

    Args:
        arch: str, a key of ``ARCHS`` (e.g. "vit_small", "vit_conv_base", "vit_micro").
        image_size: int, the square input size S; must be divisible by the patch size.
        train_patch_embed: bool, train the patch projection. False (default) keeps
            the random projection frozen (the paper's trick); ignored by conv stems,
            which are always trained.
        train_pos_embed: bool, a trainable position table (weight "pos_embed" of
            "cls_pos_embed", initialised to the sin-cos table; fine-tuning).
            False (default): the fixed sin-cos constant of pre-training.
        name: str, the model name ("backbone" is what the train step expects).
        **overrides: any of patch_size, embed_dim, depth, num_heads, mlp_ratio,
            drop_path_rate (default 0; stochastic depth rises linearly from 0 in
            block_0 to drop_path_rate in the last block, identity at inference),
            float32_residual (default True: under a mixed global dtype policy the
            [CLS] / position-embedding adds and the residual stream stay float32,
            as under PyTorch autocast; False runs them in the compute dtype),
            pos_embed (the paper's Table 5: "sincos" default, the fixed table;
            "learned", a trained weight "pos_embed", N(0, 0.02) as timm's
            trunc_normal_(std=.02) with its absolute +-2 bounds; "none", no
            position information), pooling (Table 6: "cls"
            default, the [CLS] token after the final LayerNorm; "gap_ln", no
            [CLS], the final LayerNorm on every token then their average, layers
            "norm" and "pool"; "gap", no [CLS], no final LayerNorm, the average
            of the last block's tokens, layer "pool").

    Returns:
        A functional ``keras.Model``. Layers (defaults): "patch_embed" (Conv2D, or ConvStem
        for conv-stem archs), "cls_pos_embed" (holds the "cls_token" weight),
        "block_0" ... "block_{depth-1}", "cls_feature", "norm".

    Raises:
        ValueError: unknown arch, unknown override key, or inconsistent sizes.
    """
    cfg = resolve_config(arch, image_size, overrides)
    dim, patch = cfg["embed_dim"], cfg["patch_size"]
    depth = cfg["depth"]
    policy = keras.config.dtype_policy()
    stream = {}  # the dtype of the token stream's layers; float32 under a mixed policy, as autocast keeps it
    if cfg["float32_residual"] and policy.compute_dtype != "float32":
        stream = {"dtype": "float32"}

    inputs = keras.Input(shape=(image_size, image_size, 3), name="images")
    if cfg["conv_stem"]:
        x = ConvStem(dim, name="patch_embed")(inputs)
    else:
        patch_embed = keras.layers.Conv2D(
            dim,
            patch,
            strides=patch,
            padding="valid",
            use_bias=True,
            kernel_initializer=_uniform(math.sqrt(6.0 / (3 * patch * patch + dim))),
            bias_initializer="zeros",
            name="patch_embed",
        )
        patch_embed.trainable = bool(train_patch_embed)
        x = patch_embed(inputs)
    x = ClassTokenPositionEmbedding(name="cls_pos_embed", train_pos_embed=bool(train_pos_embed),
                                    pos_embed=cfg["pos_embed"], cls_token=cfg["pooling"] == "cls", **stream)(x)
    rates = np.linspace(0.0, cfg["drop_path_rate"], depth)  # as timm: 0 in block_0
    for i in range(depth):
        x = TransformerBlock(
            cfg["num_heads"],
            mlp_ratio=cfg["mlp_ratio"],
            drop_path_rate=float(rates[i]),
            sublayer_dtype=policy.name if stream else None,
            name=f"block_{i}",
            **stream,
        )(x)
    pooling = cfg["pooling"]
    if pooling == "cls":
        # LayerNorm acts per token, so norm(x)[:, 0] == norm(x[:, 0]); selecting the
        # [CLS] token first saves normalising the patch tokens nobody reads.
        x = ClassTokenFeature(name="cls_feature", **stream)(x)
        # The final LayerNorm reads the float32 stream (its statistics are float32) and returns the compute dtype.
        outputs = LayerNorm(epsilon=_LN_EPSILON, name="norm")(x)
    elif pooling == "gap_ln":  # the final LayerNorm on every token, then their average
        x = LayerNorm(epsilon=_LN_EPSILON, name="norm")(x)
        outputs = TokenAverage(name="pool")(x)
    else:  # "gap": the average of the last block's tokens, no final LayerNorm
        outputs = TokenAverage(name="pool")(x)
    return keras.Model(inputs, outputs, name=name)


def backbone_has_batchnorm(arch):
    """True when the arch's backbone contains BatchNorm (the conv-stem variants).

    With BatchNorm the MoCo step must run each view through the backbone on its
    own (per-view batch statistics); BN-free backbones may batch both views.
    """
    return bool(_arch_entry(arch)["conv_stem"])


def config_overrides(model_config):
    """The keyword arguments for build_backbone of a run's `config.model` (overrides, pos_embed, pooling: a
    complete one, config_lib.complete): `overrides` without its unset (None) entries, plus `pos_embed` and `pooling`
    when they differ from build_backbone's (sincos, cls), so that every command that rebuilds a run's backbone from
    its config builds the one it trained."""
    out = {k: v for k, v in dict(model_config["overrides"]).items() if v is not None}
    for key, builds in (("pos_embed", "sincos"), ("pooling", "cls")):
        if model_config[key] != builds:
            out[key] = model_config[key]
    return out


def _arch_entry(arch):
    if arch not in ARCHS:
        raise ValueError(
            f"Unknown arch {arch!r}; choose one of: {', '.join(sorted(ARCHS))}."
        )
    return ARCHS[arch]


def resolve_config(arch, image_size, overrides):
    """The architecture's settings with `overrides` applied, checked against `image_size`.

    Raises the same one-sentence ValueErrors as build_backbone, without building anything (callers use it to
    validate a configuration before any work).
    """
    cfg = dict(_arch_entry(arch))
    cfg.setdefault("drop_path_rate", 0.0)
    cfg.setdefault("float32_residual", True)
    cfg.setdefault("pos_embed", "sincos")
    cfg.setdefault("pooling", "cls")
    unknown = sorted(set(overrides) - set(_OVERRIDABLE))
    if unknown:
        raise ValueError(
            f"Unknown backbone override(s) {unknown}; use only "
            f"{', '.join(_OVERRIDABLE)}."
        )
    cfg.update(overrides)
    if cfg["pos_embed"] not in POS_EMBEDS:
        raise ValueError(
            f"pos_embed={cfg['pos_embed']!r} is unknown; set config.model.pos_embed to one of "
            f"{', '.join(POS_EMBEDS)}."
        )
    if cfg["pooling"] not in POOLINGS:
        raise ValueError(
            f"pooling={cfg['pooling']!r} is unknown; set config.model.pooling to one of "
            f"{', '.join(POOLINGS)}."
        )
    for key in ("patch_size", "embed_dim", "depth", "num_heads"):
        if not isinstance(cfg[key], (int, np.integer)) or cfg[key] <= 0:
            raise ValueError(
                f"Backbone {key} must be a positive integer, got {cfg[key]!r}; "
                f"fix model.overrides.{key}."
            )
    if not isinstance(image_size, (int, np.integer)) or image_size <= 0:
        raise ValueError(
            f"image_size must be a positive integer, got {image_size!r}; "
            f"set dataset.image_size (e.g. 224)."
        )
    if cfg["mlp_ratio"] <= 0 or float(cfg["mlp_ratio"]) * cfg["embed_dim"] % 1:
        raise ValueError(
            f"mlp_ratio={cfg['mlp_ratio']} must be positive and give an integer MLP "
            f"width for embed_dim={cfg['embed_dim']}; use e.g. mlp_ratio=4."
        )
    if not 0.0 <= cfg["drop_path_rate"] < 1.0:
        raise ValueError(
            f"drop_path_rate must be in [0, 1), got {cfg['drop_path_rate']}; "
            f"use 0 for pre-training or e.g. 0.1 for fine-tuning."
        )
    if cfg["conv_stem"] and cfg["patch_size"] != 16:
        raise ValueError(
            f"Arch {arch!r} has a conv stem of total stride 16, so patch_size must "
            f"be 16, got {cfg['patch_size']}; drop the patch_size override."
        )
    if cfg["conv_stem"] and cfg["embed_dim"] % 8:
        raise ValueError(
            f"Arch {arch!r} has a conv stem with D/8 channels, so embed_dim must be "
            f"divisible by 8, got {cfg['embed_dim']}; choose a multiple of 8."
        )
    if image_size % cfg["patch_size"]:
        raise ValueError(
            f"image_size {image_size} is not divisible by patch_size "
            f"{cfg['patch_size']}; use an image size that is a multiple of "
            f"{cfg['patch_size']}."
        )
    if cfg["embed_dim"] % 4:
        raise ValueError(
            f"embed_dim {cfg['embed_dim']} is not divisible by 4, which the 2-D "
            f"sin-cos position embedding needs; choose a multiple of 4."
        )
    if cfg["embed_dim"] % cfg["num_heads"]:
        raise ValueError(
            f"embed_dim {cfg['embed_dim']} is not divisible by num_heads "
            f"{cfg['num_heads']}; choose num_heads that divides embed_dim."
        )
    return cfg


# === Config ===

_OVERRIDABLE = (
    "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "drop_path_rate", "float32_residual",
    "pos_embed", "pooling",
)


def _arch(depth, embed_dim, num_heads, patch_size, conv_stem=False, mlp_ratio=4.0):
    return {
        "depth": depth,
        "embed_dim": embed_dim,
        "num_heads": num_heads,
        "patch_size": patch_size,
        "mlp_ratio": mlp_ratio,
        "conv_stem": conv_stem,
    }


ARCHS = {
    # Official moco-v3 vits.py; ViT-S uses 12 heads (DeiT-S uses 6).
    "vit_small": _arch(12, 384, 12, 16),
    "vit_base": _arch(12, 768, 12, 16),
    "vit_large": _arch(24, 1024, 16, 16),
    "vit_huge": _arch(32, 1280, 16, 14),
    # Conv stem replaces one block (11 blocks) to keep the FLOPs comparable.
    "vit_conv_small": _arch(11, 384, 12, 16, conv_stem=True),
    "vit_conv_base": _arch(11, 768, 12, 16, conv_stem=True),
    # Tiny model for tests and the CPU demo (32x32 images -> 8x8 patches).
    "vit_micro": _arch(4, 128, 4, 4),
}
