"""Data sources: open a data set by name, as arrays, encoded bytes, file paths or a stream.

Sources (`config.dataset.name`):
- TFDS: imagenet2012 (manual download), cifar10, cifar100, oxford_flowers102, oxford_iiit_pet,
  fashion_mnist; read from `config.dataset.data_dir`, never downloaded at run time.
- 'image_folder': `config.dataset.path` with one sub-folder per class (sorted names = labels);
  JPEG / PNG / GIF / BMP of any size, grayscale or RGB. If `path/<split>` exists it is used.
- 'fashion_mnist_idx': the original Fashion-MNIST IDX files (gzipped or not) under
  `config.dataset.path` (default /usr/share/datasets/fashion-mnist), split 'train' or 'test'.

Random-access sources (Fashion-MNIST arrays, image-folder file lists, and TFDS data sets except
imagenet2012, which are loaded encoded into memory once at start-up: `config.dataset.in_memory`)
follow the example order of order.py exactly. imagenet2012 (or any TFDS set with `in_memory=False`) is
streamed: records are read in TFDS's deterministic order and the pipelines shuffle them with a buffer of
`config.dataset.shuffle_buffer` (order.py). TFDS's array_record random access is not used: it goes
through a Python callback inside tf.data, which is GIL-bound.

`open_labelled(dataset_config, split)` is the one way to open a labelled split ("a+b" joins splits); its
problems are `LabelledSplitError`s, one sentence naming the fix. The input pipelines are in pipelines.py.

Bad files in an image folder: every file is checked at start-up (signature and end marker:
JPEG FFD8 ... FFD9, PNG signature ... IEND, GIF ... 3B, BMP size field); a bad file is skipped
with one warning naming it and a total at the end (pipelines.py also ignores decoding errors as a
last resort).
"""

import dataclasses
import gzip
import logging
import os
from concurrent import futures

import numpy as np
import tensorflow as tf

logger = logging.getLogger(__name__)

TFDS_NAMES = ("imagenet2012", "cifar10", "cifar100", "oxford_flowers102", "oxford_iiit_pet",
              "fashion_mnist")
SOURCE_NAMES = TFDS_NAMES + ("image_folder", "fashion_mnist_idx")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
_STREAMED_BY_DEFAULT = ("imagenet2012",)


def setting(cfg, key, default=None):
    """`cfg.key` of a ConfigDict, dict or object; `default` when missing or None."""
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if value is None else value


