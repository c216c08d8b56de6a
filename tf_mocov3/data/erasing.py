"""Random erasing, the per-image regulariser of the DeiT transfer recipe (timm `RandomErasing`, mode 'pixel').

With probability p, up to 10 attempts of area fraction U(0.02, 1/3) and log-uniform aspect ratio in (0.3, 1/0.3);
the first box that fits inside the image is filled with N(0, 1) noise per pixel and channel (the image is already
normalised). Stateless: the seed alone decides every choice, so the training pipeline stays resumable.
"""

import math

import tensorflow as tf

ERASE_SCALE = (0.02, 1.0 / 3.0)
ERASE_RATIO = (0.3, 1.0 / 0.3)
ERASE_ATTEMPTS = 10


def _fold(seed, k):
    return tf.random.experimental.stateless_fold_in(tf.convert_to_tensor(seed), k)


def random_erasing(image, seed, p=0.25, scale=ERASE_SCALE, ratio=ERASE_RATIO, attempts=ERASE_ATTEMPTS):
    """timm RandomErasing(probability=p, mode='pixel', max_count=1) of one normalised image [H, W, C]."""
    if p <= 0:
        return image
    image = tf.convert_to_tensor(image, tf.float32)
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
    u = tf.random.stateless_uniform([5, attempts], _fold(seed, 0))
    target = hf * wf * (scale[0] + u[0] * (scale[1] - scale[0]))
    aspect = tf.exp(math.log(ratio[0]) + u[1] * (math.log(ratio[1]) - math.log(ratio[0])))
    eh = tf.cast(tf.round(tf.sqrt(target * aspect)), tf.int32)
    ew = tf.cast(tf.round(tf.sqrt(target / aspect)), tf.int32)
    ok = (eh < h) & (ew < w) & (eh > 0) & (ew > 0)  # timm: `if w < img_w and h < img_h`
    first = tf.argmax(tf.cast(ok, tf.int32), output_type=tf.int32)
    bh, bw = eh[first], ew[first]
    top = tf.minimum(tf.cast(u[2][first] * tf.cast(h - bh + 1, tf.float32), tf.int32), h - bh)
    left = tf.minimum(tf.cast(u[3][first] * tf.cast(w - bw + 1, tf.float32), tf.int32), w - bw)
    erase = (u[4][0] < p) & tf.reduce_any(ok)
    rows = tf.range(h)[:, None]
    cols = tf.range(w)[None, :]
    inside = (rows >= top) & (rows < top + bh) & (cols >= left) & (cols < left + bw) & erase
    noise = tf.random.stateless_normal(shape, _fold(seed, 1), dtype=tf.float32)
    return tf.where(inside[:, :, None], noise, image)
