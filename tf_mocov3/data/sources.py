"""Data sources: open a data set by name, as arrays, encoded bytes, file paths or a stream.

Sources (`config.dataset.name`):
- TFDS: imagenet2012 (manual download), cifar10, cifar100, oxford_flowers102, oxford_iiit_pet,
  fashion_mnist; read from `config.dataset.data_dir`, never downloaded at run time.
- 'image_folder': `config.dataset.path` with one sub-folder per class (sorted names = labels);
  JPEG / PNG / GIF / BMP of any size, grayscale or RGB. If `path/<split>` exists it is used.
- 'fashion_mnist_idx': the original Fashion-MNIST IDX files (gzipped or not) under
  `config.dataset.path` (default /usr/share/datasets/fashion-mnist), split 'train' or 'test'.

- 'prepared': `config.dataset.path` written by `python -m tf_mocov3.prepare_data` (array_record or, with
  `--format=tfrecord`, TFRecord shards and metadata.json, which names the format; see data/prepare.py). An
  array_record set is a 'records' source, a TFRecord set a 'stream' source.

Kinds of source (`Source.kind`):
- 'array' / 'bytes' / 'paths': held in memory (decoded arrays, encoded images, file names): Fashion-MNIST, image
  folders, and small TFDS sets stored as TFRecord.
- 'records': random access on disk through array_record (`RecordReader`): a prepared data set, and any TFDS set built
  with `--file_format=array_record` (`tfds build imagenet2012 --file_format=array_record`). Host memory holds only
  the shard list; each input pipeline reads only the records of its own rows of each global batch, in batched reads
  (one Python call per READ_BATCH records inside tf.data, about 18,000 records/s on one core: BUILD_NOTES.md).
- 'stream': a TFDS set stored as TFRecord that is too large to hold, or a prepared TFRecord set (no random access;
  `StreamReader`, pure tf.data: no Python of ours in the graph): each input pipeline reads only its own files (every
  P-th of the split's files), each epoch in a seeded file order,
  `config.dataset.cycle_length` files interleaved, through a shuffle buffer of `config.dataset.shuffle_buffer`
  records (order.py): a file-level shuffle, not a global one. Prefer an array_record build or a prepared set at
  ImageNet scale.

`config.dataset.in_memory`: "auto" (default) holds a TFDS TFRecord split in memory when it is under
IN_MEMORY_LIMIT_BYTES encoded and streams it otherwise, and reads array_record builds from disk; True / False force
memory / disk. Every random-access kind follows the example order of order.py exactly.

Counts come from metadata (`split_size`: TFDS split info, the prepared metadata, the IDX header, the folder listing):
nothing reads a split to count it.

A `dataset_config` holds every key the source reads (name, path, data_dir, split unless given, validate_files,
in_memory): a config's `config.dataset`, or config_lib.complete(keys, part="dataset") for a few keys.
`open_labelled(dataset_config, split)` is the one way to open a labelled split ("a+b" joins splits); its
problems are `LabelledSplitError`s, one sentence naming the fix. The input pipelines are in pipelines.py.

Opening a split costs one listing of each folder of its files (not one call per file) and, for a prepared set, one
read of metadata.json; a run opens its source once per process (training/pretrain.py) and every input pipeline
reuses it. Damaged copies: every array_record shard is opened when the source is (its record count, from the file's
footer, against the metadata's: a truncated shard stops the run at start, naming it); a TFRecord file's records are
counted in the graph as it is read (the listing gives no sizes, and a size per file would cost a call per file), and
a file holding fewer or more records than the metadata says stops the run naming it.

Where a source can be read: `Source.needs_python` ('records': array_record through tf.numpy_function) cannot be read
by a TPU pod slice's input hosts nor a tf.data service worker; `check_source_for(source, strategy)`, called by a run
at start, refuses it on a TPU with several hosts in one sentence naming `prepare_data --format=tfrecord`.

Bad files in an image folder: every file is checked at start-up (signature and end marker:
JPEG FFD8 ... FFD9, PNG signature ... IEND, GIF ... 3B, BMP size field); a bad file is skipped
with one warning naming it and a total at the end (pipelines.py also ignores decoding errors as a
last resort). Records of a prepared set get the same check when read: a bad one is skipped with a warning naming
its index and shard, and `RecordReader.skipped` counts them.
"""

from concurrent import futures
import dataclasses
import gzip
import json
import logging
import os
import threading

