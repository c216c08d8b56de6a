"""The contrastive loss against a numpy transcription of the official `contrastive_loss`."""

import numpy as np
import pytest
import tensorflow as tf

from tf_mocov3.models import losses


def numpy_ctr(q, k_all, tau, rank):
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    k = k_all / np.maximum(np.linalg.norm(k_all, axis=1, keepdims=True), 1e-12)
    logits = q @ k.T / tau
    n = q.shape[0]
    labels = np.arange(n) + n * rank
    logits = logits - logits.max(axis=1, keepdims=True)
    log_prob = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -log_prob[np.arange(n), labels].mean() * 2 * tau


@pytest.mark.parametrize("rank", [0, 1, 3])
def test_loss_matches_numpy_reference(rank):
    rng = np.random.default_rng(rank)
    q = rng.normal(size=(5, 16)).astype(np.float32)
    k_all = rng.normal(size=(20, 16)).astype(np.float32)
    got = losses.contrastive_loss(q, k_all, 0.2, rank).numpy()
    np.testing.assert_allclose(got, numpy_ctr(q, k_all, 0.2, rank), rtol=1e-5)


def test_initial_loss_is_about_2_2tau_log_n():
    # SPEC sanity check: with unrelated queries and keys the symmetrized loss is ~ 2 * 2tau * ln(N).
    rng = np.random.default_rng(0)
    n, tau = 4096, 0.2
    q1, q2, k1, k2 = (rng.normal(size=(n, 256)).astype(np.float32) * 1e-3 for _ in range(4))
    loss = losses.symmetrized_loss(q1, q2, k1, k2, tau).numpy()
    assert abs(loss - 2 * 2 * tau * np.log(n)) < 0.05
    assert abs(loss - 6.65) < 0.06


def test_loss_is_float32_under_bfloat16_inputs():
    q = tf.cast(tf.random.normal([4, 8]), tf.bfloat16)
    loss = losses.contrastive_loss(q, q, 0.2)
    assert loss.dtype == tf.float32


def test_replica_losses_average_to_the_global_loss():
    # Mean of per-replica losses (each with its label offset) equals the one-replica loss on the whole batch.
    rng = np.random.default_rng(1)
    q = rng.normal(size=(8, 4)).astype(np.float32)
    k = rng.normal(size=(8, 4)).astype(np.float32)
    whole = losses.contrastive_loss(q, k, 0.2, 0).numpy()
    parts = [losses.contrastive_loss(q[r * 2:(r + 1) * 2], k, 0.2, r).numpy() for r in range(4)]
    np.testing.assert_allclose(np.mean(parts), whole, rtol=1e-6)
