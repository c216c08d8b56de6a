"""The MoCo v3 contrastive loss (Algorithm 1 of the paper, `contrastive_loss` in moco/builder.py).

`contrastive_loss` is a pure function of local queries, the keys of *all* replicas and the replica index:
the caller gathers the keys (under tf.distribute: `ReplicaContext.all_gather`), so the same function serves
one device, many replicas and the numpy reference in the tests.
"""

import tensorflow as tf


def l2_normalize(x, axis=-1, epsilon=1e-12):
    """`x / max(||x||, eps)`, like torch.nn.functional.normalize (not `x / sqrt(max(||x||^2, eps))`)."""
    norm = tf.norm(x, axis=axis, keepdims=True)
    return x / tf.maximum(norm, epsilon)


def contrastive_loss(q, k_all, temperature, replica_id=0):
    """InfoNCE of local queries against the keys gathered from every replica, times 2 * tau.

    Args:
      q: [N_local, C] queries of this replica (predictor outputs), any float dtype.
      k_all: [N_global, C] keys of all replicas, concatenated in replica order (momentum-encoder outputs).
      temperature: tau (0.2 for the ViT recipes).
      replica_id: index of this replica; the positive key of local row i is global row
        i + replica_id * N_local.

    Returns:
      Scalar float32: mean cross-entropy over the local rows, multiplied by 2 * tau. Computed in float32
      whatever the compute dtype (mixed precision keeps the loss in full precision).
    """
    q = l2_normalize(tf.cast(q, tf.float32))
    k_all = l2_normalize(tf.cast(k_all, tf.float32))
    logits = tf.matmul(q, k_all, transpose_b=True) / temperature
    n_local = tf.shape(q)[0]
    labels = tf.range(n_local) + tf.cast(replica_id, tf.int32) * n_local
    xent = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    return tf.reduce_mean(xent) * (2.0 * temperature)


def symmetrized_loss(q1, q2, k1_all, k2_all, temperature, replica_id=0):
    """ctr(q1, k2) + ctr(q2, k1): each view's query is matched with the other view's key."""
    return (contrastive_loss(q1, k2_all, temperature, replica_id)
            + contrastive_loss(q2, k1_all, temperature, replica_id))