import numpy as np
import tensorflow as tf

logger = logging.getLogger(__name__)

TFDS_NAMES = ("imagenet2012", "cifar10", "cifar100", "oxford_flowers102", "oxford_iiit_pet",
              "fashion_mnist")
SOURCE_NAMES = TFDS_NAMES + ("image_folder", "fashion_mnist_idx", "prepared")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
# in_memory="auto": a TFDS TFRecord split up to this many encoded bytes is held in memory, a larger one streamed.
IN_MEMORY_LIMIT_BYTES = 2 << 30
# Records per batched read of a random-access source (one Python call reads this many).
READ_BATCH = 64
PREPARED_METADATA = "metadata.json"
PREPARED_FORMAT = "tf_mocov3.prepared.v1"
# metadata.json's "file_format" (absent in sets written before TFRecord output existed: array_record).
PREPARED_FILE_FORMATS = ("array_record", "tfrecord")
PREPARE_HINT = "python -m tf_mocov3.prepare_data --input=IMAGE_FOLDER --output={path}"


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
    return _check_head_tail(head, tail, size)


def _check_head_tail(head, tail, size):
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
            labels = [label for label, k in zip(labels, keep) if k]
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
                   f"`tfds build imagenet2012 --data_dir={root} --file_format=array_record` once (or prepare an "
                   f"image folder with `python -m tf_mocov3.prepare_data`)")
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


def _tfds_parser(builder):
    """TF function: one serialized TFDS example -> (encoded image, int64 label)."""
    import tensorflow_datasets as tfds

    features = builder.info.features

    def parse(record):
        example = features.deserialize_example(record, decoders={"image": tfds.decode.SkipDecoding()})
        return example["image"], tf.cast(example["label"], tf.int64)

    return parse


def _tfds_stream_reader(builder, split):
    """StreamReader of a TFDS split built as TFRecord (TFDS's default file format)."""
    info = builder.info.splits[split]
    root = os.path.dirname(os.path.dirname(builder.data_dir))
    return StreamReader([str(p) for p in info.filepaths], list(info.shard_lengths), _tfds_parser(builder),
                        name=f"{builder.name}/{split}",
                        fix=f"rebuild it with `tfds build {builder.name} --data_dir={root}`, or as array_record "
                            f"(`--file_format=array_record`) for random access")


def _tfds_is_array_record(builder):
    return "array_record" in str(getattr(builder.info, "file_format", "") or "").lower()


def _tfds_reader(builder, split):
    """RecordReader of a TFDS split built as array_record (records are TFDS's serialized tf.train.Examples)."""
    info = builder.info.splits[split]
    paths = [str(p) for p in info.filepaths]
    return RecordReader(paths, list(info.shard_lengths), _tfds_parser(builder), name=f"{builder.name}/{split}",
                        fix=f"rebuild it with `tfds build {builder.name} --file_format=array_record "
                            f"--data_dir={os.path.dirname(os.path.dirname(builder.data_dir))}`")


# === Random access on disk (array_record) ===

# Tests set this to a function of the int64 indices of every batched read (they count the records read).
READ_HOOK = None


class _SplitFiles:
    """The files of one split and the record count of each (all that host memory holds): `starts[f]` is the split
    index of file f's first record. A missing file stops here with `fix` (found from one listing of each folder);
    `noun` names a file in that sentence, `damaged_fix` ends the sentence about a damaged file (default: `fix`)."""

    noun = "File"

    def __init__(self, paths, counts, parse, *, name="", fix="", damaged_fix=""):
        self.paths, self.counts = [str(p) for p in paths], [int(c) for c in counts]
        self.parse, self.name, self.fix = parse, name, fix
        if len(self.paths) != len(self.counts):
            raise ValueError(f"{name} lists {len(self.paths)} files but {len(self.counts)} record counts: {fix}.")
        self.damaged_fix = damaged_fix or fix
        self.starts = np.concatenate([[0], np.cumsum(self.counts, dtype=np.int64)]).astype(np.int64)
        listed = {}  # one listing per folder, not one call per file (1,024 shards on GCS: 1 listing, not 1,024 calls)
        for path in self.paths:
            folder, base = os.path.split(path)
            folder = folder or "."
            if folder not in listed:
                try:
                    listed[folder] = set(tf.io.gfile.listdir(folder))
                except tf.errors.NotFoundError:
                    listed[folder] = set()
            if base not in listed[folder]:
                raise ValueError(f"{self.noun} {path} of {name} is missing: {fix}.")

    @property
    def num_records(self):
        return int(self.starts[-1])


