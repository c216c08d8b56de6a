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
