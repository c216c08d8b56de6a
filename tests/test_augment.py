"""Facts about the MoCo v3 augmentation (torchvision semantics, stateless determinism)."""

import io
import math

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from augment_reference import color_jitter
from augment_reference import two_views
from tf_mocov3.data import augment
from tf_mocov3.testing import fixtures_data

RNG = np.random.default_rng(0)
IMG = RNG.uniform(0, 1, (17, 23, 3)).astype(np.float32)


def _np_gray(x):
    return x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114


def _seed(i):
    return tf.constant([7, i], tf.int64)


# --- colour ops against a numpy reference of torchvision's functional tensor ops ---


def test_brightness_is_clipped_multiplication():
    np.testing.assert_allclose(augment.adjust_brightness(IMG, 1.3), np.clip(IMG * 1.3, 0, 1), atol=1e-6)


def test_contrast_blends_with_mean_of_grayscale():
    ref = np.clip(0.7 * IMG + 0.3 * _np_gray(IMG).mean(), 0, 1)
    np.testing.assert_allclose(augment.adjust_contrast(IMG, 0.7), ref, atol=1e-6)


def test_saturation_blends_with_grayscale():
    ref = np.clip(1.2 * IMG - 0.2 * _np_gray(IMG)[..., None], 0, 1)
    np.testing.assert_allclose(augment.adjust_saturation(IMG, 1.2), ref, atol=1e-6)


def test_hue_shift_rotates_hsv_hue():
    import colorsys
    px = IMG[3, 5]
    h, s, v = colorsys.rgb_to_hsv(*px)
    ref = colorsys.hsv_to_rgb((h + 0.08) % 1.0, s, v)
    np.testing.assert_allclose(augment.adjust_hue(IMG, 0.08)[3, 5], ref, atol=1e-5)


def test_grayscale_uses_itu_r_601_weights():
    g = augment.grayscale(IMG).numpy()
    assert g.shape == IMG.shape
    np.testing.assert_allclose(g[..., 1], _np_gray(IMG), atol=1e-6)
    np.testing.assert_allclose(augment.rgb_to_grayscale(tf.constant([[[1.0, 0, 0]]])), [[[0.299]]])


def test_color_jitter_factors_within_torchvision_ranges():
    # A single grey pixel isolates brightness (only it changes a grey value; contrast is
    # a no-op on a constant image, saturation and hue on a grey one).
    grey = tf.fill([2, 2, 3], 0.5)
    for i in range(20):
        out = color_jitter(grey, _seed(i)).numpy()
        assert 0.5 * 0.6 - 1e-6 <= out[0, 0, 0] <= 0.5 * 1.4 + 1e-6
        np.testing.assert_allclose(out[..., 0], out[..., 2], atol=1e-6)


def test_solarize_threshold_is_inclusive_half():
    x = tf.constant([0.0, 0.49, 0.5, 0.8, 1.0])
    np.testing.assert_allclose(augment.solarize(x), [0.0, 0.49, 0.5, 0.2, 0.0], atol=1e-6)


def test_gaussian_blur_preserves_constant_and_mean():
    const = tf.fill([20, 20, 3], 0.3)
    np.testing.assert_allclose(augment.gaussian_blur(const, 2.0), const, atol=1e-6)
    k = augment.gaussian_kernel(1.0).numpy()
    assert len(k) == 13 and abs(k.sum() - 1) < 1e-6
    np.testing.assert_allclose(k[6] / k[7], math.exp(0.5), rtol=1e-5)


# --- random resized crop ---


@pytest.mark.parametrize("h,w", [(64, 64), (30, 200), (500, 333)])
def test_crop_window_in_bounds_and_ranges(h, w):
    for i in range(50):
        y, x, ch, cw = augment.random_resized_crop_window(_seed(i), h, w, scale=(0.08, 1.0)).numpy()
        assert 0 <= y and y + ch <= h and 0 <= x and x + cw <= w and ch > 0 and cw > 0
        if (ch, cw) != _fallback(h, w):
            # rounding of the sides loosens the bounds by up to half a pixel each
            area = ch * cw / (h * w)
            assert 0.08 * 0.8 <= area <= 1.0
            assert 3 / 4 * 0.85 <= cw / ch <= 4 / 3 * 1.15


def _fallback(h, w):
    r = w / h
    if r < 3 / 4:
        return int(round(w / (3 / 4))), w
    if r > 4 / 3:
        return h, int(round(h * 4 / 3))
    return h, w


