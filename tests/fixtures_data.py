"""Writers of test data, shared by tests/ and benchmarks/: IDX files, image folders, JPEG/PNG bytes, corrupt files.

Import it as `from tests import fixtures_data` (the repository root on sys.path, as tests/conftest.py and the
benchmarks arrange). It needs only numpy and Pillow, so the benchmarks can use it without pytest.
"""

import gzip
import io
import os
import tarfile

import numpy as np
from PIL import Image

# The IDX type codes (http://yann.lecun.com/exdb/mnist/) and the big-endian dtype each one stores.
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

# The file names of the Fashion-MNIST IDX release, by split.
FASHION_MNIST_PREFIX = {"train": "train", "test": "t10k"}


def write_idx(path, array, code=0x08):
    """Writes `array` as a gzipped IDX file: magic (0, 0, type code, ndim), big-endian dims, big-endian values."""
    if code not in IDX_DTYPES:
        raise ValueError(f"IDX type code {code:#x} is not one of {sorted(hex(c) for c in IDX_DTYPES)}; pick one.")
    array = np.asarray(array)
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, IDX_DTYPES[code]).tobytes())


def write_fashion_mnist(folder, images, labels, split="train"):
    """Writes one split in the Fashion-MNIST IDX layout ({train,t10k}-{images-idx3,labels-idx1}-ubyte.gz)."""
    os.makedirs(folder, exist_ok=True)
    prefix = FASHION_MNIST_PREFIX[split]
    write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), np.asarray(images, np.uint8))
    write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"), np.asarray(labels, np.uint8))
    return str(folder)


def random_fashion_mnist(folder, n=40, seed=0, split="train"):
    """A fake Fashion-MNIST split of n random 28x28 images with labels 0..9 in turn; returns the folder."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
    return write_fashion_mnist(folder, images, (np.arange(n) % 10).astype(np.uint8), split)


def photo_like(size=512, seed=0, rng=None):
    """A uint8 (size, size, 3) image like a photo: smooth colour gradients, six flat blobs, mild noise."""
    rng = np.random.default_rng(seed) if rng is None else rng
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.zeros((size, size, 3), np.float32)
    for c in range(3):
        a, b, f = rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(1, 6)
        img[..., c] = 0.5 + 0.35 * np.sin(f * (a * xx + b * yy) * np.pi + rng.uniform(0, 6))
    for _ in range(6):
        cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.03, 0.2)
        img[((yy - cy) ** 2 + (xx - cx) ** 2) < r * r] = rng.uniform(0, 1, 3)
    img += rng.normal(0, 0.04, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def encode_image(pixels, fmt="JPEG", mode="RGB", quality=90):
    """The bytes of `pixels` (uint8 HxWx3) converted to `mode` and encoded as `fmt` (JPEG at `quality`, or PNG)."""
    buf = io.BytesIO()
    image = Image.fromarray(np.asarray(pixels, np.uint8)).convert(mode)
    image.save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


def save_image(path, pixels, fmt=None, mode="RGB", quality=None):
    """Saves uint8 HxWx3 `pixels` converted to `mode`; the format comes from `fmt` or the file extension."""
    options = {} if quality is None else {"quality": quality}
    Image.fromarray(np.asarray(pixels, np.uint8)).convert(mode).save(path, format=fmt, **options)


def write_truncated(path, source_path):
    """Writes the first half of the file at `source_path` to `path`: an image that no decoder can read."""
    with open(source_path, "rb") as f:
        good = f.read()
    with open(path, "wb") as f:
        f.write(good[: len(good) // 2])


def write_image_folder(root, classes=("cat", "dog"), per_class=3, size=(20, 24), seed=0):
    """An image-folder data set: root/<class>/<i>.{jpg,png} (even i JPEG, odd i PNG) of random RGB pixels."""
    rng = np.random.default_rng(seed)
    for name in classes:
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, tuple(size) + (3,), dtype=np.uint8)
            ext = "png" if i % 2 else "jpg"
            save_image(os.path.join(root, name, f"{i}.{ext}"), pixels)
    return str(root)


def write_mixed_image_folder(root, seed=1):
    """Two classes of JPEG/PNG files in RGB and grayscale and odd sizes, one truncated JPEG and one text file.

    a_dog/: 0.jpg (33x33 gray), 1.png (50x20 RGB), corrupt.jpg (truncated); b_cat/: 0.jpg (40x30 RGB),
    1.png (25x60 gray), notes.txt. So 4 good images, 1 corrupt one and 1 file that is not an image.
    """
    rng = np.random.default_rng(seed)
    for cls, specs in {"b_cat": [((40, 30), "RGB", "JPEG"), ((25, 60), "L", "PNG")],
                       "a_dog": [((33, 33), "L", "JPEG"), ((50, 20), "RGB", "PNG")]}.items():
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        for i, ((h, w), mode, fmt) in enumerate(specs):
            save_image(os.path.join(root, cls, f"{i}.{fmt.lower().replace('jpeg', 'jpg')}"),
                       rng.integers(0, 255, (h, w, 3), dtype=np.uint8), fmt=fmt, mode=mode)
    write_truncated(os.path.join(root, "a_dog", "corrupt.jpg"), os.path.join(root, "a_dog", "0.jpg"))
    with open(os.path.join(root, "b_cat", "notes.txt"), "w") as f:
        f.write("ignored")
    return str(root)


def write_photo_folder(folder, count=256, size=512, seed=0, classes=2, quality=90):
    """`count` photo-like JPEGs (quality 90) in class_0 ... class_{classes-1}, image i in class i % classes."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        cls = os.path.join(folder, f"class_{i % classes}")
        os.makedirs(cls, exist_ok=True)
        save_image(os.path.join(cls, f"img_{i:04d}.jpg"), photo_like(size, rng=rng), quality=quality)
    return str(folder)


def write_imagenet_manual(manual, synsets=("n01440764", "n01443537"), per_class=8, val=4):
    """ILSVRC2012_img_train.tar (one tar per synset) and ILSVRC2012_img_val.tar of tiny JPEGs, TFDS's layout (the
    official manual download that `tfds build imagenet2012` reads from downloads/manual/)."""
    os.makedirs(manual, exist_ok=True)

    def add(tar, name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(os.path.join(manual, "ILSVRC2012_img_train.tar"), "w") as train:
        for k, synset in enumerate(synsets):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as inner:
                for i in range(per_class):
                    add(inner, f"{synset}_{i}.JPEG", encode_image(photo_like(40, seed=10 * k + i)))
            add(train, f"{synset}.tar", buf.getvalue())
    with tarfile.open(os.path.join(manual, "ILSVRC2012_img_val.tar"), "w") as val_tar:
        for i in range(val):
            add(val_tar, f"ILSVRC2012_val_{i + 1:08d}.JPEG", encode_image(photo_like(36, seed=100 + i)))


def build_tfds_imagenet(root, file_format="tfrecord", num_shards=None, **manual):
    """Writes the manual-download archives under root/downloads/manual and builds TFDS's real imagenet2012 from them
    in `file_format` ("tfrecord" or "array_record"), in `num_shards` files per split (None: TFDS decides, one
    here); returns root (the data_dir)."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    manual_dir = os.path.join(str(root), "downloads", "manual")
    write_imagenet_manual(manual_dir, **manual)
    tfds.builder("imagenet2012", data_dir=str(root), file_format=file_format).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir, num_shards=num_shards))
    return str(root)
