"""Data sources and the pre-training input pipeline.

Sources (`config.dataset.name`):
- TFDS: imagenet2012 (manual download), cifar10, cifar100, oxford_flowers102, oxford_iiit_pet,
  fashion_mnist; read from `config.dataset.data_dir`, never downloaded at run time.
- 'image_folder': `config.dataset.path` with one sub-folder per class (sorted names = labels);
  JPEG / PNG / GIF / BMP of any size, grayscale or RGB. If `path/<split>` exists it is used.
- 'fashion_mnist_idx': the original Fashion-MNIST IDX files (gzipped or not) under
  `config.dataset.path` (default /usr/share/datasets/fashion-mnist), split 'train' or 'test'.

Ordering contract of `build_pretrain_dataset` (what makes 1 replica, N replicas, N workers and a
resumed run see the same data):
- epoch e visits the examples in a permutation seeded by (config.seed, e);
- global step b of an epoch uses positions [b*B, (b+1)*B) of that order (B = global batch; the
  remainder of an epoch is dropped); replica r takes rows [r*n, (r+1)*n), n = B / replicas;
- input pipeline p serves replicas p*R .. p*R+R-1 (R = replicas / pipelines) and emits, for
  each global step, their R per-replica batches in replica order;
- an example's augmentation seed is [config.seed, e * 2**32 + position] and nothing else;
- `start_step=k` starts at global step k without reading or decoding the skipped examples.

Random-access sources (Fashion-MNIST arrays, image-folder file lists, and TFDS data sets except
imagenet2012, which are loaded encoded into memory once at start-up: `config.dataset.in_memory`)
follow the contract exactly. imagenet2012 (or any TFDS set with `in_memory=False`) is streamed:
records are read in TFDS's deterministic order and shuffled with a buffer of
`config.dataset.shuffle_buffer` seeded by (config.seed, e), so the "permutation" is a
buffered one; every input pipeline reads the whole stream and keeps its positions (records stay
encoded, so this costs I/O, not decoding) and resuming reads, but does not decode, the records
of the skipped steps of the current epoch. TFDS's array_record random access is not used: it
goes through a Python callback inside tf.data, which is GIL-bound.

Bad files in an image folder: every file is checked at start-up (signature and end marker:
JPEG FFD8 ... FFD9, PNG signature ... IEND, GIF ... 3B, BMP size field); a bad file is skipped
with one warning naming it and a total at the end. As a last resort the pipeline also ignores
decoding errors (`Dataset.ignore_errors`, logged by TF), so a file that passes the check but
fails to decode costs one example (and shifts that pipeline's rows by one), never the run.
"""

import dataclasses
import gzip
import logging
import os
from concurrent import futures

import numpy as np
import tensorflow as tf

from tf_mocov3.data import augment

logger = logging.getLogger(__name__)

TFDS_NAMES = ("imagenet2012", "cifar10", "cifar100", "oxford_flowers102", "oxford_iiit_pet",
              "fashion_mnist")
SOURCE_NAMES = TFDS_NAMES + ("image_folder", "fashion_mnist_idx")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
_STREAMED_BY_DEFAULT = ("imagenet2012",)


def _get(cfg, key, default=None):
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

    def labeled_dataset(self):
        if self.kind == "stream":
            return self.stream()
        ds = tf.data.Dataset.range(self.num_examples)
        labels = tf.constant(self.labels)
        return ds.map(lambda i: (self.fetch(i), tf.gather(labels, i)),
                      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def load_source(dataset_config, split=None):
    """Open the source named by `dataset_config.name` (see the module docstring)."""
    name = _get(dataset_config, "name")
    split = split or _get(dataset_config, "split", "train")
    path = _get(dataset_config, "path")
    if name == "fashion_mnist_idx":
        images, labels = load_fashion_mnist_idx(path, split)
        return Source(name, "array", len(images), 10, tf.constant(images), labels)
    if name == "image_folder":
        files, labels, classes = list_image_folder(path, split, _get(dataset_config, "validate_files", True))
        return Source(name, "paths", len(files), len(classes), tf.constant(files), labels)
    if name in TFDS_NAMES:
        builder = _tfds_builder(name, _get(dataset_config, "data_dir"))
        split = _tfds_split(builder, split)
        num_examples = builder.info.splits[split].num_examples
        num_classes = builder.info.features["label"].num_classes
        if num_examples == 0:
            raise ValueError(f"TFDS split {name}/{split} in {builder.data_dir} is empty: rebuild it.")
        if _get(dataset_config, "in_memory", name not in _STREAMED_BY_DEFAULT):
            images, labels = [], []
            for img, label in _tfds_encoded(builder, split).batch(1024).as_numpy_iterator():
                images.extend(img)
                labels.append(label)
            return Source(name, "bytes", len(images), num_classes, tf.constant(images, tf.string),
                          np.concatenate(labels).astype(np.int64))
        return Source(name, "stream", num_examples, num_classes,
                      stream=lambda: _tfds_encoded(builder, split))
    raise ValueError(f"Unknown dataset.name {name!r}; valid names: {', '.join(SOURCE_NAMES)}.")


def load_labeled(dataset_config, split):
    """(tf.data.Dataset of (image, label) in a fixed order, num_classes, num_examples).

    The image is a uint8 HWC array (fashion_mnist_idx, [28, 28, 1]) or a scalar string of
    encoded bytes (image folders, TFDS); `augment.eval_preprocess` accepts both.
    """
    source = load_source(dataset_config, split)
    return source.labeled_dataset(), source.num_classes, source.num_examples


def num_train_examples(config):
    return load_source(config.dataset).num_examples


def steps_per_epoch(config):
    return num_train_examples(config) // config.batch_size


# === The pre-training pipeline ===


def _layout(config, input_context):
    """-> (per-replica batch n, local replicas R, this pipeline's row offset within a global batch)."""
    replicas = input_context.num_replicas_in_sync if input_context else 1
    pipelines = input_context.num_input_pipelines if input_context else 1
    pipeline = input_context.input_pipeline_id if input_context else 0
    batch = config.batch_size
    if batch % replicas:
        raise ValueError(f"batch_size {batch} is not divisible by the {replicas} replicas: "
                         f"choose a multiple of {replicas}.")
    if replicas % pipelines:
        raise ValueError(f"{replicas} replicas cannot be split evenly over {pipelines} input pipelines.")
    n = batch // replicas
    local = replicas // pipelines
    return n, local, pipeline * local * n


def _example_seed(seed, epoch, position):
    return tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64) * (1 << 32) + position])


