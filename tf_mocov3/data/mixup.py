"""The batch-level DeiT regularisers of the transfer fine-tune recipe: label smoothing, mixup, cutmix.

Semantics follow timm (which DeiT and the MoCo v3 transfer runs use), written with stateless TF ops so that a
seed alone decides every random choice (the fine-tune input pipeline is then resumable, see pipelines.py).
Random erasing, the per-image regulariser of the same recipe, is in erasing.py.

* `smooth_one_hot` (timm `mixup.one_hot`): off = smoothing / C, on = 1 - smoothing + off.
* `mix_batch` (timm `Mixup`, mode 'batch'): one lambda per batch, the batch is mixed with itself reversed
  (`x.flip(0)`). With probability `prob` the batch is mixed at all; when both mixup and cutmix are on,
  `switch_prob` picks cutmix. Mixup: lam ~ Beta(a, a), x = lam * x + (1 - lam) * x_rev. Cutmix: lam ~ Beta(a, a),
  a box of side fraction sqrt(1 - lam) centred uniformly in the image (clipped at the border) is pasted from
  x_rev, and lam is corrected to 1 - box_area / image_area (timm's `correct_lam`). Targets are always
  lam * smooth(y) + (1 - lam) * smooth(y_rev).
* `mix_groups`: DeiT calls timm's Mixup on each GPU's batch (128 images in its recipe), so every group of that
  many rows draws its own lambda, its own mixup-or-cutmix choice and box, and is mixed with itself reversed.
  `mix_groups` splits the global batch into groups of `group_size` consecutive rows (the per-replica slices when
  group_size = B / replicas) and mixes each with `mix_batch` under the seed fold_in(seed, g); one group (group_size
  0 or B) is `mix_batch` of the whole batch with `seed` itself, bit for bit.
"""

import tensorflow as tf


def _fold(seed, k):
    return tf.random.experimental.stateless_fold_in(tf.convert_to_tensor(seed), k)


# === Labels ===


def smooth_one_hot(labels, num_classes, smoothing=0.0):
    """int labels [B] -> float32 [B, C] with `smoothing` spread uniformly (timm one_hot with on/off values)."""
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    return tf.one_hot(tf.cast(labels, tf.int32), num_classes, on_value=on, off_value=off, dtype=tf.float32)


# === Mixup / cutmix ===


def sample_beta(seed, alpha):
    """One Beta(alpha, alpha) sample from two stateless Gamma(alpha) draws."""
    g = tf.random.stateless_gamma([2], seed, alpha=float(alpha), dtype=tf.float32)
    return g[0] / tf.maximum(g[0] + g[1], 1e-12)


