"""Per-example reference forms of the two-view augmentation, which only the tests use.

The library runs steps 2-7 of a whole batch in one XLA call (`augment.augment_two_view_batch`); the tests compare it
with these straightforward per-example, per-view forms, and check the colour-jitter ranges with `color_jitter`.
"""

import tensorflow as tf

from tf_mocov3.data import augment


def color_jitter(image, seed, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1):
    """torchvision ColorJitter: the four adjustments, factors drawn once from `seed`, in a random order."""
    return augment._color_jitter(image, tf.random.stateless_uniform([8], seed), brightness, contrast,  # pylint: disable=protected-access
                                 saturation, hue)


_COMPILED = {}


def _apply_view_xla(image, coins, jitter, view):
    """`augment._apply_view` with view `view`'s policy, compiled by XLA (fuses the elementwise chain)."""
    if view not in _COMPILED:
        policy = augment.VIEW1 if view == 1 else augment.VIEW2
        _COMPILED[view] = tf.function(lambda x, c, j: augment._apply_view(x, c, j, **policy),  # pylint: disable=protected-access
                                      jit_compile=True, reduce_retracing=True)
    return _COMPILED[view](image, coins, jitter)


def two_views(image_or_bytes, seed, *, image_size=224, crop_min=0.08, is_encoded, xla=True,
              jpeg_decode_once=False, jpeg_dct_scaling=False):
    """The two asymmetric MoCo v3 views of one example, one view at a time.

    Arguments as `augment.two_view_crops`; `xla` compiles steps 2-7 of each view with XLA (same random decisions;
    the floats may differ from the uncompiled ops in the last bits). Returns (view1, view2), float32 [S, S, 3].
    """
    inputs = augment.two_view_inputs(image_or_bytes, seed, image_size=image_size, crop_min=crop_min,
                                     is_encoded=is_encoded, jpeg_decode_once=jpeg_decode_once,
                                     jpeg_dct_scaling=jpeg_dct_scaling)
    views = []
    for view, policy in ((1, augment.VIEW1), (2, augment.VIEW2)):
        crop, coins, jitter = inputs[3 * (view - 1):3 * view]
        views.append(_apply_view_xla(crop, coins, jitter, view) if xla
                     else augment._apply_view(crop, coins, jitter, **policy))  # pylint: disable=protected-access
    return views[0], views[1]
