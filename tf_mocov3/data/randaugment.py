"""RandAugment as timm runs it for DeiT's ImageNet fine-tuning recipe (`rand-m9-mstd0.5-inc1`), stateless.

What timm does (timm/data/auto_augment.py, `rand_augment_transform("rand-m9-mstd0.5-inc1", hparams)`, applied to
the 224 px PIL image after RandomResizedCrop + flip, before ToTensor / Normalize / RandomErasing):
- 2 ops per image, drawn uniformly WITH replacement from the 15 `_RAND_INCREASING_TRANSFORMS` (`RAND_OPS` here);
- each op is applied with probability 0.5, at magnitude m ~ N(9, 0.5) clipped to [0, 10] (drawn per op call);
- magnitude -> argument (`level_args`): rotate 3m degrees, shear 0.03m, translate 0.045m of the image side,
  Color / Contrast / Brightness / Sharpness factor 1 + 0.09m, posterize 4 - int(0.4m) bits, solarize threshold
  256 - int(25.6m), solarize-add int(11m) to pixels below 128; rotate, shear, translate and the enhance factors get
  a random sign (p 0.5);
- geometric ops fill with DeiT's img_mean (124, 116, 104) = round(255 * ImageNet mean).

Here every op works on a float32 [H, W, 3] image holding uint8 values (0..255, integral), as PIL's do, and every
random choice comes from the example's seed (stateless), so the fine-tuning input stays resumable. The colour ops
reproduce PIL's integer arithmetic (ITU-R 601-2 luma with PIL's rounding, Image.blend's truncation, ImageOps'
autocontrast / equalize / posterize / solarize look-up tables, the SMOOTH filter of ImageEnhance.Sharpness with the
border kept). Differences from timm, on purpose:
- geometric ops (rotate, shear, translate) interpolate bilinearly (ImageProjectiveTransformV3 has no bicubic);
  timm passes bicubic to PIL here. The sampled positions are PIL's (pixel centres, rotation about (w/2, h/2)).
- the random numbers are TensorFlow's stateless ones, not Python's `random`: same distributions, other draws.

Why not `keras.layers.RandAugment` (Keras 3.15): it is another policy. It has 11 ops (no Invert, no SolarizeAdd),
always applies each chosen op (no p 0.5), draws a uniform "factor" in [0, factor] for every op instead of
m ~ N(9, 0.5) on timm's per-op scales, its translation/rotation fill and ranges differ (rotation as a fraction of
a full turn), and its SeedGenerator is a layer state, not a per-example seed, so a resumed run would not see the
same augmentations. It is therefore not used.
"""

import math

import tensorflow as tf

# timm auto_augment._RAND_INCREASING_TRANSFORMS, in timm's order.
RAND_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
    "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
    "TranslateXRel", "TranslateYRel",
)
LEVEL_DENOM = 10.0      # timm _LEVEL_DENOM: magnitudes live in [0, 10]
TRANSLATE_PCT = 0.45    # timm _HPARAMS_DEFAULT translate_pct
FILL = (124, 116, 104)  # DeiT: img_mean = round(255 * (0.485, 0.456, 0.406))
SIGNED = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel", "ColorIncreasing", "ContrastIncreasing",
          "BrightnessIncreasing", "SharpnessIncreasing")


