"""The losses of the three frameworks: MoCo v3 (Algorithm 1 of the paper, `contrastive_loss` in moco/builder.py),
SimCLR (NT-Xent) and BYOL (2 - 2 cos).

Each is a pure function of the local queries, the keys (gathered from *all* replicas where the loss needs
negatives) and the replica index: the caller gathers (under tf.distribute: `ReplicaContext.all_gather`), so the same
function serves one device, many replicas and the numpy references in the tests. All three share one signature,
`loss(q1, q2, k1, k2, temperature, replica_id)`, so that models/moco.py picks one by the method's name.
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


def nt_xent_loss(z1, z2, z1_all, z2_all, temperature, replica_id=0):
    """SimCLR's NT-Xent over the 2N views of the global batch, averaged over this replica's 2 * N_local anchors.

    Anchor z1[i] (global row g = i + replica_id * N_local) has the positive z2_all[g] and the 2N - 2 negatives
    z1_all[j], z2_all[j] for j != g; likewise for z2[i]. Cosine similarities divided by `temperature`.

    Scale (a documented choice): the SimCLR paper's loss (its Algorithm 1), the mean over the 2N anchors. SimCLR's
    own code returns twice this: google-research/simclr objective.py `add_contrastive_loss` gives loss_a + loss_b,
    the mean over the view-1 anchors plus the mean over the view-2 anchors (and run.py divides it by the replica
    count, as models/moco.py does here). The MoCo v3 paper does not say at which scale its SimCLR runs trained.
    Under Adam / AdamW, the optimizer of this project's SimCLR recipe (paper Fig. 6), a factor c on the loss is
    exactly eps / c (the update m / (sqrt(v) + eps) is unchanged when g and eps scale together, and the decay does
    not see the loss), so the two scales differ only as eps 1e-8 against 5e-9 (tests/test_optim.py checks both
    facts). Under LARS, SimCLR's own optimizer, the factor is not neutral: the gradient is added to wd * w before
    the trust ratio, so a LARS run meant to reproduce SimCLR's code needs twice this loss (no recipe here runs
    SimCLR with LARS).

    Args:
      z1, z2: [N_local, C] projections of the two views on this replica (with gradient).
      z1_all, z2_all: [N_global, C] the same projections gathered from every replica in replica order (the
        gather passes gradients back to the replica that computed each row).
      temperature: tau.
      replica_id: index of this replica.

    Returns:
      Scalar float32: the mean cross-entropy over the local anchors of both views.
    """
    z1 = l2_normalize(tf.cast(z1, tf.float32))
    z2 = l2_normalize(tf.cast(z2, tf.float32))
    z1_all = l2_normalize(tf.cast(z1_all, tf.float32))
    z2_all = l2_normalize(tf.cast(z2_all, tf.float32))
    n_local = tf.shape(z1)[0]
    n_global = tf.shape(z1_all)[0]
    labels = tf.range(n_local) + tf.cast(replica_id, tf.int32) * n_local
    # -inf would give NaN gradients through 0 * inf; a large finite value removes the anchor from its own softmax.
    self_mask = tf.one_hot(labels, n_global) * 1e9

    def one_side(anchor, same_all, other_all):
        positives_and_others = tf.matmul(anchor, other_all, transpose_b=True) / temperature
        same_view = tf.matmul(anchor, same_all, transpose_b=True) / temperature - self_mask
        logits = tf.concat([positives_and_others, same_view], axis=1)  # [N_local, 2 N_global]
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)

    xent = tf.concat([one_side(z1, z1_all, z2_all), one_side(z2, z2_all, z1_all)], axis=0)
    return tf.reduce_mean(xent)


def byol_loss(q1, q2, k1, k2, temperature=None, replica_id=0):
    """BYOL's symmetrized regression loss: mean(2 - 2 cos(q1, k2)) + mean(2 - 2 cos(q2, k1)) over the local rows.

    No negatives, so nothing is gathered: `k1`, `k2` are this replica's target projections ([N_local, C]);
    `temperature` and `replica_id` are accepted for the common signature and unused.
    """
    del temperature, replica_id

    def regression(q, k):
        q = l2_normalize(tf.cast(q, tf.float32))
        k = l2_normalize(tf.cast(k, tf.float32))
        return tf.reduce_mean(2.0 - 2.0 * tf.reduce_sum(q * k, axis=-1))

    return regression(q1, k2) + regression(q2, k1)
