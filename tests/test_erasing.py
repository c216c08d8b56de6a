"""Random erasing (timm RandomErasing, mode 'pixel'): one box of noise, stateless."""

import numpy as np
import tensorflow as tf

from tf_mocov3.data import erasing


def test_random_erasing_p0_is_identity_and_p1_changes_one_box():
    image = tf.constant(np.random.default_rng(0).normal(size=(24, 20, 3)).astype(np.float32))
    np.testing.assert_array_equal(erasing.random_erasing(image, [1, 1], p=0.0).numpy(), image.numpy())
    for s in range(10):
        out = erasing.random_erasing(image, [s, 2], p=1.0).numpy()
        changed = np.any(out != image.numpy(), axis=-1)
        rows, cols = np.nonzero(changed)
        assert rows.size > 0
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert box == changed.sum()  # exactly one rectangle, every channel replaced
        frac = box / (24 * 20)
        assert 0.02 * 0.5 <= frac <= 1 / 3 + 0.1  # area fraction U(0.02, 1/3) up to rounding
    np.testing.assert_array_equal(erasing.random_erasing(image, [5, 5], p=1.0).numpy(),
                                  erasing.random_erasing(image, [5, 5], p=1.0).numpy())  # stateless