class RandAugmentSpec:
    """A parsed timm RandAugment string, e.g. "rand-m9-mstd0.5-inc1" (n 2 ops, p 0.5 per op).

    Only the increasing op set (inc1) is supported: it is the one DeiT and the MoCo v3 fine-tuning recipe use.
    """

    def __init__(self, config_str):
        parts = str(config_str).split("-")
        if not parts or parts[0] != "rand":
            raise ValueError(f"RandAugment config {config_str!r} must start with 'rand-' as timm's "
                             f"(e.g. 'rand-m9-mstd0.5-inc1'); fix config.aug.rand_augment.")
        self.magnitude, self.magnitude_std, self.num_ops, self.prob, increasing = 10.0, 0.0, 2, 0.5, False
        for part in parts[1:]:
            key = "".join(ch for ch in part if ch.isalpha())
            try:
                value = float(part[len(key):])
            except ValueError:
                raise ValueError(f"RandAugment config {config_str!r}: cannot read {part!r}; use timm's form "
                                 f"'rand-m9-mstd0.5-inc1'.") from None
            if key == "m":
                self.magnitude = value
            elif key == "mstd":
                self.magnitude_std = value
            elif key == "n":
                self.num_ops = int(value)
            elif key == "p":
                self.prob = value
            elif key == "inc":
                increasing = bool(value)
            else:
                raise ValueError(f"RandAugment config {config_str!r}: unknown part {part!r}; this project reads "
                                 f"m, mstd, n, p and inc (timm's 'rand-m9-mstd0.5-inc1').")
        if not increasing:
            raise ValueError(f"RandAugment config {config_str!r}: only timm's increasing op set is implemented; "
                             f"add '-inc1' (DeiT's rand-m9-mstd0.5-inc1).")
        self.config_str = str(config_str)


# === Magnitudes ===


def level_args(name, magnitude):
    """timm's `LEVEL_TO_ARG[name](magnitude)` before the random sign (a Python float or a tensor), or None."""
    m = magnitude / LEVEL_DENOM
    if name == "Rotate":
        return m * 30.0
    if name in ("ShearX", "ShearY"):
        return m * 0.3
    if name in ("TranslateXRel", "TranslateYRel"):
        return m * TRANSLATE_PCT
    if name.endswith("Increasing") and name[:-len("Increasing")] in ("Color", "Contrast", "Brightness",
                                                                       "Sharpness"):
        return m * 0.9  # the factor is 1 +- this
    if name == "PosterizeIncreasing":
        return 4 - _trunc(m * 4)
    if name == "SolarizeIncreasing":
        return 256 - _trunc(m * 256)
    if name == "SolarizeAdd":
        return _trunc(m * 110)
    return None


def _trunc(x):
    return int(x) if isinstance(x, (int, float)) else tf.floor(x)  # magnitudes are >= 0: int() is floor


# === Colour ops (PIL arithmetic on uint8 values held in float32) ===


def _u8(x):
    return tf.clip_by_value(tf.floor(x), 0.0, 255.0)


def _lut(image, table):
    """Applies a [3, 256] (or [256]) look-up table per channel."""
    idx = tf.cast(image, tf.int32)
    if len(table.shape) == 1:
        return tf.gather(table, idx)
    channels = [tf.gather(table[c], idx[..., c]) for c in range(3)]
    return tf.stack(channels, axis=-1)


def luma(image):
    """PIL convert("L"): (19595 R + 38470 G + 7471 B + 0x8000) >> 16."""
    r, g, b = tf.unstack(tf.cast(image, tf.int32), axis=-1)
    return tf.cast(tf.bitwise.right_shift(r * 19595 + g * 38470 + b * 7471 + 0x8000, 16), tf.float32)


def blend(degenerate, image, factor):
    """PIL Image.blend(degenerate, image, factor), as ImageEnhance uses it: truncated and clipped."""
    return _u8(degenerate + factor * (image - degenerate))


def color(image, factor):
    return blend(tf.repeat(luma(image)[..., None], 3, axis=-1), image, factor)


def contrast(image, factor):
    mean = tf.floor(tf.reduce_mean(luma(image)) + 0.5)  # int(ImageStat mean of "L" + 0.5)
    return blend(tf.fill(tf.shape(image), mean), image, factor)


def brightness(image, factor):
    return blend(tf.zeros_like(image), image, factor)


def sharpness(image, factor):
    """ImageEnhance.Sharpness: blend with ImageFilter.SMOOTH (3x3 [1 1 1; 1 5 1; 1 1 1] / 13, border kept)."""
    kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smooth = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], "VALID")[0]
    smooth = tf.clip_by_value(tf.floor(smooth + 0.5), 0.0, 255.0)
    smooth = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    rows, cols = tf.range(h)[:, None], tf.range(w)[None, :]
    inner = (rows > 0) & (rows < h - 1) & (cols > 0) & (cols < w - 1)
    degenerate = tf.where(inner[..., None], smooth, image)
    return blend(degenerate, image, factor)