def test_crop_fallback_is_centre_crop_as_torchvision():
    # An image 1 px high and 400 wide: no attempt can fit, torchvision centre-crops
    # to the ratio bound 4/3 -> h = 1, w = round(4/3) = 1.
    y, x, ch, cw = augment.random_resized_crop_window(_seed(0), 1, 400).numpy()
    assert (ch, cw) == (1, 1) and (y, x) == (0, (400 - 1) // 2)
    # Scale (1, 1) on a 10x100 image: area 1000 at ratio <= 4/3 needs h >= 27 > 10, so fallback.
    y, x, ch, cw = augment.random_resized_crop_window(_seed(0), 10, 100, scale=(1.0, 1.0)).numpy()
    assert (y, x, ch, cw) == (0, (100 - 13) // 2, 10, 13)


@pytest.mark.parametrize("h,w,scale", [(375, 500, (0.08, 1.0)), (10, 100, (0.08, 1.0)), (10, 100, (1.0, 1.0))])
def test_crop_windows_of_several_views_equal_one_view_at_a_time(h, w, scale):
    # Both views' windows in one set of ops (two_view_crops): row v is view v's own window, also when some views
    # take the centre-crop fallback (10x100 at scale 0.08-1: a thin image where many draws fail).
    seeds = [_seed(i) for i in range(40)]
    rows = augment.random_resized_crop_windows(seeds, h, w, scale).numpy()
    singles = np.stack([augment.random_resized_crop_window(s, h, w, scale).numpy() for s in seeds])
    np.testing.assert_array_equal(rows, singles)
    if h == 10 and scale == (0.08, 1.0):
        fell_back = (rows[:, 2] == 10) & (rows[:, 3] == 13)
        assert 0 < fell_back.sum() < len(seeds)  # both kinds of rows occur


# --- the two views ---


def _jpeg(h=40, w=56, mode="RGB"):
    return fixtures_data.encode_image(RNG.integers(0, 255, (h, w, 3), dtype=np.uint8), "JPEG", mode, quality=90)


def test_two_views_shapes_and_determinism():
    data = _jpeg()
    a1, a2 = two_views(data, _seed(1), image_size=32, crop_min=0.08, is_encoded=True)
    b1, b2 = two_views(data, _seed(1), image_size=32, crop_min=0.08, is_encoded=True)
    c1, _ = two_views(data, _seed(2), image_size=32, crop_min=0.08, is_encoded=True)
    assert a1.shape == (32, 32, 3) and a1.dtype == tf.float32
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)
    assert not np.allclose(a1, c1)
    assert not np.allclose(a1, a2)


def test_grayscale_jpeg_png_and_raw_sources_give_rgb_views():
    buf = io.BytesIO()
    Image.fromarray(RNG.integers(0, 255, (30, 20), dtype=np.uint8)).save(buf, format="PNG")
    for src, enc in [(_jpeg(mode="L"), True), (buf.getvalue(), True),
                     (RNG.integers(0, 255, (28, 28, 1), dtype=np.uint8), False)]:
        v1, v2 = two_views(src, _seed(3), image_size=16, crop_min=0.2, is_encoded=enc)
        assert v1.shape == (16, 16, 3) and v2.shape == (16, 16, 3)


def test_default_jpeg_decoding_crops_the_fully_decoded_image_as_the_official_loader():
    # The official loader decodes the whole JPEG (PIL) and crops it. The pre-training default
    # (dataset.jpeg_decode_once, also the faster on real photographs) does the same, so its crops equal those of
    # the decoded array; decode_and_crop_jpeg per view may differ at a window's edge (libjpeg's cropped decode
    # upsamples the chroma there without its neighbours).
    from tf_mocov3 import config_lib
    assert config_lib.base_config().dataset.jpeg_decode_once is True
    for i in range(4):
        data = fixtures_data.encode_image(fixtures_data.photo_like(64, seed=i)[:48], "JPEG", quality=90)
        once = augment.two_view_crops(data, _seed(i), image_size=16, is_encoded=True, jpeg_decode_once=True)
        decoded = augment.two_view_crops(tf.io.decode_jpeg(data, channels=3), _seed(i), image_size=16,
                                         is_encoded=False)
        for a, b in zip(once, decoded):
            np.testing.assert_array_equal(a, b)


def test_jpeg_decode_and_crop_equals_decode_then_crop():
    data = _jpeg(64, 48)
    window = tf.constant([5, 7, 30, 20])
    full = tf.io.decode_jpeg(data, channels=3)
    a = augment.decode_crop_and_resize_jpeg(data, window, 16)
    b = augment.crop_and_resize(full, window, 16)
    np.testing.assert_allclose(a, b, atol=1e-6)


def _unnormalize(x):
    return x.numpy() * np.array(augment.IMAGENET_STD) + np.array(augment.IMAGENET_MEAN)


def test_view_policies_differ_solarize_only_on_view2_blur_always_on_view1():
    # Seeds where view 2's policy coins say "solarize", and the effect of blurring,
    # read from the per-view coin streams exactly as augment.draw_view_randomness draws them.
    solarized = {1: 0, 2: 0}
    blurred = {1: 0, 2: 0}
    for i in range(300):
        for view, seed in ((1, augment._fold(_seed(i), 1)), (2, augment._fold(_seed(i), 2))):
            coins = tf.random.stateless_uniform([6], augment._fold(seed, augment._COINS)).numpy()
            policy = augment.VIEW1 if view == 1 else augment.VIEW2
            solarized[view] += coins[4] < policy["solarize_p"]
            blurred[view] += coins[2] < policy["blur_p"]
    assert solarized[1] == 0 and 30 <= solarized[2] <= 90  # p = 0.2 of 300
    assert blurred[1] == 300 and 10 <= blurred[2] <= 60  # p = 0.1 of 300
    # And on pixels: an all-white image stays bright on view 1 (never solarized) in every seed.
    white = np.full((20, 20, 3), 255, np.uint8)
    for i in range(40):
        v1, _ = two_views(white, _seed(i), image_size=8, crop_min=0.5, is_encoded=False)
        assert _unnormalize(v1).mean() > 0.2  # solarizing white would give 0


def test_eval_preprocess_resize_and_centre_crop():
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, 100:] = 255
    out = augment.eval_preprocess(img, image_size=56)  # resize to 64 x 128, crop 56 x 56
    assert out.shape == (56, 56, 3)
    x = _unnormalize(out)
    assert x[:, :27].max() < 0.05 and x[:, 29:].min() > 0.95


