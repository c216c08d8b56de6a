"""Mixup / cutmix label arithmetic (timm semantics), label smoothing values."""

import numpy as np
import pytest

from tf_mocov3.data import mixup

C = 5


def _batch(b=6, size=16, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(b, size, size, 3)).astype(np.float32)
    labels = rng.integers(0, C, b)
    return images, labels


def test_label_smoothing_values():
    y = mixup.smooth_one_hot([2, 0], C, smoothing=0.1).numpy()
    off, on = 0.1 / C, 1 - 0.1 + 0.1 / C  # timm one_hot: off = s / C, on = 1 - s + off
    np.testing.assert_allclose(y[0], [off, off, on, off, off], rtol=1e-6)
    np.testing.assert_allclose(y.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(mixup.smooth_one_hot([3], C).numpy(), [[0, 0, 0, 1, 0]])


def test_mixup_mixes_images_and_labels_with_the_same_lambda():
    images, labels = _batch()
    out, targets, lam = mixup.mix_batch(images, labels, [1, 2], num_classes=C, mixup_alpha=0.8, smoothing=0.1)
    lam = float(lam)
    assert 0.0 < lam < 1.0
    np.testing.assert_allclose(out.numpy(), lam * images + (1 - lam) * images[::-1], atol=1e-6)
    y = mixup.smooth_one_hot(labels, C, 0.1).numpy()
    np.testing.assert_allclose(targets.numpy(), lam * y + (1 - lam) * y[::-1], atol=1e-6)


def test_cutmix_lambda_is_the_kept_area_after_clipping():
    images, labels = _batch(size=16)
    seen_clipped = False
    for s in range(40):
        out, targets, lam = mixup.mix_batch(images, labels, [s, 7], num_classes=C, cutmix_alpha=1.0)
        out, lam = out.numpy(), float(lam)
        pasted = np.any(out != images, axis=-1)[0]  # pixels of image 0 taken from image B-1
        assert np.all(out[0][pasted] == images[-1][pasted]) and np.all(out[0][~pasted] == images[0][~pasted])
        rows, cols = np.nonzero(pasted)
        box = 0 if rows.size == 0 else (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert box == pasted.sum()  # one rectangle
        assert lam == pytest.approx(1 - box / 256.0, abs=1e-6)  # corrected by the actual area
        y = np.eye(C)[labels]
        np.testing.assert_allclose(targets.numpy(), lam * y + (1 - lam) * y[::-1], atol=1e-6)
        # Sampled lam would give int(16 * sqrt(1 - lam)) sides; clipped boxes are smaller.
        seen_clipped |= rows.size > 0 and (rows.min() == 0 or cols.min() == 0 or rows.max() == 15 or cols.max() == 15)
    assert seen_clipped


def test_switch_prob_picks_one_method_per_batch():
    images, labels = _batch()
    kinds = set()
    for s in range(30):
        out, _, lam = mixup.mix_batch(images, labels, [s, 3], num_classes=C, mixup_alpha=0.8, cutmix_alpha=1.0)
        changed = np.any(out.numpy() != images, axis=-1)[0]
        kinds.add("mixup" if changed.all() else "cutmix")
    assert kinds == {"mixup", "cutmix"}


def test_no_mixing_keeps_the_batch():
    images, labels = _batch()
    out, targets, lam = mixup.mix_batch(images, labels, [0, 0], num_classes=C, mixup_alpha=0.8, prob=0.0,
                                        smoothing=0.1)
    np.testing.assert_array_equal(out.numpy(), images)
    assert float(lam) == 1.0
    np.testing.assert_allclose(targets.numpy(), mixup.smooth_one_hot(labels, C, 0.1).numpy())


def test_mixup_groups_draw_independent_lambdas_and_one_group_is_mix_batch():
    import tensorflow as tf

    images, labels = _batch(b=8)
    kwargs = dict(num_classes=C, mixup_alpha=0.8, cutmix_alpha=1.0, smoothing=0.1)
    seed = tf.constant([4, 9], tf.int64)
    whole = mixup.mix_batch(images, labels, seed, **kwargs)
    for group in (0, 8):  # one group: today's behaviour, bit for bit
        out, targets, lams = mixup.mix_groups(images, labels, seed, group_size=group, **kwargs)
        np.testing.assert_array_equal(out.numpy(), whole[0].numpy())
        np.testing.assert_array_equal(targets.numpy(), whole[1].numpy())
        assert lams.numpy().tolist() == [float(whole[2])]
    out, targets, lams = mixup.mix_groups(images, labels, seed, group_size=4, **kwargs)
    for g in range(2):  # DeiT: timm's Mixup on each GPU batch -- its own lambda, mixed with its own reverse
        rows = slice(4 * g, 4 * g + 4)
        want = mixup.mix_batch(images[rows], labels[rows], tf.random.experimental.stateless_fold_in(seed, g), **kwargs)
        np.testing.assert_array_equal(out.numpy()[rows], want[0].numpy())
        np.testing.assert_array_equal(targets.numpy()[rows], want[1].numpy())
        assert float(lams[g]) == float(want[2])
    lam_pairs = [mixup.mix_groups(images, labels, [s, 1], group_size=4, **kwargs)[2].numpy() for s in range(20)]
    assert sum(abs(a - b) > 1e-6 for a, b in lam_pairs) >= 15  # the groups' lambdas differ (independent draws)
    with pytest.raises(ValueError, match="mixup_group"):
        mixup.mix_groups(images, labels, seed, group_size=3, **kwargs)