def autocontrast(image):
    """ImageOps.autocontrast(image) (cutoff 0): per channel, stretch [min, max] to [0, 255] (int() of the LUT)."""
    lo = tf.reduce_min(image, axis=[0, 1])
    hi = tf.reduce_max(image, axis=[0, 1])
    scale = 255.0 / tf.maximum(hi - lo, 1.0)
    levels = tf.range(256, dtype=tf.float32)[None, :]
    table = tf.clip_by_value(tf.floor(levels * scale[:, None] - lo[:, None] * scale[:, None]), 0.0, 255.0)
    table = tf.where((hi > lo)[:, None], table, tf.tile(levels, [3, 1]))
    return _lut(image, table)


def equalize(image):
    """ImageOps.equalize(image): PIL's histogram look-up table per channel."""
    idx = tf.cast(image, tf.int32)
    tables = []
    for c in range(3):
        hist = tf.math.bincount(tf.reshape(idx[..., c], [-1]), minlength=256, maxlength=256, dtype=tf.int64)
        nonzero = tf.boolean_mask(hist, hist > 0)
        last = tf.gather(nonzero, tf.size(nonzero) - 1)
        step = (tf.reduce_sum(hist) - last) // 255
        safe = tf.maximum(step, 1)
        before = tf.cumsum(hist, exclusive=True)
        table = (step // 2 + before) // safe
        table = tf.cast(tf.minimum(table, 255), tf.float32)
        keep = (tf.size(nonzero) <= 1) | (step == 0)
        tables.append(tf.where(keep, tf.range(256, dtype=tf.float32), table))
    return _lut(image, tf.stack(tables))


def invert(image):
    return 255.0 - image


def posterize(image, bits):
    """ImageOps.posterize: keep the `bits` high bits (0 bits: black)."""
    unit = tf.pow(2.0, 8.0 - tf.cast(bits, tf.float32))
    return tf.floor(image / unit) * unit


def solarize(image, threshold):
    return tf.where(image < tf.cast(threshold, tf.float32), image, 255.0 - image)


def solarize_add(image, add, threshold=128):
    return tf.where(image < threshold, tf.minimum(image + tf.cast(add, tf.float32), 255.0), image)


# === Geometric ops ===


def affine(image, matrix, fill=FILL):
    """PIL Image.transform(size, AFFINE, (a, b, c, d, e, f), fillcolor=fill): output pixel centre (x, y) samples
    the input at (a x + b y + c, d x + e y + f) (PIL's pixel-centre coordinates), bilinear, fill outside."""
    a, b, c, d, e, f = [tf.cast(v, tf.float32) for v in matrix]
    # PIL's coordinates are the pixel index + 0.5; ImageProjectiveTransformV3 uses the index.
    c = c + 0.5 * (a + b) - 0.5
    f = f + 0.5 * (d + e) - 0.5
    transform = tf.stack([a, b, c, d, e, f, 0.0, 0.0])[None]
    ones = tf.ones_like(image[..., :1])
    stacked = tf.concat([image, ones], axis=-1)[None]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=stacked, transforms=transform, output_shape=tf.shape(image)[:2], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="CONSTANT")[0]
    pixels, mask = out[..., :3], out[..., 3:]
    return _u8(pixels + (1.0 - mask) * tf.constant(fill, tf.float32) + 0.5)


def rotate(image, degrees):
    """PIL Image.rotate(degrees) about (w / 2, h / 2), counter-clockwise for positive degrees."""
    h, w = tf.cast(tf.shape(image)[0], tf.float32), tf.cast(tf.shape(image)[1], tf.float32)
    angle = -tf.cast(degrees, tf.float32) * (math.pi / 180.0)
    a, b, d, e = tf.cos(angle), tf.sin(angle), -tf.sin(angle), tf.cos(angle)
    cx, cy = w / 2.0, h / 2.0
    c = a * -cx + b * -cy + cx
    f = d * -cx + e * -cy + cy
    return affine(image, (a, b, c, d, e, f))