# === IDX files (Fashion-MNIST) ===

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path):
    """Parse an IDX file (optionally gzipped): magic 00 00 <dtype> <ndim>, big-endian uint32 dims."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic {raw[:4].hex()}).")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    count = int(np.prod(dims)) if dims else 1
    if len(raw) - offset != count * dtype.itemsize:
        raise ValueError(f"{path}: IDX header says {dims} but the file holds "
                         f"{(len(raw) - offset) // dtype.itemsize} values (truncated?).")
    return np.frombuffer(raw, dtype, count=count, offset=offset).reshape(dims).astype(dtype.newbyteorder("="))


def _find(directory, stem):
    for name in (stem + ".gz", stem):
        if os.path.isfile(os.path.join(directory, name)):
            return os.path.join(directory, name)
    raise ValueError(f"Fashion-MNIST file {stem}(.gz) is missing from {directory}: install it with "
                     f"`apt-get install dataset-fashion-mnist` or set config.dataset.path to the folder "
                     f"holding the four IDX files.")


def load_fashion_mnist_idx(path=None, split="train"):
    """-> (images uint8 [N, 28, 28, 1], labels int64 [N])."""
    path = path or FASHION_MNIST_DIR
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"fashion_mnist_idx has splits 'train' and 'test', not {split!r}.")
    if not os.path.isdir(path):
        raise ValueError(f"Fashion-MNIST folder {path} does not exist: install it with "
                         f"`apt-get install dataset-fashion-mnist` or set config.dataset.path.")
    images = read_idx(_find(path, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(path, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"Fashion-MNIST files in {path} are inconsistent: images {images.shape}, "
                         f"labels {labels.shape}.")
    return images[..., None].astype(np.uint8), labels.astype(np.int64)


# === Image folders ===


def check_image_file(path):
    """Cheap integrity check from the first and last bytes; returns None if fine, else the reason."""
    try:
        size = os.path.getsize(path)
        if size < 16:
            return "file too small"
        with open(path, "rb") as f:
            head = f.read(16)
            f.seek(max(0, size - 64))
            tail = f.read()
    except OSError as e:
        return f"unreadable ({e})"
    if head[:3] == b"\xff\xd8\xff":
        return None if b"\xff\xd9" in tail else "truncated JPEG (no end-of-image marker)"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return None if b"IEND" in tail else "truncated PNG (no IEND chunk)"
    if head[:4] == b"GIF8":
        return None if b"\x3b" in tail[-4:] else "truncated GIF"
    if head[:2] == b"BM":
        return None if int.from_bytes(head[2:6], "little") <= size else "truncated BMP"
    return "not a JPEG, PNG, GIF or BMP file"


def list_image_folder(path, split="train", validate=True):
    """-> (sorted file paths, int64 labels, class names). Bad files are skipped with a warning."""
    if not path:
        raise ValueError("dataset.name='image_folder' needs config.dataset.path: a folder with one "
                         "sub-folder of images per class.")
    if os.path.isdir(os.path.join(path, split)):
        path = os.path.join(path, split)
    if not os.path.isdir(path):
        raise ValueError(f"Image folder {path} does not exist: set config.dataset.path to a folder "
                         f"with one sub-folder of images per class.")
    classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    files, labels = [], []
    for label, name in enumerate(classes):
        for root, _, names in sorted(os.walk(os.path.join(path, name))):
            for fname in sorted(names):
                if fname.lower().endswith(IMAGE_EXTENSIONS):
                    files.append(os.path.join(root, fname))
                    labels.append(label)
    if not files:
        raise ValueError(f"Image folder {path} holds no images: put JPEG/PNG files in one sub-folder "
                         f"per class (e.g. {path}/dog/1.jpg).")
    if validate:
        with futures.ThreadPoolExecutor(32) as pool:
            problems = list(pool.map(check_image_file, files))
        bad = [(f, p) for f, p in zip(files, problems) if p is not None]
        for f, problem in bad:
            logger.warning("Skipping bad image %s: %s.", f, problem)
        if bad:
            logger.warning("Skipped %d of %d files in %s that are not valid images.",
                           len(bad), len(files), path)
            keep = [p is None for p in problems]
            files = [f for f, k in zip(files, keep) if k]
            labels = [l for l, k in zip(labels, keep) if k]
        if not files:
            raise ValueError(f"Image folder {path} holds no valid images (all {len(bad)} failed the "
                             f"integrity check); replace them with readable JPEG/PNG files.")
    return files, np.asarray(labels, np.int64), classes


# === TFDS ===


def _tfds_builder(name, data_dir):
    import tensorflow_datasets as tfds  # slow import; only when used

    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        where = builder.data_dir
        root = data_dir or "~/tensorflow_datasets"
        if name == "imagenet2012":
            fix = (f"download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from "
                   f"image-net.org into {root}/downloads/manual/ and run "
                   f"`tfds build imagenet2012 --data_dir={root}` once")
        else:
            fix = (f"run `tfds build {name} --data_dir={root}` once on a machine with internet "
                   f"and copy {root}/{name} here")
        raise ValueError(f"TFDS data set {name!r} is not prepared in {where} (training never "
                         f"downloads): {fix}, or set config.dataset.data_dir.")
    return builder


def _tfds_split(builder, split):
    if split not in builder.info.splits:
        raise ValueError(f"TFDS data set {builder.name!r} has splits {sorted(builder.info.splits)}, "
                         f"not {split!r}.")
    return split


def _tfds_encoded(builder, split):
    import tensorflow_datasets as tfds

    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders={"image": tfds.decode.SkipDecoding()},
                            read_config=tfds.ReadConfig(interleave_cycle_length=1))
    return ds.map(lambda ex: (ex["image"], ex["label"]))


# === Sources ===


@dataclasses.dataclass
class Source:
    """A data set as the pipeline sees it.

    kind: 'array' (uint8 [N, H, W, C] in `images`), 'bytes' (encoded images in `images`),
    'paths' (file names in `images`) or 'stream' (`stream()` gives (encoded, label) in a
    deterministic order).
    """
    name: str
    kind: str
    num_examples: int
    num_classes: int
    images: object = None
    labels: object = None
    stream: object = None

    @property
    def is_encoded(self):
        return self.kind != "array"

    def fetch(self, index):
        """Image (decoded array or encoded bytes) of example `index` (random-access kinds)."""
        if self.kind == "paths":
            return tf.io.read_file(tf.gather(self.images, index))
        return tf.gather(self.images, index)


def load_source(dataset_config, split=None):
    """Open the source named by `dataset_config.name` (see the module docstring)."""
    name = setting(dataset_config, "name")
    split = split or setting(dataset_config, "split", "train")
    path = setting(dataset_config, "path")
    if name == "fashion_mnist_idx":
        images, labels = load_fashion_mnist_idx(path, split)
        return Source(name, "array", len(images), 10, tf.constant(images), labels)
    if name == "image_folder":
        files, labels, classes = list_image_folder(path, split, setting(dataset_config, "validate_files", True))
        return Source(name, "paths", len(files), len(classes), tf.constant(files), labels)
    if name in TFDS_NAMES:
        builder = _tfds_builder(name, setting(dataset_config, "data_dir"))
        split = _tfds_split(builder, split)
        num_examples = builder.info.splits[split].num_examples
        num_classes = builder.info.features["label"].num_classes
        if num_examples == 0:
            raise ValueError(f"TFDS split {name}/{split} in {builder.data_dir} is empty: rebuild it.")
        if setting(dataset_config, "in_memory", name not in _STREAMED_BY_DEFAULT):
            images, labels = [], []
            for img, label in _tfds_encoded(builder, split).batch(1024).as_numpy_iterator():
                images.extend(img)
                labels.append(label)
            return Source(name, "bytes", len(images), num_classes, tf.constant(images, tf.string),
                          np.concatenate(labels).astype(np.int64))
        return Source(name, "stream", num_examples, num_classes,
                      stream=lambda: _tfds_encoded(builder, split))
    raise ValueError(f"Unknown dataset.name {name!r}; valid names: {', '.join(SOURCE_NAMES)}.")


# === Labelled splits ===


class LabelledSplitError(ValueError):
    """A split that cannot serve as labelled data (unreadable, unlabelled, < 2 classes); one sentence with the fix."""


def _check_has_class_folders(dataset_config, split):
    """An image folder whose images sit directly in it (no class sub-folders) has no labels."""
    path = setting(dataset_config, "path")
    if setting(dataset_config, "name") != "image_folder" or not path:
        return
    if os.path.isdir(os.path.join(path, split)):
        path = os.path.join(path, split)
    if not os.path.isdir(path):
        return  # list_image_folder names the missing folder
    entries = os.listdir(path)
    loose = [e for e in entries if e.lower().endswith(IMAGE_EXTENSIONS)]
    if loose and not any(os.path.isdir(os.path.join(path, e)) for e in entries):
        raise LabelledSplitError(f"Image folder {path} has no labels: its images sit directly in it; put them in "
                                 f"one sub-folder per class (e.g. {path}/cat/{loose[0]}).")


def _concatenate(sources, split):
    first = sources[0]
    if any(s.kind != first.kind or s.kind == "stream" for s in sources):
        raise LabelledSplitError(f"Cannot join the splits {split!r} of {first.name} (streamed or mixed sources); "
                                 f"set config.dataset.in_memory=True.")
    images = tf.concat([s.images for s in sources], axis=0)
    labels = np.concatenate([s.labels for s in sources])
    return Source(first.name, first.kind, len(labels), max(s.num_classes for s in sources), images, labels)


def open_labelled(dataset_config, split):
    """The Source of a labelled `split` ("a+b" joins splits, e.g. Flowers' "train+validation").

    Raises LabelledSplitError (one sentence naming the fix) when a split cannot be read, has no labels (an image
    folder without class sub-folders, a TFDS set without a label feature) or fewer than 2 classes.
    """
    name = setting(dataset_config, "name")
    parts = [part.strip() for part in str(split).split("+")]
    opened = []
    for part in parts:
        _check_has_class_folders(dataset_config, part)
        try:
            opened.append(load_source(dataset_config, part))
        except KeyError as err:
            raise LabelledSplitError(f"Data set {name} ({part}) has no labels ({err}); use a labelled data set, "
                                     f"e.g. an image folder with one sub-folder per class.") from err
        except LabelledSplitError:
            raise
        except ValueError as err:
            raise LabelledSplitError(str(err)) from err
    source = opened[0] if len(opened) == 1 else _concatenate(opened, split)
    if source.num_classes < 2 or source.num_examples == 0:
        raise LabelledSplitError(f"Data set {name} split {split!r} has no class labels ({source.num_classes} "
                                 f"classes); fine-tuning, probing and kNN need labels of at least 2 classes: put the "
                                 f"images in one sub-folder per class.")
    return source


# === Pre-training facts ===


def num_train_examples(config):
    return load_source(config.dataset).num_examples


def steps_per_epoch(config):
    return num_train_examples(config) // config.batch_size