class RecordReader(_SplitFiles):
    """Random access to the records of one split stored as array_record shards, in shard order.

    Host memory holds the shard list and their record counts; every shard is opened once per process, when the
    reader is made, and its record count (from the file's footer, no read of the records) checked against `counts`:
    a truncated or damaged shard stops there with one sentence naming it and `damaged_fix`.
    `read(indices)` reads a batch of records with one call per shard touched. `check(record)` (optional, in Python)
    returns None for a good record or the reason it is bad: bad records are logged by index and shard, counted in
    `skipped`, and dropped by `Source.examples`. `parse(record)` (TF) -> (encoded image, int64 label).
    """

    noun = "Shard"

    def __init__(self, paths, counts, parse, *, check=None, name="", fix="", damaged_fix=""):
        remote = [str(p) for p in paths if "://" in str(p)]
        if remote:  # array_record 0.8 opens local files only (google/array_record#120); checked before any I/O
            raise ValueError(f"{name} is stored as array_record under {remote[0].split('://')[0]}://, which "
                             f"array_record cannot read (it opens local files only): copy it to a local disk "
                             f"(`gsutil -m cp -r`) and point the command there, or read a TFRecord build, which is "
                             f"streamed from any file system TensorFlow reads.")
        super().__init__(paths, counts, parse, name=name, fix=fix, damaged_fix=damaged_fix)
        self.check = check
        self.skipped = 0
        self._readers = [None] * len(self.paths)
        self._lock = threading.Lock()
        for k, path in enumerate(self.paths):  # every shard opened once here: its record count is in its footer
            try:
                got = self._reader(k).num_records()
            except Exception as err:  # pylint: disable=broad-except  # array_record raises bare RuntimeErrors
                raise ValueError(f"Shard {path} of {name} cannot be read ({type(err).__name__}: "
                                 f"{str(err).splitlines()[0] if str(err) else ''}): {self.damaged_fix}.") from err
            if got != self.counts[k]:
                raise ValueError(f"Shard {path} of {name} holds {got} records where its metadata lists "
                                 f"{self.counts[k]} (a truncated or damaged copy): {self.damaged_fix}.")

    def _reader(self, k):
        with self._lock:
            if self._readers[k] is None:
                from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel

                self._readers[k] = array_record_module.ArrayRecordReader(self.paths[k], "readahead_buffer_size:0")
            return self._readers[k]

    def read(self, indices):
        """-> (records: object array of bytes, ok: bool array) of the int64 `indices`, in their order."""
        indices = np.asarray(indices, np.int64)
        if READ_HOOK is not None:
            READ_HOOK(indices)
        shard = np.searchsorted(self.starts, indices, side="right") - 1
        records = np.empty(len(indices), object)
        for k in np.unique(shard):
            where = np.nonzero(shard == k)[0]
            records[where] = self._reader(int(k)).read((indices[where] - self.starts[k]).tolist())
        ok = np.ones(len(indices), bool)
        if self.check is not None:
            for j, record in enumerate(records):
                problem = self.check(record)
                if problem is not None:
                    ok[j] = False
                    k = int(shard[j])
                    with self._lock:
                        self.skipped += 1
                    logger.warning("Skipping bad record %d of %s (record %d of shard %s): %s.", indices[j],
                                   self.name, indices[j] - self.starts[k], os.path.basename(self.paths[k]), problem)
        return records, ok

    def concatenate(self, other):
        """The records of this reader followed by those of `other` (a split "a+b")."""
        return RecordReader(self.paths + other.paths, self.counts + other.counts, self.parse, check=self.check,
                            name=f"{self.name}+{other.name}", fix=self.fix, damaged_fix=self.damaged_fix)


# === Sequential files (TFRecord) ===


