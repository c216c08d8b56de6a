"""MoCo v3's two asymmetric views (the BYOL recipe), in TensorFlow ops.

Every random decision comes from a `tf.random.stateless_*` op driven by an explicit
per-example seed (an int32/int64 tensor of shape [2]). The same seed gives the same two
views wherever and however in parallel the example is processed, so an input pipeline
built on these ops is reproducible across replica placements and resumable.

Per view, in this order (moco-v3 `main_moco.py`, torchvision semantics):

1. RandomResizedCrop(image_size, scale=(crop_min, 1), ratio=(3/4, 4/3)): torchvision's
   10 attempts (area uniform, aspect ratio log-uniform) then its centre-crop fallback.
   Encoded images are decoded once and both views cropped from the result (the pre-training
   default, `dataset.jpeg_decode_once`); with `jpeg_decode_once=False` a JPEG is decoded and
   cropped in one op per view (`tf.io.decode_and_crop_jpeg`, the window computed from
   `tf.io.extract_jpeg_shape`). Decoding once crops the fully decoded image as the official
   loader does (PIL decodes, then crops); libjpeg's cropped decode can differ from that by a
   few levels at a window's edge (chroma upsampled without its neighbours). On real
   photographs decoding once was also the faster (BUILD_NOTES.md, "Input pipeline on real
   photographs").
   Resize: bilinear WITH antialiasing, because the official pipeline resizes PIL images
   and PIL's bilinear filter widens its support when it downsamples
   (`tf.image.resize(..., antialias=True)` is the same triangle filter).
2. ColorJitter(0.4, 0.4, 0.2, 0.1) with p=0.8, the four adjustments in a random order.
   Brightness multiplies by f in [0.6, 1.4]; contrast blends with the mean of the
   grayscale image; saturation blends with the grayscale image (f in [0.8, 1.2]); hue
   rotates H in HSV by d in [-0.1, 0.1]. Values are clipped to [0, 1] after each one.
3. Grayscale with p=0.2, ITU-R 601-2 luma (0.299, 0.587, 0.114), copied to 3 channels.
4. Gaussian blur, sigma ~ U(0.1, 2.0): p=1.0 on view 1, p=0.1 on view 2. The official code
   calls PIL `ImageFilter.GaussianBlur(radius=sigma)`, whose radius is the standard deviation
   (PIL approximates it with three box blurs). Here: an exact separable Gaussian with a fixed
   13-tap kernel (radius 6 = 3 * sigma_max), symmetric padding at the borders.
5. Solarize (x >= 0.5 -> 1 - x, i.e. 128 of 255): view 2 only, p=0.2.
6. Horizontal flip, p=0.5.
   The pre-training pipeline then rounds each view to uint8 levels (`to_uint8`; PIL's images are
   uint8 at this point too), so a view reaches the device in 1 byte a value.
7. Normalise with the ImageNet mean and std: on the device, in the train step (`normalize_uint8`).

Speed: the pre-training pipeline (pipelines.py) runs step 1 per example (`two_view_inputs`) and steps 2-7 of a
whole batch in one XLA call (`augment_two_view_batch`); BUILD_NOTES.md, "Input pipeline: how the two-view
augmentation got fast", gives the measurements behind this and the other speed choices below.

Differences from the official PIL pipeline, on purpose: values stay float32 in [0, 1]
between the steps (PIL rounds to uint8 after every step; here only the finished view is
rounded) and the blur kernel is an exact Gaussian rather than PIL's box-blur approximation.
"""

import math

import tensorflow as tf

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_WEIGHTS = (0.299, 0.587, 0.114)

CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_ATTEMPTS = 10
JITTER = dict(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)
JITTER_P = 0.8
GRAYSCALE_P = 0.2
BLUR_SIGMA = (0.1, 2.0)
BLUR_RADIUS = 6  # kernel taps = 2 * radius + 1 = 13 (3 * sigma_max)
VIEW1 = dict(blur_p=1.0, solarize_p=0.0)
VIEW2 = dict(blur_p=0.1, solarize_p=0.2)

# Sub-seed indices, folded into a view's seed (one stream per decision).
_CROP, _JITTER, _COINS = 0, 1, 2


def _fold(seed, k):
    return tf.random.experimental.stateless_fold_in(seed, k)


