"""RandAugment (data/randaugment.py) against timm's rand-m9-mstd0.5-inc1 and PIL's arithmetic."""

import numpy as np
from PIL import Image
from PIL import ImageEnhance
from PIL import ImageOps
import pytest
import tensorflow as tf

from tf_mocov3.data import randaugment as ra
from tf_mocov3.testing.fixtures_data import photo_like

# timm auto_augment._RAND_INCREASING_TRANSFORMS, transcribed.
TIMM_INCREASING = ["AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
                   "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
                   "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"]


def timm_level(name, m):
    """timm's LEVEL_TO_ARG (hparams: translate_pct 0.45) at magnitude m, before the random sign."""
    return {"Rotate": (m / 10) * 30.0, "ShearX": (m / 10) * 0.3, "ShearY": (m / 10) * 0.3,
            "TranslateXRel": (m / 10) * 0.45, "TranslateYRel": (m / 10) * 0.45,
            "ColorIncreasing": (m / 10) * 0.9, "ContrastIncreasing": (m / 10) * 0.9,
            "BrightnessIncreasing": (m / 10) * 0.9, "SharpnessIncreasing": (m / 10) * 0.9,
            "PosterizeIncreasing": 4 - int((m / 10) * 4), "SolarizeIncreasing": 256 - int((m / 10) * 256),
            "SolarizeAdd": int((m / 10) * 110)}.get(name)


def test_op_list_and_magnitude_mapping_are_timms_for_m9_mstd05():
    assert list(ra.RAND_OPS) == TIMM_INCREASING
    spec = ra.RandAugmentSpec("rand-m9-mstd0.5-inc1")
    assert (spec.magnitude, spec.magnitude_std, spec.num_ops, spec.prob) == (9.0, 0.5, 2, 0.5)
    for name in TIMM_INCREASING:
        for m in (0.0, 4.3, 9.0, 10.0):
            got, want = ra.level_args(name, m), timm_level(name, m)
            assert got == (pytest.approx(want) if want is not None else None), (name, m)
    # At m = 9: rotate 27 deg, shear 0.27, translate 0.405, factor 1 +- 0.81, 1 bit, threshold 26, add 99.
    assert [ra.level_args(n, 9.0) for n in ("PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd")] == [1, 26, 99]
    assert ra.FILL == tuple(min(255, round(255 * x)) for x in (0.485, 0.456, 0.406))  # DeiT's img_mean
    with pytest.raises(ValueError, match="inc1"):
        ra.RandAugmentSpec("rand-m9-mstd0.5")


def test_draws_are_ops_uniform_p05_magnitude_n9_05_clipped():
    spec = ra.RandAugmentSpec("rand-m9-mstd0.5-inc1")
    draws = [ra.draw(tf.constant([s, 1], tf.int64), spec) for s in range(400)]
    ops = np.concatenate([d[0].numpy() for d in draws])
    apply = np.concatenate([d[1].numpy() for d in draws])
    mags = np.concatenate([d[2].numpy() for d in draws])
    assert set(ops.tolist()) == set(range(15)) and abs(apply.mean() - 0.5) < 0.06
    assert abs(mags.mean() - 9.0) < 0.06 and abs(mags.std() - 0.5) < 0.06 and mags.max() <= 10.0


def _pil(image):
    return Image.fromarray(image.astype(np.uint8))


@pytest.mark.parametrize("name", ["AutoContrast", "Equalize", "Invert", "PosterizeIncreasing", "SolarizeIncreasing",
                                  "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
                                  "SharpnessIncreasing"])
def test_colour_ops_match_pil(name):
    image = photo_like(48, seed=3)
    image[..., 2] = image[..., 2] // 2 + 40  # a channel that autocontrast / equalize must stretch
    m = 7.3
    got = ra.apply_op(name, tf.constant(image, tf.float32), tf.constant(m), tf.constant(1.0)).numpy()
    level = timm_level(name, m)
    pil = _pil(image)
    want = {
        "AutoContrast": lambda: ImageOps.autocontrast(pil),
        "Equalize": lambda: ImageOps.equalize(pil),
        "Invert": lambda: ImageOps.invert(pil),
        "PosterizeIncreasing": lambda: ImageOps.posterize(pil, level),
        "SolarizeIncreasing": lambda: ImageOps.solarize(pil, level),
        "SolarizeAdd": lambda: pil.point([min(255, i + level) if i < 128 else i for i in range(256)] * 3),
        "ColorIncreasing": lambda: ImageEnhance.Color(pil).enhance(1 + level),
        "ContrastIncreasing": lambda: ImageEnhance.Contrast(pil).enhance(1 + level),
        "BrightnessIncreasing": lambda: ImageEnhance.Brightness(pil).enhance(1 + level),
        "SharpnessIncreasing": lambda: ImageEnhance.Sharpness(pil).enhance(1 + level),
    }[name]()
    diff = np.abs(got - np.asarray(want, np.float32))
    assert diff.max() <= 1.0 and diff.mean() < 0.05, (name, diff.max(), diff.mean())


def test_geometric_ops_follow_pils_affine_and_fill_with_the_mean():
    image = photo_like(32, seed=4)
    pil = _pil(image)
    fill = ra.FILL
    # An integer translation (m = 6.25: 0.045 * 6.25 * 32 = 9 pixels) samples exact pixels: PIL's result, and the
    # DeiT mean where it leaves the image.
    got = ra.apply_op("TranslateXRel", tf.constant(image, tf.float32), tf.constant(6.25), tf.constant(1.0)).numpy()
    pixels = ra.level_args("TranslateXRel", 6.25) * 32
    assert pixels == pytest.approx(9.0)
    want = pil.transform(pil.size, Image.AFFINE, (1, 0, 9, 0, 1, 0), resample=Image.BILINEAR, fillcolor=fill)
    np.testing.assert_allclose(got, np.asarray(want, np.float32), atol=1.0)
    np.testing.assert_array_equal(got[:, -9:], np.broadcast_to(np.array(fill, np.float32), (32, 9, 3)))
    rotated = ra.apply_op("Rotate", tf.constant(image, tf.float32), tf.constant(9.0), tf.constant(-1.0)).numpy()
    want = np.asarray(pil.rotate(-27.0, resample=Image.BILINEAR, fillcolor=fill), np.float32)
    inner = (slice(3, -3), slice(3, -3))
    assert np.mean(np.abs(rotated - want)[inner]) < 2.0
    np.testing.assert_array_equal(rotated[0, 0], fill)  # a corner rotated out of the image


def test_rand_augment_is_a_function_of_the_seed():
    spec = ra.RandAugmentSpec("rand-m9-mstd0.5-inc1")
    image = tf.constant(photo_like(24, seed=5), tf.float32)
    a = ra.rand_augment(image, tf.constant([1, 2], tf.int64), spec).numpy()
    b = ra.rand_augment(image, tf.constant([1, 2], tf.int64), spec).numpy()
    np.testing.assert_array_equal(a, b)
    outs = [ra.rand_augment(image, tf.constant([s, 3], tf.int64), spec).numpy() for s in range(16)]
    unchanged = sum(np.array_equal(o, image.numpy()) for o in outs)
    assert 0 < unchanged < 12  # p 0.5 per op, 2 ops: about a quarter of the images untouched
    assert all(o.min() >= 0 and o.max() <= 255 and np.array_equal(o, np.round(o)) for o in outs)