def shear_x(image, factor):
    return affine(image, (1.0, factor, 0.0, 0.0, 1.0, 0.0))


def shear_y(image, factor):
    return affine(image, (1.0, 0.0, 0.0, factor, 1.0, 0.0))


def translate_x_rel(image, pct):
    pixels = pct * tf.cast(tf.shape(image)[1], tf.float32)
    return affine(image, (1.0, 0.0, pixels, 0.0, 1.0, 0.0))


def translate_y_rel(image, pct):
    pixels = pct * tf.cast(tf.shape(image)[0], tf.float32)
    return affine(image, (1.0, 0.0, 0.0, 0.0, 1.0, pixels))


def apply_op(name, image, magnitude, sign):
    """Op `name` of RAND_OPS at `magnitude` (already clipped to [0, 10]); `sign` is +1 or -1 (signed ops)."""
    arg = level_args(name, magnitude)
    if name in SIGNED:
        arg = arg * sign
    if name == "AutoContrast":
        return autocontrast(image)
    if name == "Equalize":
        return equalize(image)
    if name == "Invert":
        return invert(image)
    if name == "Rotate":
        return rotate(image, arg)
    if name == "PosterizeIncreasing":
        return posterize(image, arg)
    if name == "SolarizeIncreasing":
        return solarize(image, arg)
    if name == "SolarizeAdd":
        return solarize_add(image, arg)
    if name == "ColorIncreasing":
        return color(image, 1.0 + arg)
    if name == "ContrastIncreasing":
        return contrast(image, 1.0 + arg)
    if name == "BrightnessIncreasing":
        return brightness(image, 1.0 + arg)
    if name == "SharpnessIncreasing":
        return sharpness(image, 1.0 + arg)
    if name == "ShearX":
        return shear_x(image, arg)
    if name == "ShearY":
        return shear_y(image, arg)
    if name == "TranslateXRel":
        return translate_x_rel(image, arg)
    if name == "TranslateYRel":
        return translate_y_rel(image, arg)
    raise ValueError(f"Unknown RandAugment op {name!r}; use one of {', '.join(RAND_OPS)}.")


# === The policy ===


def draw(seed, spec):
    """The random choices of one image: (op indices [n], apply coins [n], magnitudes [n], signs [n])."""
    fold = tf.random.experimental.stateless_fold_in
    seed = tf.convert_to_tensor(seed)
    n = int(spec.num_ops)
    ops = tf.random.stateless_uniform([n], fold(seed, 0), 0, len(RAND_OPS), dtype=tf.int32)
    apply = tf.random.stateless_uniform([n], fold(seed, 1)) < spec.prob
    magnitude = spec.magnitude + spec.magnitude_std * tf.random.stateless_normal([n], fold(seed, 2))
    if spec.magnitude_std <= 0:
        magnitude = tf.fill([n], float(spec.magnitude))
    magnitude = tf.clip_by_value(magnitude, 0.0, LEVEL_DENOM)
    signs = tf.where(tf.random.stateless_uniform([n], fold(seed, 3)) < 0.5, -1.0, 1.0)
    return ops, apply, magnitude, signs


def rand_augment(image, seed, spec):
    """timm RandAugment of one image: float32 [H, W, 3] with uint8 values -> same; `spec` a RandAugmentSpec."""
    image = tf.convert_to_tensor(image, tf.float32)
    ops, apply, magnitude, signs = draw(seed, spec)
    for i in range(int(spec.num_ops)):
        current = image
        branches = [(lambda name=name, i=i, x=current: apply_op(name, x, magnitude[i], signs[i]))
                    for name in RAND_OPS]
        image = tf.cond(apply[i], lambda i=i, b=branches: tf.switch_case(ops[i], b), lambda x=current: x)
        image.set_shape(current.shape)
    return image