def cutmix_box(seed, lam, height, width):
    """timm `rand_bbox` (margin 0): -> int32 (y0, y1, x0, x1), a box of sides int(H * sqrt(1 - lam)) etc.

    The centre is uniform over the pixel grid; the box is clipped at the border, so its area may be smaller
    than (1 - lam) of the image: callers must correct lam with the actual area (see `mix_batch`).
    """
    cut = tf.sqrt(1.0 - tf.cast(lam, tf.float32))
    cut_h = tf.cast(tf.cast(height, tf.float32) * cut, tf.int32)  # int(): truncation, as timm
    cut_w = tf.cast(tf.cast(width, tf.float32) * cut, tf.int32)
    cy = tf.random.stateless_uniform([], _fold(seed, 0), 0, height, dtype=tf.int32)
    cx = tf.random.stateless_uniform([], _fold(seed, 1), 0, width, dtype=tf.int32)
    y0 = tf.clip_by_value(cy - cut_h // 2, 0, height)
    y1 = tf.clip_by_value(cy + cut_h // 2, 0, height)
    x0 = tf.clip_by_value(cx - cut_w // 2, 0, width)
    x1 = tf.clip_by_value(cx + cut_w // 2, 0, width)
    return y0, y1, x0, x1


def _box_mask(y0, y1, x0, x1, height, width):
    rows = tf.range(height)[:, None]
    cols = tf.range(width)[None, :]
    inside = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
    return tf.cast(inside, tf.float32)[None, :, :, None]  # [1, H, W, 1]


def mix_batch(images, labels, seed, *, num_classes, mixup_alpha=0.0, cutmix_alpha=0.0, prob=1.0,
              switch_prob=0.5, smoothing=0.0):
    """Mixup or cutmix of one batch (timm Mixup, mode 'batch'), with label smoothing.

    Args:
        images: float32 [B, H, W, C] (static H, W).
        labels: int [B].
        seed: int tensor [2]; the only randomness.
        num_classes: C of the targets.
        mixup_alpha, cutmix_alpha: Beta parameters; 0 switches that method off.
        prob: probability of mixing the batch at all.
        switch_prob: probability of cutmix when both are on.
        smoothing: label smoothing of both targets.

    Returns:
        (images, targets float32 [B, num_classes], lam float32 scalar). lam is 1 when the batch is not mixed.
    """
    y = smooth_one_hot(labels, num_classes, smoothing)
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return images, y, tf.constant(1.0)
    images = tf.convert_to_tensor(images, tf.float32)
    height, width = images.shape[1], images.shape[2]
    coins = tf.random.stateless_uniform([2], _fold(seed, 0))
    apply = coins[0] < prob
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = coins[1] < switch_prob
    else:
        use_cutmix = tf.constant(cutmix_alpha > 0)
    lam_mix = sample_beta(_fold(seed, 1), mixup_alpha) if mixup_alpha > 0 else tf.constant(1.0)
    lam_cut = sample_beta(_fold(seed, 2), cutmix_alpha) if cutmix_alpha > 0 else tf.constant(1.0)
    y0, y1, x0, x1 = cutmix_box(_fold(seed, 3), lam_cut, height, width)
    box_lam = 1.0 - tf.cast((y1 - y0) * (x1 - x0), tf.float32) / float(height * width)
    lam = tf.where(apply, tf.where(use_cutmix, box_lam, lam_mix), 1.0)
    flipped = tf.reverse(images, axis=[0])
    mixed_images = lam * images + (1.0 - lam) * flipped
    mask = _box_mask(y0, y1, x0, x1, height, width)
    cut_images = images * (1.0 - mask) + flipped * mask
    out = tf.where(apply & use_cutmix, cut_images, tf.where(apply, mixed_images, images))
    targets = lam * y + (1.0 - lam) * tf.reverse(y, axis=[0])
    return out, targets, lam


def mix_groups(images, labels, seed, *, group_size=0, first_group=0, **kwargs):
    """`mix_batch` per group of `group_size` consecutive rows (module docstring); returns (images, targets, lams [G]).

    Args:
        images: float32 [B, H, W, C] with a static B divisible by group_size.
        labels: int [B].
        seed: int tensor [2].
        group_size: rows per group; 0 (or B) = one group, exactly `mix_batch(images, labels, seed, ...)`.
        first_group: the number of the first group (an input pipeline serving rows from group k on passes k, so
          that its groups are mixed as in the whole batch); with first_group > 0 one group is mixed under
          fold_in(seed, first_group) too.
        **kwargs: mix_batch's keyword arguments (num_classes, mixup_alpha, cutmix_alpha, prob, switch_prob,
            smoothing).
    """
    batch = images.shape[0]
    if batch is None:
        raise ValueError("mix_groups needs a static batch size; batch with drop_remainder=True.")
    group_size, first_group = int(group_size or batch), int(first_group)
    if group_size >= batch and not first_group:
        out, targets, lam = mix_batch(images, labels, seed, **kwargs)
        return out, targets, tf.reshape(lam, [1])
    group_size = min(group_size, batch)
    if batch % group_size:
        raise ValueError(f"The batch of {batch} rows does not split into mixup groups of {group_size}; set "
                         f"config.aug.mixup_group to a divisor of the per-step batch (or 0 for one group).")
    outs, targets, lams = [], [], []
    for g in range(batch // group_size):
        rows = slice(g * group_size, (g + 1) * group_size)
        out, target, lam = mix_batch(images[rows], labels[rows], _fold(seed, first_group + g), **kwargs)
        outs.append(out)
        targets.append(target)
        lams.append(lam)
    return tf.concat(outs, 0), tf.concat(targets, 0), tf.stack(lams)