# === Random resized crop ===


def random_resized_crop_window(seed, height, width, scale=(0.08, 1.0), ratio=CROP_RATIO,
                               attempts=CROP_ATTEMPTS):
    """torchvision `RandomResizedCrop.get_params`, vectorised over its attempts.

    Args:
        seed: int tensor of shape [2].
        height, width: the source image size (int scalars or tensors).
        scale: range of the crop area as a fraction of the image area.
        ratio: range of the crop aspect ratio (width / height), sampled log-uniformly.
        attempts: number of tries before the centre-crop fallback.

    Returns:
        int32 tensor [offset_y, offset_x, crop_height, crop_width].
    """
    return random_resized_crop_windows([seed], height, width, scale, ratio, attempts)[0]


def random_resized_crop_windows(seeds, height, width, scale=(0.08, 1.0), ratio=CROP_RATIO,
                                attempts=CROP_ATTEMPTS):
    """`random_resized_crop_window` for several seeds (the views of one image) in one set of ops: [V, 4] int32.

    Row v equals `random_resized_crop_window(seeds[v], ...)` exactly (the same uniforms, the same elementwise
    arithmetic); a per-example map function runs about half as many small ops as with one call per view.
    """
    h_i = tf.cast(height, tf.int32)
    w_i = tf.cast(width, tf.int32)
    h = tf.cast(h_i, tf.float32)
    w = tf.cast(w_i, tf.float32)
    u = tf.stack([tf.random.stateless_uniform([4, attempts], s, dtype=tf.float32) for s in seeds])  # [V, 4, A]
    target_area = h * w * (scale[0] + u[:, 0] * (scale[1] - scale[0]))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = tf.exp(log_lo + u[:, 1] * (log_hi - log_lo))
    # Python's round() and tf.round both round half to even.
    cw = tf.cast(tf.round(tf.sqrt(target_area * aspect)), tf.int32)
    ch = tf.cast(tf.round(tf.sqrt(target_area / aspect)), tf.int32)
    ok = (cw > 0) & (cw <= w_i) & (ch > 0) & (ch <= h_i)  # [V, A]
    first = tf.argmax(tf.cast(ok, tf.int32), axis=1, output_type=tf.int32)[:, None]  # first success
    ch_a = tf.gather(ch, first, batch_dims=1)[:, 0]
    cw_a = tf.gather(cw, first, batch_dims=1)[:, 0]
    u_y = tf.gather(u[:, 2], first, batch_dims=1)[:, 0]
    u_x = tf.gather(u[:, 3], first, batch_dims=1)[:, 0]
    # randint(0, H - h + 1): uniform over [0, H - h]
    oy = tf.minimum(tf.cast(tf.floor(u_y * tf.cast(h_i - ch_a + 1, tf.float32)), tf.int32), h_i - ch_a)
    ox = tf.minimum(tf.cast(tf.floor(u_x * tf.cast(w_i - cw_a + 1, tf.float32)), tf.int32), w_i - cw_a)
    # Fallback: the centre crop with the aspect ratio clamped into `ratio`.
    in_ratio = w / h
    fb_w = tf.where(in_ratio < ratio[0], w_i,
                    tf.where(in_ratio > ratio[1],
                             tf.cast(tf.round(h * ratio[1]), tf.int32), w_i))
    fb_h = tf.where(in_ratio < ratio[0], tf.cast(tf.round(w / ratio[0]), tf.int32), h_i)
    fallback = tf.stack([(h_i - fb_h) // 2, (w_i - fb_w) // 2, fb_h, fb_w])
    found = tf.reduce_any(ok, axis=1, keepdims=True)
    return tf.where(found, tf.stack([oy, ox, ch_a, cw_a], axis=1), fallback[None])


def _resize(image, image_size):
    """Bilinear, antialiased (PIL semantics); returns float32 in [0, 1].

    When neither side shrinks, the antialiased (triangle) filter has radius 1 and is plain
    half-pixel bilinear interpolation, so the cheaper `ResizeBilinear` kernel gives the same
    pixels (to float rounding; tested) at a fraction of `ScaleAndTranslate`'s cost. Otherwise
    `antialiased_resize` (the same `ScaleAndTranslate` arithmetic, bit-identical, ~3x faster).
    """
    shape = tf.shape(image)
    size = [image_size, image_size]
    image = tf.cond((shape[0] <= image_size) & (shape[1] <= image_size),
                    lambda: tf.image.resize(image, size, method="bilinear", antialias=False),
                    lambda: antialiased_resize(image, image_size))
    return tf.clip_by_value(image * (1.0 / 255.0), 0.0, 1.0)


def _resize_rows(image, out_rows):
    """Antialiased triangle resize of axis 0 of an [H, W, C] image to `out_rows` (float32 out).

    `ScaleAndTranslate` resamples rows with a vectorised loop over whole rows (`GatherRows`)
    but columns with a scalar loop over pixels and channels (`GatherColumns`). Viewing the
    image as [1, H, 1, W * C] makes the row pass do all the work; the 1-wide column pass has a
    single tap of weight 1 (an exact copy). Spans and weights are those of
    `tf.image.resize(..., antialias=True)` for the same scale: scale = float(out) / float(H),
    translation 0.
    """
    shape = tf.shape(image)
    h, w, c = shape[0], shape[1], shape[2]
    scale = tf.stack([tf.cast(out_rows, tf.float32) / tf.cast(h, tf.float32), 1.0])
    out = tf.raw_ops.ScaleAndTranslate(images=tf.reshape(image, [1, h, 1, w * c]), size=[out_rows, 1],
                                       scale=scale, translation=tf.zeros([2]), kernel_type="triangle",
                                       antialias=True)
    return tf.reshape(out, [out_rows, w, c])


def antialiased_resize(image, image_size):
    """`tf.image.resize(image, [S, S], "bilinear", antialias=True)` of an [H, W, C] image, same pixels.

    `ScaleAndTranslate` filters the rows first (into an [S, W, C] float buffer), then the
    columns, each output value a weighted sum accumulated in span order. Here the same two
    passes run as row passes (`_resize_rows`), the second on the transposed buffer, and the
    result is transposed back: the same weights and summation order, so the same floats
    (tested bit-identical), at about a third of the CPU time of the single op on 512 px crops.
    """
    x = _resize_rows(image, image_size)  # [S, W, C]
    x = _resize_rows(tf.transpose(x, [1, 0, 2]), image_size)  # [S (cols), S (rows), C]
    return tf.transpose(x, [1, 0, 2])


DCT_RATIOS = (8, 4, 2)


def dct_ratio(window, image_size, ratios=DCT_RATIOS):
    """Largest JPEG DCT scale-down ratio r (1, 2, 4 or 8) with both crop sides >= r * image_size,
    i.e. the reduced-scale crop is still at least the output size and the resize still shrinks."""
    short = tf.minimum(window[2], window[3])
    r = tf.constant(1, tf.int32)
    for ratio in sorted(ratios):  # ascending: the last ratio that fits wins
        r = tf.where(short >= ratio * image_size, ratio, r)
    return r


def decode_crop_and_resize_jpeg_scaled(data, window, image_size, ratio=None):
    """`decode_crop_and_resize_jpeg` decoding at 1/ratio scale in the DCT domain (libjpeg's
    scaled IDCT: a low-pass downscale) and resampling the window with its exact fractional
    position, so the output geometry matches the full-scale path.

    `tf.io.decode_and_crop_jpeg(..., ratio=r)` takes its crop window in the coordinates of the
    SCALED image (ceil(H / r) x ceil(W / r)); the full-scale window [y, y + h) covers
    [y / r, (y + h) / r) there, so the integer window [floor(y / r), ceil((y + h) / r)) is decoded
    and `ScaleAndTranslate` (the kernel behind antialiased `tf.image.resize`) maps output pixel
    i to scaled coordinate (i + 0.5) * h / (r S) + y / r - floor(y / r). With ratio 1 this is
    bit-identical to `decode_crop_and_resize_jpeg`; with r > 1 the pixels differ slightly (the
    DCT downscale adds an extra low-pass of width ~r): see tests/test_augment.py.
    """
    if ratio is None:
        ratio = dct_ratio(window, image_size)
    if not isinstance(ratio, int):  # the op's `ratio` is an attribute: one branch per value
        branches = [lambda r=r: _decode_scaled(data, window, image_size, r) for r in (1, 2, 4, 8)]
        index = tf.cast(tf.math.log(tf.cast(ratio, tf.float32)) / math.log(2.0) + 0.5, tf.int32)
        image = tf.switch_case(index, branches)
        image.set_shape([image_size, image_size, 3])
        return image
    return _decode_scaled(data, window, image_size, ratio)


def _decode_scaled(data, window, image_size, r):
    shape = tf.io.extract_jpeg_shape(data, output_type=tf.int32)
    rf = float(r)
    window = tf.cast(window, tf.int32)
    y, x, h, w = window[0], window[1], window[2], window[3]
    y0, x0 = y // r, x // r
    y1 = tf.minimum((y + h + r - 1) // r, (shape[0] + r - 1) // r)
    x1 = tf.minimum((x + w + r - 1) // r, (shape[1] + r - 1) // r)
    crop = tf.io.decode_and_crop_jpeg(data, tf.stack([y0, x0, y1 - y0, x1 - x0]), channels=3, ratio=r)
    scale = tf.stack([image_size * rf / tf.cast(h, tf.float32), image_size * rf / tf.cast(w, tf.float32)])
    offset = tf.stack([tf.cast(y, tf.float32) / rf - tf.cast(y0, tf.float32),
                       tf.cast(x, tf.float32) / rf - tf.cast(x0, tf.float32)])
    image = tf.raw_ops.ScaleAndTranslate(images=tf.cast(crop, tf.float32)[None], size=[image_size, image_size],
                                         scale=scale, translation=-scale * offset, kernel_type="triangle",
                                         antialias=True)[0]
    return tf.clip_by_value(image * (1.0 / 255.0), 0.0, 1.0)


def to_rgb_uint8(image):
    """A decoded HWC image (1 or 3 channels, uint8 or float in [0, 1]) as uint8 RGB."""
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.uint8:
        image = tf.image.convert_image_dtype(image, tf.uint8, saturate=True)
    if image.shape.rank == 2:
        image = image[:, :, None]
    channels = image.shape[-1]
    if channels == 1:
        return tf.tile(image, [1, 1, 3])
    if channels is None:
        return tf.cond(tf.shape(image)[-1] == 1, lambda: tf.tile(image, [1, 1, 3]),
                       lambda: image[:, :, :3])
    return image[:, :, :3]


def decode_image(data):
    """Encoded bytes (JPEG / PNG / GIF / BMP) -> uint8 [H, W, 3]."""
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def crop_and_resize(image, window, image_size):
    """Crop a decoded uint8 image to `window` and resize it to a float32 [S, S, 3] in [0, 1].

    A plain slice: `random_resized_crop_window` only makes windows inside the image, and
    `tf.image.crop_to_bounding_box` would add ~75 checking ops per view to the per-example map function."""
    window = tf.cast(window, tf.int32)
    crop = tf.slice(image, tf.stack([window[0], window[1], 0]), tf.stack([window[2], window[3], -1]))
    return _resize(crop, image_size)


def decode_crop_and_resize_jpeg(data, window, image_size):
    """Decode only `window` of a JPEG (one op) and resize it to float32 [S, S, 3] in [0, 1]."""
    crop = tf.io.decode_and_crop_jpeg(data, window, channels=3)
    return _resize(crop, image_size)


# === Colour ===


def rgb_to_grayscale(image):
    """ITU-R 601-2 luma of float RGB [..., 3] -> [..., 1]."""
    return tf.tensordot(image, tf.constant(GRAY_WEIGHTS, image.dtype), axes=[[-1], [0]])[..., None]


def adjust_brightness(image, factor):
    """torchvision: blend with black, i.e. image * factor, clipped to [0, 1]."""
    return tf.clip_by_value(image * factor, 0.0, 1.0)


def adjust_contrast(image, factor):
    """torchvision: blend with the mean of the grayscale image."""
    mean = tf.reduce_mean(rgb_to_grayscale(image))
    return tf.clip_by_value(factor * image + (1.0 - factor) * mean, 0.0, 1.0)


def adjust_saturation(image, factor):
    """torchvision: blend with the grayscale image (not TF's HSV scaling)."""
    gray = rgb_to_grayscale(image)
    return tf.clip_by_value(factor * image + (1.0 - factor) * gray, 0.0, 1.0)


def adjust_hue(image, delta):
    """torchvision: H <- (H + delta) mod 1 in HSV (tf.image.adjust_hue is the same rotation)."""
    return tf.clip_by_value(tf.image.adjust_hue(image, delta), 0.0, 1.0)


def _color_jitter(image, u, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1):
    """torchvision ColorJitter from 8 uniforms drawn by the caller (`u[:4]` the factors, `u[4:]` the order): the
    four adjustments, factors drawn once, in a random order."""
    b = (1.0 - brightness) + u[0] * (2.0 * brightness)
    c = (1.0 - contrast) + u[1] * (2.0 * contrast)
    s = (1.0 - saturation) + u[2] * (2.0 * saturation)
    d = -hue + u[3] * (2.0 * hue)
    order = tf.argsort(u[4:8], stable=True)  # a uniformly random permutation of 0..3
    branches = [lambda x: adjust_brightness(x, b), lambda x: adjust_contrast(x, c),
                lambda x: adjust_saturation(x, s), lambda x: adjust_hue(x, d)]
    for k in range(4):
        image = tf.switch_case(order[k], [lambda f=f, x=image: f(x) for f in branches])
    return image


def grayscale(image):
    """Luma copied to 3 channels."""
    return tf.tile(rgb_to_grayscale(image), [1, 1, 3])


# === Blur, solarize, flip, normalise ===


def gaussian_kernel(sigma, radius=BLUR_RADIUS):
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    k = tf.exp(-0.5 * tf.square(x / sigma))
    return k / tf.reduce_sum(k)


def gaussian_blur(image, sigma, radius=BLUR_RADIUS):
    """Separable Gaussian blur of an [H, W, C] float image, symmetric borders.

    Written as weighted sums of shifted slices (2 x 13 terms) of the image viewed as a 2-D
    [H, W * C] array, so that XLA's fused loops run along a long contiguous minor dimension
    (a horizontal shift of one pixel is a shift of C floats); in [H, W, C] form the minor
    dimension is C = 3 and the same sums vectorise poorly (about 2x slower on CPU). A
    depthwise convolution is slower still under XLA on CPU. The terms are summed in the same
    order as before, so the pixels are unchanged.
    """
    k = gaussian_kernel(tf.cast(sigma, tf.float32), radius)
    taps = 2 * radius + 1
    shape = tf.shape(image)
    h, w, c = shape[0], shape[1], shape[2]
    x = tf.reshape(image, [h, w * c])
    x = tf.concat([tf.reverse(x[:radius], [0]), x, tf.reverse(x[h - radius:], [0])], 0)
    x = tf.add_n([k[i] * x[i:i + h] for i in range(taps)])
    x = tf.reshape(x, [h, w, c])
    x = tf.concat([tf.reverse(x[:, :radius], [1]), x, tf.reverse(x[:, w - radius:], [1])], 1)
    x = tf.reshape(x, [h, (w + 2 * radius) * c])
    x = tf.add_n([k[i] * x[:, i * c:(i + w) * c] for i in range(taps)])
    return tf.reshape(x, [h, w, c])


def solarize(image, threshold=0.5):
    """PIL ImageOps.solarize(threshold=128) on [0, 1] floats: x >= threshold -> 1 - x."""
    return tf.where(image >= threshold, 1.0 - image, image)


def normalize(image):
    return (image - tf.constant(IMAGENET_MEAN)) / tf.constant(IMAGENET_STD)


def _maybe(p, coin, fn, image):
    """Apply fn with probability p (static p of 0 or 1 needs no branch)."""
    if p <= 0.0:
        return image
    if p >= 1.0:
        return fn(image)
    return tf.cond(coin < p, lambda: fn(image), lambda: image)


def draw_view_randomness(seed):
    """All of steps 2-7's random numbers for one view: (coins [6], jitter uniforms [8]).

    Drawn outside any XLA cluster: XLA implements the stateless ops with another algorithm,
    so drawing here keeps the decisions identical with and without `xla`.
    """
    coins = tf.random.stateless_uniform([6], _fold(seed, _COINS))
    jitter = tf.random.stateless_uniform([8], _fold(seed, _JITTER))
    return coins, jitter


def _augment_view(image, coins, jitter, blur_p, solarize_p):
    """Steps 2-6 of one view: float32 in [0, 1]."""
    image = _maybe(JITTER_P, coins[0], lambda x: _color_jitter(x, jitter, **JITTER), image)
    image = _maybe(GRAYSCALE_P, coins[1], grayscale, image)
    sigma = BLUR_SIGMA[0] + coins[3] * (BLUR_SIGMA[1] - BLUR_SIGMA[0])
    image = _maybe(blur_p, coins[2], lambda x: gaussian_blur(x, sigma), image)
    image = _maybe(solarize_p, coins[4], solarize, image)
    return tf.cond(coins[5] < 0.5, lambda: tf.reverse(image, axis=[1]), lambda: image)


def _apply_view(image, coins, jitter, blur_p, solarize_p):
    """Steps 2-7 of one view (the float32 reference form: normalised without rounding to uint8)."""
    return normalize(_augment_view(image, coins, jitter, blur_p, solarize_p))


def to_uint8(image):
    """[0, 1] floats -> uint8 levels, rounded to the nearest (as PIL's pipeline hands torchvision uint8 images)."""
    return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 1.0) * 255.0), tf.uint8)


def normalize_uint8(images):
    """Step 7 on the device: uint8 views -> float32, scaled to [0, 1] and normalised (ToTensor + Normalize)."""
    return normalize(tf.cast(images, tf.float32) * (1.0 / 255.0))


# === Batch-level steps 2-7 (one XLA call per batch) ===


def _apply_two_views_batch(crop1, coins1, jitter1, crop2, coins2, jitter2):
    """`_augment_view` of both views for every example of a batch, as a loop over the examples, rounded to uint8."""
    def one_example(t):
        return (to_uint8(_augment_view(t[0], t[1], t[2], **VIEW1)),
                to_uint8(_augment_view(t[3], t[4], t[5], **VIEW2)))

    return tf.map_fn(one_example, (crop1, coins1, jitter1, crop2, coins2, jitter2),
                     fn_output_signature=(tf.uint8, tf.uint8))


_COMPILED_BATCH = {}


def augment_two_view_batch(crop1, coins1, jitter1, crop2, coins2, jitter2):
    """Steps 2-6 of both views for a batch of `two_view_inputs` (each with a leading batch
    dimension), rounded to uint8 levels: (view1, view2), uint8 [B, S, S, 3]. Step 7 (normalise,
    `normalize_uint8`) runs on the device, in the train step: a view crosses to the device in 1 byte
    a value instead of 4, as the official PIL pipeline's are uint8 until ToTensor.

    One XLA call per batch running `_apply_view` per example in a loop (an XLA while loop: the
    same per-example branches, so the same decisions and arithmetic as one view at a time; tested to
    float round-off). Calling XLA once per view instead costs a launch per view and, worse, a
    hand-off to TensorFlow's process-wide intra-op thread pool (XLA does not honour tf.data's
    `max_intra_op_parallelism`), whose wake-ups and spinning cost more CPU than the work itself
    at 224 px. A loop over the examples keeps each image's working set (~600 KB) in cache; the
    same steps written branch-free on the whole [B, S, S, 3] batch were ~3x slower (DRAM-bound).
    """
    key = tuple(crop1.shape[1:])  # one function per image size: only the batch size varies
    if key not in _COMPILED_BATCH:
        _COMPILED_BATCH[key] = tf.function(_apply_two_views_batch, jit_compile=True, reduce_retracing=True)
    return _COMPILED_BATCH[key](crop1, coins1, jitter1, crop2, coins2, jitter2)


# === The two views ===


def two_view_crops(image_or_bytes, seed, *, image_size=224, crop_min=0.08, is_encoded,
                   jpeg_decode_once=False, jpeg_dct_scaling=False):
    """Step 1 of both views of one example: (crop1, crop2), float32 [S, S, 3] in [0, 1].

    Args:
        image_or_bytes: a scalar string of encoded bytes (JPEG, PNG, GIF, BMP) when
            `is_encoded`, else a decoded HWC image (1 or 3 channels; uint8, or float in [0, 1]).
        seed: int32/int64 tensor of shape [2]; the only source of randomness. The view seeds
            are `_fold(seed, 1)` and `_fold(seed, 2)`.
        image_size: output side S.
        crop_min: lower bound of the crop area fraction.
        is_encoded: static bool, see `image_or_bytes`.
        jpeg_decode_once: decode a JPEG fully once and crop both views from it (the official
            loader's order, and the pre-training default), instead of one `decode_and_crop_jpeg`
            per view (whose pixels can differ by a few levels at the window's edge).
        jpeg_dct_scaling: per-view JPEG decoding only: decode a crop whose sides are both
            >= r * image_size at 1/r scale (r = 2, 4, 8) in the DCT domain and resize that
            (`decode_crop_and_resize_jpeg_scaled`). Faster; not bit-identical (see the module
            docstring). Ignored with `jpeg_decode_once`.
    """
    seed = tf.convert_to_tensor(seed)
    seeds = [_fold(seed, 1), _fold(seed, 2)]
    scale = (crop_min, 1.0)

    def windows(shape):  # [2, 4]: both views' crop windows
        return random_resized_crop_windows([_fold(s, _CROP) for s in seeds], shape[0], shape[1], scale)

    def from_decoded(image):
        wins = windows(tf.shape(image))
        return [crop_and_resize(image, wins[v], image_size) for v in range(2)]

    if is_encoded:
        data = tf.convert_to_tensor(image_or_bytes, tf.string)

        def from_jpeg():
            wins = windows(tf.io.extract_jpeg_shape(data))
            fn = decode_crop_and_resize_jpeg_scaled if jpeg_dct_scaling else decode_crop_and_resize_jpeg
            return [fn(data, wins[v], image_size) for v in range(2)]

        if jpeg_decode_once:
            crops = from_decoded(decode_image(data))
        else:
            crops = tf.cond(tf.io.is_jpeg(data), from_jpeg, lambda: from_decoded(decode_image(data)))
    else:
        crops = from_decoded(to_rgb_uint8(image_or_bytes))
    for crop in crops:
        crop.set_shape([image_size, image_size, 3])
    return crops[0], crops[1]


def two_view_inputs(image_or_bytes, seed, **kwargs):
    """Everything per example that the batch-level steps 2-7 need, for `augment_two_view_batch`:
    (crop1, coins1, jitter1, crop2, coins2, jitter2). Arguments as `two_view_crops`.

    View 1 is always blurred and never solarized; view 2 is blurred with p=0.1 and solarized with p=0.2
    (`VIEW1`, `VIEW2`)."""
    seed = tf.convert_to_tensor(seed)
    crop1, crop2 = two_view_crops(image_or_bytes, seed, **kwargs)
    coins1, jitter1 = draw_view_randomness(_fold(seed, 1))
    coins2, jitter2 = draw_view_randomness(_fold(seed, 2))
    return crop1, coins1, jitter1, crop2, coins2, jitter2


# === Evaluation ===


def eval_preprocess(image, image_size=224, resize=None):
    """Resize the shorter side to `resize` (default image_size * 256 / 224), centre crop
    `image_size`, normalise. torchvision Resize + CenterCrop semantics (antialiased bilinear).

    Args:
        image: decoded HWC image (1 or 3 channels, uint8 or float in [0, 1]) or a scalar
            string of encoded bytes.
    Returns:
        float32 [image_size, image_size, 3].
    """
    if resize is None:
        resize = int(image_size * 256 / 224)
    image = tf.convert_to_tensor(image)
    image = decode_image(image) if image.dtype == tf.string else to_rgb_uint8(image)
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    short = tf.minimum(h, w)
    # torchvision: the long side is int(resize * long / short) (truncation).
    new_h = tf.where(h <= w, resize, (resize * h) // short)
    new_w = tf.where(w <= h, resize, (resize * w) // short)
    image = tf.image.resize(image, tf.stack([new_h, new_w]), method="bilinear", antialias=True)
    top = tf.cast(tf.round(tf.cast(new_h - image_size, tf.float32) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_w - image_size, tf.float32) / 2.0), tf.int32)
    image = tf.image.crop_to_bounding_box(image, top, left, image_size, image_size)
    image = tf.clip_by_value(image * (1.0 / 255.0), 0.0, 1.0)
    image.set_shape([image_size, image_size, 3])
    return normalize(image)