class StreamReader(_SplitFiles):
    """The TFRecord files of one split (no random access): read whole files, in any file order, several at a time.

    Host memory holds the file list and the record count of each file (TFDS's shard lengths). Example `i` of the
    split is record i - starts[f] of the file f that holds it, so every record read carries its index in the split.
    `share(p, P)` gives input pipeline p of P its own files (every P-th), so P hosts read disjoint shares;
    `read(file_ids, cycle_length)` reads files in the given order, `cycle_length` at a time, one record of each in
    turn (the file-level shuffle of order.py decides that order per epoch). `parse(record)` (TF) -> (encoded image,
    int64 label).

    Nothing here runs Python while reading (a TPU pod's input hosts or a tf.data service worker can run it). A file's
    record count is checked in the graph as the file is read (counting needs a full read; the listing gives no
    sizes): a file that holds fewer or more records than `counts` says (a copy cut short, a damaged record) fails
    the read with an InvalidArgumentError naming the file and `damaged_fix`.
    """

    # How to get more files than hosts (share); None: `fix`.
    share_fix = None

    def share(self, pipeline=0, pipelines=1):
        """int64 ids of the files that input pipeline `pipeline` of `pipelines` reads: every `pipelines`-th file."""
        if len(self.paths) < pipelines:
            raise ValueError(f"{self.name} is stored in {len(self.paths)} TFRecord files, fewer than the {pipelines} "
                             f"input pipelines (hosts) that each read their own files: {self.share_fix or self.fix}.")
        return np.arange(pipeline, len(self.paths), pipelines, dtype=np.int64)

    def share_size(self, file_ids, keep=None):
        """Examples in the files `file_ids` (only those marked in the bool mask `keep` over the split, if given)."""
        if keep is None:
            return int(sum(self.counts[int(f)] for f in file_ids))
        return int(sum(np.count_nonzero(keep[self.starts[f]:self.starts[f + 1]]) for f in file_ids))

    def read(self, file_ids, cycle_length=1):
        """Dataset of (int64 index in the split, encoded image, int64 label) of the files `file_ids` (int64, a list
        or a tensor), in that order, `cycle_length` files open at a time (1: one file after the other)."""
        paths, starts = tf.constant(self.paths), tf.constant(self.starts)
        name, fix = self.name, self.damaged_fix

        def one_file(k):
            path, first, end = tf.gather(paths, k), tf.gather(starts, k), tf.gather(starts, k + 1)
            # The file's records flagged True, then one end marker flagged False; a cut or damaged file ends where it
            # breaks (ignore_errors here, for this file only), so its marker comes early and the check below fails.
            records = tf.data.TFRecordDataset(path).ignore_errors().map(lambda r: (r, True)).concatenate(
                tf.data.Dataset.from_tensors((tf.constant(b""), False)))
            index = tf.data.Dataset.range(first, end + 1)

            def checked(i, flagged):  # record i of the split must be real for i < end, the marker at i == end
                record, real = flagged
                got = tf.where(real, tf.strings.join(["more than ", tf.strings.as_string(end - first)]),
                               tf.strings.as_string(i - first))
                ok = tf.debugging.Assert(tf.equal(real, i < end), [tf.strings.join([
                    "TFRecord file ", path, " of ", name, " holds ", got, " records where its metadata lists ",
                    tf.strings.as_string(end - first), " (a truncated or damaged copy): ", fix, "."])], summarize=1)
                with tf.control_dependencies([ok]):
                    return tf.identity(i), record, real

            return tf.data.Dataset.zip(index, records).map(checked).filter(lambda i, record, real: real).map(
                lambda i, record, real: (i, record))

        files = tf.data.Dataset.from_tensor_slices(tf.cast(file_ids, tf.int64))
        if int(cycle_length) <= 1:
            ds = files.flat_map(one_file)
        else:
            ds = files.interleave(one_file, cycle_length=int(cycle_length), block_length=1,
                                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        parse = self.parse
        return ds.map(lambda index, record: (index, *parse(record)), num_parallel_calls=tf.data.AUTOTUNE,
                      deterministic=True)

    def stream(self):
        """Dataset of (encoded image, int64 label) of the whole split in its order (file after file)."""
        return self.read(np.arange(len(self.paths), dtype=np.int64)).map(lambda index, image, label: (image, label))

    def concatenate(self, other):
        """The files of this reader followed by those of `other` (a split "a+b")."""
        joined = StreamReader(self.paths + other.paths, self.counts + other.counts, self.parse,
                              name=f"{self.name}+{other.name}", fix=self.fix, damaged_fix=self.damaged_fix)
        joined.share_fix = self.share_fix
        return joined


# === Prepared data sets (python -m tf_mocov3.prepare_data) ===


def encode_prepared_record(image_bytes, label):
    """One record of a prepared set: the label as int64 little-endian, then the encoded image bytes as they were."""
    return int(label).to_bytes(8, "little", signed=True) + bytes(image_bytes)


def _check_prepared_record(record):
    if len(record) < 8 + 16:
        return "too small to hold an image"
    return _check_head_tail(record[8:24], record[-64:], len(record) - 8)


def _parse_prepared_record(record):
    label = tf.io.decode_raw(tf.strings.substr(record, 0, 8), tf.int64, little_endian=True)[0]
    return tf.strings.substr(record, 8, tf.strings.length(record) - 8), label


def read_prepared_metadata(path):
    """The metadata.json of a prepared data set; one sentence naming the fix when it is not there."""
    if not path:
        raise ValueError("dataset.name='prepared' needs config.dataset.path: the folder written by "
                         f"`{PREPARE_HINT.format(path='DIR')}`.")
    meta_path = os.path.join(path, PREPARED_METADATA)
    try:  # one read, no existence call first
        with tf.io.gfile.GFile(meta_path) as f:
            meta = json.load(f)
    except tf.errors.NotFoundError:
        raise ValueError(f"{path} holds no prepared data set ({PREPARED_METADATA} is missing): write it with "
                         f"`{PREPARE_HINT.format(path=path)}`.") from None
    if meta.get("format") != PREPARED_FORMAT:
        raise ValueError(f"{meta_path} is not a {PREPARED_FORMAT} data set (format {meta.get('format')!r}): write "
                         f"it again with `{PREPARE_HINT.format(path=path)}`.")
    if meta.get("file_format", "array_record") not in PREPARED_FILE_FORMATS:
        raise ValueError(f"{meta_path} names the file format {meta.get('file_format')!r}, which this version cannot "
                         f"read ({' or '.join(PREPARED_FILE_FORMATS)}): write it again with "
                         f"`{PREPARE_HINT.format(path=path)}`.")
    return meta


def _prepared_split(path, split):
    meta = read_prepared_metadata(path)
    if split not in meta["splits"]:
        raise ValueError(f"The prepared data set {path} has splits {sorted(meta['splits'])}, not {split!r}: choose "
                         f"one, or prepare a folder that has {split}/ in it.")
    info = meta["splits"][split]
    if not info["num_examples"]:
        raise ValueError(f"Split {split!r} of the prepared data set {path} is empty: prepare it from a folder that "
                         f"holds images (`{PREPARE_HINT.format(path=path)}`).")
    return meta, info


def prepared_reader(path, split):
    """(RecordReader of an array_record set or StreamReader of a TFRecord set, number of classes) of a split."""
    meta, info = _prepared_split(path, split)
    file_format = meta.get("file_format", "array_record")
    command = (f"python -m tf_mocov3.prepare_data --input={meta.get('input') or 'IMAGE_FOLDER'} --output={path}"
               + ("" if file_format == "array_record" else f" --format={file_format}"))
    fix = f"run `{command}` again to write the missing shards (finished shards are kept)"
    damaged_fix = f"copy it again from where it was written, or run `{command}` again, which rewrites it"
    paths = [os.path.join(path, s["file"]) for s in info["shards"]]
    counts = [s["num_examples"] for s in info["shards"]]
    if file_format == "tfrecord":
        reader = StreamReader(paths, counts, _parse_prepared_record, name=f"{path} ({split})", fix=fix,
                              damaged_fix=damaged_fix)
        reader.share_fix = ("prepare it again into a new --output with a smaller --examples_per_shard, so that "
                            "every host gets at least one shard")
    else:
        reader = RecordReader(paths, counts, _parse_prepared_record, check=_check_prepared_record,
                              name=f"{path} ({split})", fix=fix, damaged_fix=damaged_fix)
    return reader, len(meta["classes"])


# === Sources ===


@dataclasses.dataclass
class Source:
    """A data set as the pipeline sees it.

    kind: 'array' (uint8 [N, H, W, C] in `images`), 'bytes' (encoded images in `images`),
    'paths' (file names in `images`), 'records' (a RecordReader in `reader`: random access on disk) or 'stream'
    (a StreamReader in `reader`: TFRecord files; `stream()` gives (encoded, label) of the split in its order).
    """
    name: str
    kind: str
    num_examples: int
    num_classes: int
    images: object = None
    labels: object = None
    stream: object = None
    reader: object = None

    @property
    def is_encoded(self):
        return self.kind != "array"

    @property
    def needs_python(self):
        """True when reading this source runs our Python inside tf.data ('records': array_record through
        tf.numpy_function), so only this process can read it: not a TPU pod's input hosts, nor a tf.data service
        worker (check_source_for, require_python_free)."""
        return self.kind == "records"

    def fetch(self, index):
        """Image (decoded array or encoded bytes) of example `index` (in-memory kinds)."""
        if self.kind == "paths":
            return tf.io.read_file(tf.gather(self.images, index))
        return tf.gather(self.images, index)

    def examples(self, ds):
        """Dataset of (index, *rest) -> Dataset of (image, int64 label, *rest), in order (random-access kinds).

        'records' reads READ_BATCH indices per call and drops bad records (RecordReader); the other kinds gather.
        A source without labels gives label -1.
        """
        if self.kind == "records":
            reader = self.reader

            def read(index, *rest):
                records, ok = tf.numpy_function(reader.read, [index], [tf.string, tf.bool], stateful=False)
                records.set_shape(index.shape)
                ok.set_shape(index.shape)
                return (records, ok, *rest)

            ds = ds.batch(READ_BATCH).map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()
            ds = ds.filter(lambda record, ok, *rest: ok)

            def parse(record, ok, *rest):
                image, label = reader.parse(record)
                return (image, label, *rest)

            return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        labels = None if self.labels is None else tf.constant(self.labels, tf.int64)

        def gather(index, *rest):
            label = tf.constant(-1, tf.int64) if labels is None else tf.gather(labels, index)
            return (self.fetch(index), label, *rest)

        return ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


# === Where a source can be read ===


def input_hosts(strategy):
    """The hosts that run input pipelines for `strategy`: a TPUStrategy's hosts (a pod slice has several), else 1."""
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return int(strategy.extended.num_hosts)
    return 1


def require_python_free(source, where):
    """Refuses a source that needs our Python (Source.needs_python) where none of it exists (`where`: e.g. "a
    tf.data service worker"), in one sentence naming `prepare_data --format=tfrecord`."""
    if source.needs_python:
        name = getattr(source.reader, "name", "") or source.name
        raise ValueError(f"{name} is array_record, read through tf.numpy_function (our Python), which {where} cannot "
                         f"run: write the images as TFRecord with `python -m tf_mocov3.prepare_data --format=tfrecord "
                         f"--input=IMAGE_FOLDER --output=DIR` and read DIR (`--config.dataset.name=prepared`).")


def check_source_for(source, strategy):
    """Called by a run at start, before any model is built: a TPU pod slice (a TPUStrategy with more than one input
    host) runs the input function as a graph on every host's TensorFlow server, without our Python, so a source
    that needs it (array_record, 'records') stops here with one sentence naming the fix (require_python_free)."""
    hosts = input_hosts(strategy)
    if hosts > 1:
        require_python_free(source, f"the {hosts} input hosts of this TPU pod slice")


def _in_memory(dataset_config):
    """config.dataset.in_memory as True, False or None ("auto")."""
    value = dataset_config["in_memory"]
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("auto", ""):
            return None
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ValueError(f"config.dataset.in_memory={value!r} is unknown; use auto, True or False.")
    return bool(value)


def split_size(dataset_config, split=None):
    """The number of examples of a split, from metadata (never by reading the split's images)."""
    name, path = dataset_config["name"], dataset_config["path"]
    split = split or dataset_config["split"]
    if name == "prepared":  # the metadata's count (load_source checks the shards)
        return int(_prepared_split(path, split)[1]["num_examples"])
    if name in TFDS_NAMES:
        builder = _tfds_builder(name, dataset_config["data_dir"])
        return int(builder.info.splits[_tfds_split(builder, split)].num_examples)
    if name == "fashion_mnist_idx":
        prefix = {"train": "train", "test": "t10k"}.get(split)
        if prefix is None:
            raise ValueError(f"fashion_mnist_idx has splits 'train' and 'test', not {split!r}.")
        return int(len(read_idx(_find(path or FASHION_MNIST_DIR, f"{prefix}-labels-idx1-ubyte"))))
    return load_source(dataset_config, split).num_examples


def load_source(dataset_config, split=None):
    """Open the source named by `dataset_config.name` (see the module docstring)."""
    name, path = dataset_config["name"], dataset_config["path"]
    split = split or dataset_config["split"]
    if name == "fashion_mnist_idx":
        images, labels = load_fashion_mnist_idx(path, split)
        return Source(name, "array", len(images), 10, tf.constant(images), labels)
    if name == "image_folder":
        files, labels, classes = list_image_folder(path, split, dataset_config["validate_files"])
        return Source(name, "paths", len(files), len(classes), tf.constant(files), labels)
    if name == "prepared":
        reader, num_classes = prepared_reader(path, split)
        if isinstance(reader, StreamReader):
            return Source(name, "stream", reader.num_records, num_classes, stream=reader.stream, reader=reader)
        return Source(name, "records", reader.num_records, num_classes, reader=reader)
    if name in TFDS_NAMES:
        builder = _tfds_builder(name, dataset_config["data_dir"])
        split = _tfds_split(builder, split)
        info = builder.info.splits[split]
        num_examples = info.num_examples
        num_classes = builder.info.features["label"].num_classes
        if num_examples == 0:
            raise ValueError(f"TFDS split {name}/{split} in {builder.data_dir} is empty: rebuild it.")
        in_memory = _in_memory(dataset_config)
        array_record = _tfds_is_array_record(builder)
        if in_memory is None:
            in_memory = not array_record and int(info.num_bytes or 0) <= IN_MEMORY_LIMIT_BYTES
        if in_memory:
            images, labels = [], []
            for img, label in _tfds_encoded(builder, split).batch(1024).as_numpy_iterator():
                images.extend(img)
                labels.append(label)
            return Source(name, "bytes", len(images), num_classes, tf.constant(images, tf.string),
                          np.concatenate(labels).astype(np.int64))
        if array_record:
            return Source(name, "records", num_examples, num_classes, reader=_tfds_reader(builder, split))
        logger.warning("%s/%s is stored as TFRecord (no random access): streaming it, each input pipeline reads its "
                       "own files in a new order every epoch through a shuffle buffer (a file-level shuffle); for a "
                       "global shuffle per epoch rebuild it with `tfds build %s --file_format=array_record` or use "
                       "tf_mocov3.prepare_data.", name, split, name)
        reader = _tfds_stream_reader(builder, split)
        return Source(name, "stream", num_examples, num_classes, stream=reader.stream, reader=reader)
    raise ValueError(f"Unknown dataset.name {name!r}; valid names: {', '.join(SOURCE_NAMES)}.")


# === Labelled splits ===


class LabelledSplitError(ValueError):
    """A split that cannot serve as labelled data (unreadable, unlabelled, < 2 classes); one sentence with the fix."""


def _check_has_class_folders(dataset_config, split):
    """An image folder whose images sit directly in it (no class sub-folders) has no labels."""
    path = dataset_config["path"]
    if dataset_config["name"] != "image_folder" or not path:
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
    if first.kind == "records" and all(s.kind == "records" for s in sources):
        reader = first.reader
        for s in sources[1:]:
            reader = reader.concatenate(s.reader)
        return Source(first.name, "records", reader.num_records, max(s.num_classes for s in sources),
                      reader=reader)
    if first.kind == "stream" and all(s.kind == "stream" for s in sources):
        reader = first.reader
        for s in sources[1:]:
            reader = reader.concatenate(s.reader)
        return Source(first.name, "stream", reader.num_records, max(s.num_classes for s in sources),
                      stream=reader.stream, reader=reader)
    if any(s.kind != first.kind for s in sources):
        raise LabelledSplitError(f"Cannot join the splits {split!r} of {first.name} (held in memory and on disk); "
                                 f"set config.dataset.in_memory to True or False.")
    images = tf.concat([s.images for s in sources], axis=0)
    labels = np.concatenate([s.labels for s in sources])
    return Source(first.name, first.kind, len(labels), max(s.num_classes for s in sources), images, labels)


def open_labelled(dataset_config, split):
    """The Source of a labelled `split` ("a+b" joins splits, e.g. Flowers' "train+validation").

    Raises LabelledSplitError (one sentence naming the fix) when a split cannot be read, has no labels (an image
    folder without class sub-folders, a TFDS set without a label feature) or fewer than 2 classes.
    """
    name = dataset_config["name"]
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
    """The pre-training split's size, from metadata (split_size)."""
    return split_size(config.dataset)


def steps_per_epoch(config):
    return num_train_examples(config) // config.batch_size