def test_xla_and_op_by_op_views_agree():
    img = RNG.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    for i in range(3):
        a = two_views(img, _seed(i), image_size=16, crop_min=0.08, is_encoded=False, xla=True)
        b = two_views(img, _seed(i), image_size=16, crop_min=0.08, is_encoded=False, xla=False)
        np.testing.assert_allclose(a, b, atol=1e-4)


# --- speed paths: same filter, or a bounded approximation ---


def test_upscale_resize_uses_plain_bilinear_with_same_pixels():
    # Neither side shrinks: the antialiased triangle filter is plain half-pixel bilinear.
    for h, w in [(100, 150), (224, 224), (17, 224)]:
        img = tf.constant(RNG.integers(0, 255, (h, w, 3), dtype=np.uint8))
        ref = tf.clip_by_value(tf.image.resize(img, [224, 224], antialias=True) / 255.0, 0, 1)
        np.testing.assert_allclose(augment._resize(img, 224), ref, atol=2e-6)


def _photo_like_jpeg(size=512, seed=0):
    """Smooth gradients + flat blobs + mild noise (as benchmarks/input_pipeline.py writes), q90."""
    return fixtures_data.encode_image(fixtures_data.photo_like(size, seed=seed), "JPEG", quality=90)


def test_decode_and_crop_jpeg_ratio_takes_window_in_scaled_coordinates():
    data = _photo_like_jpeg(128)
    half = tf.io.decode_jpeg(data, channels=3, ratio=2)  # 64 x 64
    crop = tf.io.decode_and_crop_jpeg(data, [8, 16, 40, 30], channels=3, ratio=2)
    np.testing.assert_array_equal(crop, half[8:48, 16:46])


def test_dct_ratio_keeps_the_scaled_crop_at_least_the_output_size():
    assert augment.dct_ratio(tf.constant([0, 0, 447, 512]), 224).numpy() == 1
    assert augment.dct_ratio(tf.constant([0, 0, 448, 500]), 224).numpy() == 2
    assert augment.dct_ratio(tf.constant([0, 0, 900, 1000]), 224).numpy() == 4
    assert augment.dct_ratio(tf.constant([0, 0, 1792, 1800]), 224).numpy() == 8


def test_dct_scaled_decode_is_exact_at_ratio_1_and_close_at_ratio_2():
    rng = np.random.default_rng(1)
    diffs = []
    for k in range(4):
        data = _photo_like_jpeg(512, seed=k)
        for _ in range(3):
            h, w = int(rng.integers(448, 513)), int(rng.integers(448, 513))
            window = tf.constant([int(rng.integers(0, 513 - h)), int(rng.integers(0, 513 - w)), h, w])
            exact = augment.decode_crop_and_resize_jpeg(data, window, 224).numpy() * 255
            same = augment.decode_crop_and_resize_jpeg_scaled(data, window, 224, ratio=1).numpy() * 255
            np.testing.assert_allclose(same, exact, atol=1e-3)
            fast = augment.decode_crop_and_resize_jpeg_scaled(data, window, 224).numpy() * 255
            diffs.append(np.abs(fast - exact).mean())
    # Measured on these images: mean |diff| ~1.2 of 255 (worst image ~1.6).
    assert max(diffs) < 2.0, diffs


