"""tf_mocov3.models.custom_gradients computes the same values and gradients as the plain TensorFlow ops it replaces."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_mocov3.models import custom_gradients
from tf_mocov3.models import vit


def _reference_attention(qkv, heads):
    """The textbook formula with automatic differentiation (what vit.py computed before)."""
    b, n, d3 = qkv.shape
    dh = d3 // 3 // heads
    t = tf.transpose(tf.reshape(qkv, (b, n, 3, heads, dh)), (2, 0, 3, 1, 4))
    q, k, v = t[0], t[1], t[2]
    scores = tf.matmul(q * tf.cast(dh ** -0.5, q.dtype), k, transpose_b=True)
    attn = tf.cast(tf.nn.softmax(tf.cast(scores, tf.float32), axis=-1), q.dtype)
    return tf.reshape(tf.transpose(tf.matmul(attn, v), (0, 2, 1, 3)), (b, n, d3 // 3))


def _reference_gelu(x):
    return 0.5 * x * (1.0 + tf.math.erf(x / math.sqrt(2.0)))


def _reference_layer_norm(x, gamma, beta, eps):
    mean, var = tf.nn.moments(x, axes=[-1], keepdims=True)
    return (x - mean) / tf.sqrt(var + eps) * gamma + beta


def _value_and_grads(fn, inputs, upstream, jit):
    @tf.function(jit_compile=jit)
    def run(*args):
        with tf.GradientTape() as tape:
            tape.watch(args)
            y = fn(*args)
        return y, tape.gradient(y, args, output_gradients=upstream)

    y, grads = run(*inputs)
    return y.numpy(), [g.numpy() for g in grads]


@pytest.mark.parametrize("jit", [False, True])
def test_attention_core_values_and_gradient_match_autodiff(jit):
    rng = np.random.default_rng(0)
    heads, n, d = 3, 7, 12
    qkv = tf.constant(rng.standard_normal((2, n, 3 * d)).astype(np.float32))
    upstream = tf.constant(rng.standard_normal((2, n, d)).astype(np.float32))
    y, (g,) = _value_and_grads(lambda t: custom_gradients.attention_core(t, heads), [qkv], upstream, jit)
    y_ref, (g_ref,) = _value_and_grads(lambda t: _reference_attention(t, heads), [qkv], upstream, jit)
    np.testing.assert_allclose(y, y_ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(g, g_ref, atol=1e-5, rtol=1e-5)
    assert np.abs(g).max() > 0.1  # the gradient is not trivially zero


def test_attention_core_bfloat16_close_to_float32_autodiff():
    rng = np.random.default_rng(1)
    qkv = rng.standard_normal((2, 5, 24)).astype(np.float32)
    upstream = rng.standard_normal((2, 5, 8)).astype(np.float32)
    y, (g,) = _value_and_grads(lambda t: custom_gradients.attention_core(t, 2), [tf.constant(qkv, tf.bfloat16)],
                               tf.constant(upstream, tf.bfloat16), False)
    y_ref, (g_ref,) = _value_and_grads(lambda t: _reference_attention(t, 2), [tf.constant(qkv)],
                                       tf.constant(upstream), False)
    assert y.dtype == g.dtype == tf.bfloat16.as_numpy_dtype
    np.testing.assert_allclose(y.astype(np.float32), y_ref, atol=0.05)
    np.testing.assert_allclose(g.astype(np.float32), g_ref, atol=0.05)


@pytest.mark.parametrize("jit", [False, True])
def test_gelu_values_and_gradient_match_autodiff(jit):
    x = tf.constant(np.linspace(-6, 6, 97, dtype=np.float32).reshape(1, 97))
    upstream = tf.constant(np.random.default_rng(2).standard_normal((1, 97)).astype(np.float32))
    y, (g,) = _value_and_grads(custom_gradients.gelu_erf, [x], upstream, jit)
    y_ref, (g_ref,) = _value_and_grads(_reference_gelu, [x], upstream, jit)
    np.testing.assert_allclose(y, y_ref, atol=1e-6)
    np.testing.assert_allclose(g, g_ref, atol=1e-5)
    np.testing.assert_allclose(y, keras.ops.gelu(x, approximate=False).numpy(), atol=1e-6)


@pytest.mark.parametrize("jit", [False, True])
def test_layer_norm_values_and_gradients_match_autodiff(jit):
    rng = np.random.default_rng(3)
    x = tf.constant(rng.standard_normal((2, 5, 16)).astype(np.float32) * 3 + 1)
    gamma = tf.constant(rng.standard_normal(16).astype(np.float32))
    beta = tf.constant(rng.standard_normal(16).astype(np.float32))
    upstream = tf.constant(rng.standard_normal((2, 5, 16)).astype(np.float32))
    out = _value_and_grads(lambda a, g, b: custom_gradients.layer_norm(a, g, b, 1e-6), [x, gamma, beta], upstream, jit)
    ref = _value_and_grads(lambda a, g, b: _reference_layer_norm(a, g, b, 1e-6), [x, gamma, beta], upstream, jit)
    np.testing.assert_allclose(out[0], ref[0], atol=1e-5)
    for g, g_ref in zip(out[1], ref[1]):
        np.testing.assert_allclose(g, g_ref, atol=1e-4, rtol=1e-5)


def test_layer_norm_layer_equals_keras_layer_and_trains_its_weights():
    rng = np.random.default_rng(4)
    x = tf.constant(rng.standard_normal((3, 4, 8)).astype(np.float32))
    ours = vit.LayerNorm(epsilon=1e-6)
    stock = keras.layers.LayerNormalization(epsilon=1e-6)
    for layer in (ours, stock):
        layer.build(x.shape)
        layer.gamma.assign(rng.standard_normal(8).astype(np.float32))
    stock.set_weights(ours.get_weights())
    grads = []
    for layer in (ours, stock):
        with tf.GradientTape() as tape:
            y = layer(x)
            loss = tf.reduce_sum(y * tf.range(8, dtype=tf.float32))
        grads.append([g.numpy() for g in tape.gradient(loss, [layer.gamma, layer.beta])])
        np.testing.assert_allclose(y.numpy(), stock(x).numpy(), atol=1e-5)
    for g, g_ref in zip(*grads):
        np.testing.assert_allclose(g, g_ref, atol=1e-4)
    assert [w.path for w in ours.weights] == [w.path.replace(stock.name, ours.name) for w in stock.weights]
