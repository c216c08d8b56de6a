"""Writers of test data, shared by tests/ and benchmarks/: IDX files, image folders, JPEG/PNG bytes, corrupt files,
the ImageNet and CIFAR-10 download archives and TFDS builds from them.

Import it as `from tf_mocov3.testing import fixtures_data` (the package is installed by scripts/setup.sh). It needs
only numpy and Pillow (the TFDS builds import tensorflow_datasets inside them), so the benchmarks can use it without
pytest or TensorFlow. It writes to local folders only (a test's tmp_path, a benchmark's scratch folder), so plain
file calls are right here, unlike in the rest of the package, where a path may be gs:// (tf.io.gfile).
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


# The CIFAR-10 binary release (https://www.cs.toronto.edu/~kriz/cifar.html) as TFDS's cifar10 builder downloads it.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_ARCHIVE = "cifar-10-binary.tar.gz"
CIFAR10_DIR = "cifar-10-batches-bin"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch.bin"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def cifar_like(label, rng):
    """A uint8 (32, 32, 3) image that shows its class: a class colour, stripes whose angle and frequency depend on the
    class, and noise, so that even a tiny classifier can tell the ten classes apart."""
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32) / 32
    angle, freq = np.pi * label / 10, 1 + label % 4
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy) + rng.uniform(0, 6))
    colour = np.array([(label * 37) % 256, (label * 91 + 60) % 256, (255 - label * 23) % 256], np.float32) / 255
    img = 0.55 * colour + 0.35 * stripes[..., None] + rng.normal(0, 0.05, (32, 32, 3))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def cifar10_records(images, labels):
    """The bytes of a CIFAR-10 binary batch file: per image 1 label byte, then the 1024 red, 1024 green and 1024 blue
    bytes of the 32x32 image, rows first."""
    images, labels = np.asarray(images, np.uint8), np.asarray(labels, np.uint8)
    if images.shape[1:] != (32, 32, 3) or len(images) != len(labels):
        raise ValueError(f"CIFAR-10 records need images [N, 32, 32, 3] and N labels, got {images.shape} and "
                         f"{labels.shape}.")
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
    return np.concatenate([labels[:, None], planes], axis=1).tobytes()


def write_cifar10(folder, train_per_class=4, test_per_class=2, seed=0):
    """Writes FOLDER/cifar-10-binary.tar.gz with the release's layout (cifar-10-batches-bin/: data_batch_1..5.bin,
    test_batch.bin, batches.meta.txt) of `cifar_like` images, class c at every 10th place, the training images dealt
    round-robin to the five batch files.

    Returns {"archive": its path, "train": (images, labels), "test": (images, labels)}, the training images in the
    order of the files (data_batch_1's first), as TFDS numbers them.
    """
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)

    def split(per_class):
        labels = np.tile(np.arange(10, dtype=np.uint8), per_class)
        return np.stack([cifar_like(int(label), rng) for label in labels]), labels

    train, test = split(train_per_class), split(test_per_class)
    files = {name: (train[0][k::5], train[1][k::5]) for k, name in enumerate(CIFAR10_TRAIN_FILES)}
    files[CIFAR10_TEST_FILE] = test
    archive = os.path.join(folder, CIFAR10_ARCHIVE)
    with tarfile.open(archive, "w:gz") as tar:
        def add(name, data):
            info = tarfile.TarInfo(f"{CIFAR10_DIR}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for name, (images, labels) in files.items():
            add(name, cifar10_records(images, labels))
        add("batches.meta.txt", ("\n".join(CIFAR10_CLASSES) + "\n\n").encode())
        add("readme.html", b'<meta HTTP-EQUIV="REFRESH" content="0; url=http://www.cs.toronto.edu/~kriz/cifar.html">')
    ordered = [files[name] for name in CIFAR10_TRAIN_FILES]
    train = (np.concatenate([images for images, _ in ordered]), np.concatenate([labels for _, labels in ordered]))
    return {"archive": archive, "train": train, "test": test}


def build_tfds_cifar10(root, file_format="tfrecord", **sizes):
    """Builds TFDS's real cifar10 in ROOT (the data_dir) from tiny archives written by `write_cifar10`, offline.

    The archive goes where TFDS looks for a download the user made by hand: ROOT/downloads/manual/
    cifar-10-binary.tar.gz (DownloadManager finds a registered URL's file there by name, instead of fetching it).
    The one thing replaced is the URL's registered size and sha256 (TFDS's url_checksums/cifar10.txt, those of the
    real 170 MB archive): for this build they are the fixture's, so TFDS's own checksum check passes. Everything
    else is TFDS's code: the checksum check, the extraction of the .tar.gz, reading the label names and the batch
    files (cifar.py), example encoding (PNG), shuffling by key, TFRecord / array_record writing, dataset_info.json.
    `try_download_gcs=False`: never fetch TFDS's prepared copy from GCS. Returns (root, the write_cifar10 dict).
    """
    from unittest import mock  # pylint: disable=import-outside-toplevel

    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    manual_dir = os.path.join(str(root), "downloads", "manual")
    written = write_cifar10(manual_dir, **sizes)
    url_info = tfds.download.checksums.compute_url_info(written["archive"])
    builder = tfds.builder("cifar10", data_dir=str(root), file_format=file_format)
    with mock.patch.object(type(builder), "url_infos", {CIFAR10_URL: url_info}):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir=manual_dir, try_download_gcs=False))
    return str(root), written