def _options(dataset_config):
    options = tf.data.Options()
    options.deterministic = True
    # One thread per op inside the map functions: the pipeline's parallelism is across
    # examples (parallel map); intra-op threads only add hand-off and spin-wait CPU time.
    options.threading.max_intra_op_parallelism = 1
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    threads = int(_get(dataset_config, "threads", 0))
    if threads > 0:
        options.threading.private_threadpool_size = threads
    return options


def build_pretrain_dataset(config, *, input_context=None, start_step=0):
    """Infinite tf.data.Dataset of per-replica batches (view1, view2), float32 [n, S, S, 3].

    Args:
        config: the experiment ConfigDict (seed, batch_size, dataset.*).
        input_context: a tf.distribute.InputContext (None: one replica, one pipeline).
        start_step: first global step to produce (resume), see the ordering contract above.
    """
    dcfg = config.dataset
    n, local, offset = _layout(config, input_context)
    rows = local * n  # rows of each global batch this pipeline serves
    batch = config.batch_size
    seed = int(config.seed)
    image_size = int(_get(dcfg, "image_size", 224))
    crop_min = float(_get(dcfg, "crop_min", 0.08))
    jpeg_decode_once = bool(_get(dcfg, "jpeg_decode_once", False))
    jpeg_dct_scaling = bool(_get(dcfg, "jpeg_dct_scaling", False))
    source = load_source(dcfg)
    num = source.num_examples
    steps = num // batch
    if steps == 0:
        raise ValueError(f"The {source.name} split has {num} examples, fewer than one global batch of "
                         f"{batch}: lower config.batch_size.")
    start_epoch, first_step = divmod(int(start_step), steps)

    def augment_example(image, position, epoch):
        # Step 1 (decode, crop, resize) and the random numbers of steps 2-7, per example; steps 2-7
        # run once per batch below (`augment.augment_two_view_batch`, same pixels as
        # `augment.two_views` to float round-off, much less CPU).
        return augment.two_view_inputs(image, _example_seed(seed, epoch, position), image_size=image_size,
                                       crop_min=crop_min, is_encoded=source.is_encoded,
                                       jpeg_decode_once=jpeg_decode_once, jpeg_dct_scaling=jpeg_dct_scaling)

    if source.kind != "stream":
        def epoch_positions(epoch):
            first = tf.where(epoch == start_epoch, tf.constant(first_step, tf.int64), 0)
            step = tf.range(first, steps, dtype=tf.int64)
            position = tf.reshape(step[:, None] * batch + offset + tf.range(rows, dtype=tf.int64)[None],
                                  [-1])
            order = tf.random.experimental.stateless_shuffle(
                tf.range(num, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
            index = tf.gather(order, position)
            return tf.data.Dataset.from_tensor_slices(
                (index, position, tf.fill(tf.shape(position), epoch)))

        ds = tf.data.Dataset.range(start_epoch, np.iinfo(np.int64).max).flat_map(epoch_positions)
        ds = ds.map(lambda i, pos, e: augment_example(source.fetch(i), pos, e),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        buffer = int(_get(dcfg, "shuffle_buffer", 10_000))

        def epoch_stream(epoch):
            ds = source.stream().shuffle(buffer, seed=seed * 1_000_003 + epoch,
                                         reshuffle_each_iteration=False)
            ds = ds.take(steps * batch).enumerate()
            first = tf.where(epoch == start_epoch, tf.constant(first_step * batch, tf.int64), 0)
            ds = ds.skip(first)  # read, not decoded
            ds = ds.filter(lambda pos, ex: (pos % batch >= offset) & (pos % batch < offset + rows))
            return ds.map(lambda pos, ex: (ex[0], pos, epoch))

        ds = tf.data.Dataset.range(start_epoch, np.iinfo(np.int64).max).flat_map(epoch_stream)
        ds = ds.map(augment_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if source.is_encoded:
        ds = ds.ignore_errors(log_warning=True)
    ds = ds.batch(n, drop_remainder=True)
    ds = ds.map(augment.augment_two_view_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    return ds.with_options(_options(dcfg))
