"""The ViT's non-matmul pieces with hand-written gradients (TensorFlow ops).

TensorFlow's automatic gradient of the attention core (slice the fused qkv,
transpose, batched matmul, softmax) and of the erf GELU builds many separate
kernels: the slices of ``qkv`` each get a zero-padded gradient that is summed
back, the softmax gradient is four passes over the ``[B, heads, N, N]`` scores
and the GELU gradient recomputes the erf. On a CPU these passes cost more than
the matmuls around them. The functions here compute the same values and the
same gradients (to float round-off; tests/test_custom_gradients.py checks both
against the plain ops) with fewer, larger kernels:

* ``attention_core``: scaled dot-product attention on a fused qkv tensor,
  whose backward is written out with transposed matmuls
  (dV = A^T dO, dA = dO V^T, dS = A * (dA - rowsum(dA * A)),
  dQ = dS K * scale, dK = dS^T (Q * scale)) and one stacked transpose back to
  the qkv layout.
* ``gelu_erf``: x * Phi(x) with the derivative Phi(x) + x * phi(x) from the
  saved input.
* ``layer_norm``: the textbook LayerNorm backward from the saved normalised
  input and 1 / std.

They run unchanged under XLA (``jit_compile``), tf.distribute and mixed
precision: the attention softmax and the LayerNorm compute in float32, as the
plain Keras layers do; matmuls and the GELU run in the input dtype.

Measured on 2 CPU cores (ViT-S block, 64 images, forward + backward, CPU time,
load 2-3; `python benchmarks/vit_step_profile.py --parts=ops --xla=false` prints
both sides): attention core 0.65 s -> 0.37 s, GELU 0.18 s -> 0.10 s, LayerNorm
51 ms -> 31 ms.
"""

import math

import tensorflow as tf

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def attention_core(qkv, num_heads):
    """softmax(Q K^T / sqrt(dh)) V for a fused ``qkv`` [B, N, 3 * D] -> [B, N, D].

    ``qkv``'s last axis is (3, heads, head_dim) in that order, as timm and the
    official moco-v3 ViT lay it out.
    """
    n, d3 = qkv.shape[1], qkv.shape[2]
    if n is None or d3 is None:
        raise ValueError(f"attention_core needs static token and width dims, got shape {qkv.shape}.")
    dim = d3 // 3
    head_dim = dim // num_heads
    return _attention(qkv, n, dim, num_heads, head_dim)


def _attention(qkv, n, dim, heads, head_dim):
    scale = head_dim ** -0.5

    @tf.custom_gradient
    def core(t):
        dtype = t.dtype
        t5 = tf.transpose(tf.reshape(t, (-1, n, 3, heads, head_dim)), (2, 0, 3, 1, 4))
        q, k, v = tf.unstack(t5)  # [B, H, N, dh] each
        q = q * tf.cast(scale, dtype)
        scores = tf.matmul(q, k, transpose_b=True)
        attn32 = tf.nn.softmax(tf.cast(scores, tf.float32), axis=-1)
        attn = tf.cast(attn32, dtype)
        out = tf.reshape(tf.transpose(tf.matmul(attn, v), (0, 2, 1, 3)), (-1, n, dim))

        def grad(d_out):
            d_o = tf.transpose(tf.reshape(d_out, (-1, n, heads, head_dim)), (0, 2, 1, 3))
            d_attn = tf.cast(tf.matmul(d_o, v, transpose_b=True), tf.float32)
            d_v = tf.matmul(attn, d_o, transpose_a=True)
            d_scores = attn32 * (d_attn - tf.reduce_sum(d_attn * attn32, axis=-1, keepdims=True))
            d_scores = tf.cast(d_scores, dtype)
            d_q = tf.matmul(d_scores, k) * tf.cast(scale, dtype)
            d_k = tf.matmul(d_scores, q, transpose_a=True)
            d_t5 = tf.stack([d_q, d_k, d_v])  # [3, B, H, N, dh]
            return tf.reshape(tf.transpose(d_t5, (1, 3, 0, 2, 4)), (-1, n, 3 * dim))

        return out, grad

    return core(qkv)


@tf.custom_gradient
def gelu_erf(x):
    """Exact GELU x * Phi(x) (erf form, as torch.nn.GELU() and the official ViT)."""
    cdf = 0.5 * (1.0 + tf.math.erf(x * tf.cast(_INV_SQRT2, x.dtype)))

    def grad(dy):
        pdf = tf.exp(-0.5 * tf.square(x)) * tf.cast(_INV_SQRT_2PI, x.dtype)
        return dy * (cdf + x * pdf)

    return x * cdf, grad


def layer_norm(x, gamma, beta, epsilon):
    """LayerNorm over the last axis, computed in float32; returns float32."""
    return _layer_norm(tf.cast(x, tf.float32), tf.cast(gamma, tf.float32),
                       tf.cast(beta, tf.float32), float(epsilon))


def _layer_norm(x, gamma, beta, epsilon):
    width = x.shape[-1]

    @tf.custom_gradient
    def norm(t, g, b):
        mean, var = tf.nn.moments(t, axes=[-1], keepdims=True)
        rstd = tf.math.rsqrt(var + epsilon)
        xhat = (t - mean) * rstd

        def grad(dy):
            d_xhat = dy * g
            d_gamma = tf.reduce_sum(tf.reshape(dy * xhat, (-1, width)), axis=0)
            d_beta = tf.reduce_sum(tf.reshape(dy, (-1, width)), axis=0)
            d_x = rstd * (d_xhat - tf.reduce_mean(d_xhat, axis=-1, keepdims=True)
                          - xhat * tf.reduce_mean(d_xhat * xhat, axis=-1, keepdims=True))
            return d_x, d_gamma, d_beta

        return xhat * g + b, grad

    return norm(x, gamma, beta)