def test_two_views_with_dct_scaling_deterministic():
    data = _photo_like_jpeg(256)
    a = two_views(data, _seed(4), image_size=64, is_encoded=True, jpeg_dct_scaling=True)
    b = two_views(data, _seed(4), image_size=64, is_encoded=True, jpeg_dct_scaling=True)
    c = two_views(data, _seed(4), image_size=64, is_encoded=True)
    for x, y, z in zip(a, b, c):
        assert x.shape == (64, 64, 3)
        np.testing.assert_array_equal(x, y)
        assert np.abs(x - z).mean() < 0.1  # same crops and decisions; small DCT-scaling difference


def test_dct_scaled_decode_in_a_graph():
    data = tf.constant(_photo_like_jpeg(512))
    f = tf.function(lambda d, w: augment.decode_crop_and_resize_jpeg_scaled(d, w, 224))
    for window in ([0, 0, 480, 470], [10, 20, 300, 200]):
        np.testing.assert_allclose(f(data, tf.constant(window)),
                                   augment.decode_crop_and_resize_jpeg_scaled(data, tf.constant(window), 224),
                                   atol=1e-6)


# --- speed paths that must give the same pixels as the straightforward ops ---


@pytest.mark.parametrize("h,w", [(512, 512), (300, 241), (230, 500), (100, 400), (225, 224)])
def test_antialiased_resize_equals_scale_and_translate(h, w):
    # Two row passes over transposed buffers: the same spans, weights and summation order as the
    # single ScaleAndTranslate op behind tf.image.resize(antialias=True).
    img = tf.constant(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8))
    ref = tf.image.resize(img, [224, 224], method="bilinear", antialias=True)
    np.testing.assert_allclose(augment.antialiased_resize(img, 224), ref, rtol=0, atol=1e-4)  # of 255
    np.testing.assert_allclose(augment._resize(img, 224), tf.clip_by_value(ref / 255.0, 0, 1), atol=1e-6)


def _reference_blur(image, sigma, radius=augment.BLUR_RADIUS):
    """The former [H, W, C] formulation (tf.pad SYMMETRIC + shifted slices)."""
    k = augment.gaussian_kernel(tf.cast(sigma, tf.float32), radius)
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    x = tf.pad(image, [[radius, radius], [0, 0], [0, 0]], mode="SYMMETRIC")
    x = tf.add_n([k[i] * x[i:i + h] for i in range(2 * radius + 1)])
    x = tf.pad(x, [[0, 0], [radius, radius], [0, 0]], mode="SYMMETRIC")
    return tf.add_n([k[i] * x[:, i:i + w] for i in range(2 * radius + 1)])


@pytest.mark.parametrize("shape", [(32, 32, 3), (17, 23, 3), (224, 224, 3)])
def test_blur_in_2d_layout_equals_former_blur(shape):
    img = tf.constant(RNG.uniform(0, 1, shape).astype(np.float32))
    compiled = tf.function(augment.gaussian_blur, jit_compile=True)
    for sigma in (0.1, 0.7, 2.0):
        ref = _reference_blur(img, sigma)
        np.testing.assert_allclose(augment.gaussian_blur(img, sigma), ref, atol=1e-6)
        np.testing.assert_allclose(compiled(img, tf.constant(sigma)), ref, atol=1e-5)


def test_batch_level_views_equal_per_example_views():
    # pipelines.py: two_view_inputs per example, augment_two_view_batch per batch == two_views.
    raw = RNG.integers(0, 255, (12, 40, 36, 3), dtype=np.uint8)
    inputs = [augment.two_view_inputs(raw[i], _seed(i), image_size=24, crop_min=0.08, is_encoded=False)
              for i in range(len(raw))]
    batch = [tf.stack([x[j] for x in inputs]) for j in range(6)]
    v1, v2 = augment.augment_two_view_batch(*batch)
    assert v1.dtype == v2.dtype == tf.uint8  # normalised on the device (augment.normalize_uint8)
    # The batch form rounds each view to uint8 levels before normalising: at most 0.5/255 per value, plus the
    # former float round-off (1e-5 after normalising), divided by the smallest ImageNet std once normalised.
    atol = (0.5 / 255 + 1e-5) / min(augment.IMAGENET_STD)
    for i in range(len(raw)):
        r1, r2 = two_views(raw[i], _seed(i), image_size=24, crop_min=0.08, is_encoded=False)
        np.testing.assert_allclose(augment.normalize_uint8(v1[i]), r1, atol=atol)
        np.testing.assert_allclose(augment.normalize_uint8(v2[i]), r2, atol=atol)
    # The batch size does not change an example's pixels (replica layouts depend on it).
    s1, s2 = augment.augment_two_view_batch(*[x[:5] for x in batch])
    np.testing.assert_array_equal(s1, v1[:5])
    np.testing.assert_array_equal(s2, v2[:5])
