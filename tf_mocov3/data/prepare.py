"""Writes an image folder as a prepared data set: array_record or TFRecord shards, and metadata.json.

`python -m tf_mocov3.prepare_data --input=IMAGE_FOLDER --output=DIR [--format=tfrecord]` calls `prepare`; every
command then reads DIR with `--config.dataset.name=prepared --config.dataset.path=DIR` (sources.py), in the format
metadata.json names:
- array_record (default): random access by index (a global shuffle per epoch, a read-free resume), read through
  tf.numpy_function (our Python), local files only.
- tfrecord: streamed by pure tf.data (sources.StreamReader: each input pipeline its own shards, a seeded file order
  per epoch, order.py), from any file system TensorFlow reads: TPU pod slices, gs://, tf.data service.
Everything is written through tf.io.gfile, so a TFRecord DIR may be gs://... (array_record writes local files only).

Input: IMAGE_FOLDER/<class>/<image> (one split, "train"), or IMAGE_FOLDER/<split>/<class>/<image> for the splits
found there: train/, val/ or validation/ (split "validation", TFDS's name for ImageNet's), test/. Labels are the
indices of the sorted class names of the first split (train when there is one); every other split must use those
names.

Output (DIR):
- `<split>-<k>-of-<M>.array_record` (or `.tfrecord`): shard k of a split, up to `examples_per_shard` records in the
  split's sorted file order. A record is the label (int64, little-endian) followed by the image file's bytes as they
  were (sources.encode_prepared_record; the same bytes in both formats, parsed by the same pure-TF function), so the
  pipeline decodes (and crops) JPEGs itself.
- `<shard>.json` beside each finished shard: its record count, byte size and the files it skipped. It is written
  after the shard has been renamed into place, so it marks the shard as finished.
- `plan.json`: the splits, file counts, shard size and format this output was started with (a resumed write must
  match).
- `metadata.json` (written last): format ("file_format": array_record or tfrecord; absent means array_record),
  input, class names, per split the example count, skipped files and the shard list with record counts and byte
  sizes. Readers need nothing else to count or find records.

Resumable: a killed run, started again with the same arguments, skips the finished shards (found by one listing of
DIR; a finished shard whose size no longer matches its sidecar, cut short since, is written again) and rewrites the
others. Bad images (the header / end-marker check of sources.py, then a Pillow decode) are skipped, named in the log
and counted in the metadata.
"""

from concurrent import futures
import hashlib
import json
import logging
import os
import sys
import time

import tensorflow as tf

from tf_mocov3.data import sources

logger = logging.getLogger(__name__)

EXAMPLES_PER_SHARD = 1024
PLAN = "plan.json"
# Split folders and the split each one becomes ("val" is named as TFDS names ImageNet's, so the ImageNet configs'
# eval_split / knn.eval_split "validation" fit a prepared ImageNet folder unchanged).
_SPLIT_FOLDERS = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}


class PrepareError(ValueError):
    """An input or output that cannot be prepared; one sentence naming the fix."""


def _class_dirs(path):
    return sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))


def find_splits(input_dir):
    """{split: folder} of an image folder: its train/, val/ or validation/ (split "validation") and test/
    sub-folders, else {"train": it}."""
    if not os.path.isdir(input_dir):
        raise PrepareError(f"The input folder {input_dir} does not exist: pass --input=IMAGE_FOLDER with one "
                           f"sub-folder of images per class (optionally inside train/ and val/).")
    found = {}
    for name, split in _SPLIT_FOLDERS.items():
        folder = os.path.join(input_dir, name)
        if os.path.isdir(folder) and _class_dirs(folder):
            if split in found:
                raise PrepareError(f"{input_dir} has both {found[split]} and {folder} for the split {split!r}: keep "
                                   f"one of them.")
            found[split] = folder
    return found or {"train": input_dir}


def list_split(folder, classes=None):
    """(sorted [(file, label)], class names) of one split folder; `classes` fixes the names of a later split."""
    names = _class_dirs(folder)
    if classes is None:
        classes = names
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise PrepareError(f"{folder} has classes {unknown[:3]} that the first split lacks: give every split the "
                           f"same class sub-folders.")
    items = []
    for name in names:
        label = classes.index(name)
        for root, _, files in sorted(os.walk(os.path.join(folder, name))):
            for fname in sorted(files):
                if fname.lower().endswith(sources.IMAGE_EXTENSIONS):
                    items.append((os.path.join(root, fname), label))
    return items, classes


def check_image(path):
    """None if `path` is an image Pillow can decode (JPEGs at 1/8 scale: every byte read, little work), else why."""
    problem = sources.check_image_file(path)
    if problem is not None:
        return problem
    from PIL import Image  # pylint: disable=import-outside-toplevel

    try:
        with Image.open(path) as img:
            img.draft("RGB", (max(1, img.size[0] // 8), max(1, img.size[1] // 8)))
            img.load()
    except Exception as err:  # pylint: disable=broad-except  # Pillow raises many kinds for bad data
        return f"cannot be decoded ({type(err).__name__}: {err})"
    return None


def shard_name(split, k, num_shards, file_format="array_record"):
    return f"{split}-{k:05d}-of-{num_shards:05d}.{file_format}"


def write_shard(path, records):
    """Writes `records` (bytes) to the shard `path` (array_record, or TFRecord when the name ends in .tfrecord),
    atomically (a temporary name, then a rename); TFRecord through tf.io.gfile, so `path` may be on gs://."""
    tmp = f"{path}.tmp-{os.getpid()}"
    count = 0
    if path.endswith(".tfrecord"):
        with tf.io.TFRecordWriter(tmp) as writer:
            for record in records:
                writer.write(record)
                count += 1
    else:
        from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel

        writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
        for record in records:
            writer.write(record)
            count += 1
        writer.close()
    tf.io.gfile.rename(tmp, path, overwrite=True)
    return count


def _write_json(path, value):
    tmp = f"{path}.tmp-{os.getpid()}"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(json.dumps(value, indent=1))
    tf.io.gfile.rename(tmp, path, overwrite=True)


def _read_json(path):
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def prepare_shard(out_dir, split, k, num_shards, items, verify=True, file_format="array_record"):
    """Writes shard k of a split from its (file, label) items, skipping bad images; returns its sidecar dict."""
    skipped = []

    def records():
        for path, label in items:
            problem = check_image(path) if verify else sources.check_image_file(path)
            if problem is not None:
                logger.warning("Skipping bad image %s: %s.", path, problem)
                skipped.append([path, problem])
                continue
            with open(path, "rb") as f:
                yield sources.encode_prepared_record(f.read(), label)

    name = shard_name(split, k, num_shards, file_format)
    count = write_shard(os.path.join(out_dir, name), records())
    # The size lets a resumed write tell a finished shard from one cut short (a copy, a full disk).
    done = {"file": name, "num_examples": count, "num_bytes": tf.io.gfile.stat(os.path.join(out_dir, name)).length,
            "skipped": skipped}
    _write_json(os.path.join(out_dir, name + ".json"), done)
    return done


class _Progress:
    """One progress line per split: rewritten in place on a terminal, else a line every 10 s and at the end."""

    def __init__(self, split, num_shards, total, out=None):
        self.split, self.num_shards, self.total, self.out = split, num_shards, total, out or sys.stderr
        self.start = self.last = time.time()
        self.tty = self.out.isatty()

    def show(self, shards_done, images, skipped):
        now, final = time.time(), shards_done == self.num_shards
        if not (self.tty or final or now - self.last >= 10):
            return
        self.last = now
        rate = images / max(now - self.start, 1e-9)
        start, end = ("\r" if self.tty else ""), ("\n" if final or not self.tty else "")
        self.out.write(f"{start}{self.split}: shard {shards_done}/{self.num_shards}, {images} images written this run "
                       f"of {self.total} ({rate:.0f}/s), {skipped} skipped{end}")
        self.out.flush()


def prepare(input_dir, output_dir, *, examples_per_shard=EXAMPLES_PER_SHARD, workers=None, verify=True,
            progress=True, file_format="array_record"):
    """Writes the prepared data set of `input_dir` into `output_dir` (module docstring); returns the metadata.

    workers: processes writing shards in parallel (None: the CPU count; 1: in this process).
    file_format: "array_record" (random access, local disks) or "tfrecord" (streamed; any file system TensorFlow
      writes, e.g. gs://).
    """
    if file_format not in sources.PREPARED_FILE_FORMATS:
        raise PrepareError(f"--format={file_format} is unknown: choose {' or '.join(sources.PREPARED_FILE_FORMATS)}.")
    if "://" in str(output_dir) and file_format == "array_record":
        raise PrepareError(f"array_record cannot write to {output_dir} (it opens local files only): pass "
                           f"--format=tfrecord to write there, or write to a local disk.")
    input_dir = os.path.abspath(input_dir)
    output_dir = output_dir if "://" in str(output_dir) else os.path.abspath(output_dir)
    tf.io.gfile.makedirs(output_dir)
    splits, classes, listing = find_splits(input_dir), None, {}
    for split in sorted(splits, key=lambda s: (s != "train", s)):
        listing[split], classes = list_split(splits[split], classes)
        if not listing[split]:
            raise PrepareError(f"{splits[split]} holds no images: put JPEG/PNG files in one sub-folder per class "
                               f"(e.g. {splits[split]}/dog/1.jpg).")
    examples_per_shard = int(examples_per_shard)
    digest = hashlib.sha256("\n".join(f"{s}:{p}:{label}" for s in sorted(listing) for p, label in listing[s]).encode())
    plan = {"input": input_dir, "examples_per_shard": examples_per_shard, "classes": classes,
            "files": {s: len(v) for s, v in listing.items()}, "files_sha256": digest.hexdigest(),
            "file_format": file_format}
    plan_path = os.path.join(output_dir, PLAN)
    present = set(tf.io.gfile.listdir(output_dir))  # one listing: what a killed run left
    if PLAN in present:
        if {"file_format": "array_record", **_read_json(plan_path)} != plan:
            raise PrepareError(f"{output_dir} holds a preparation of other files, another shard size or another "
                               f"--format: choose a new --output, or delete {output_dir} to start over.")
    else:
        _write_json(plan_path, plan)
    for name in sorted(present):  # leftovers of a killed write
        if ".tmp-" in name:
            tf.io.gfile.remove(os.path.join(output_dir, name))

    meta = {"format": sources.PREPARED_FORMAT, "file_format": file_format, "input": input_dir, "classes": classes,
            "record": "int64 label (little-endian, 8 bytes) + the image file's bytes", "splits": {}}
    pool = futures.ProcessPoolExecutor(workers or os.cpu_count()) if workers != 1 else None
    try:
        for split, items in listing.items():
            num_shards = max(1, -(-len(items) // examples_per_shard))
            shards, todo = [None] * num_shards, []
            for k in range(num_shards):
                name = shard_name(split, k, num_shards, file_format)
                if name + ".json" in present and name in present:
                    shards[k] = _read_json(os.path.join(output_dir, name + ".json"))
                    size = tf.io.gfile.stat(os.path.join(output_dir, name)).length
                    if shards[k].get("num_bytes", size) != size:  # cut short since it was finished
                        logger.warning("%s holds %d bytes, not the %d written: writing it again.", name, size,
                                       shards[k]["num_bytes"])
                        shards[k] = None
                if shards[k] is None:
                    todo.append(k)
            images = 0
            bar = _Progress(split, num_shards, len(items)) if progress else None
            skipped = sum(len(s["skipped"]) for s in shards if s)
            done = num_shards - len(todo)
            if done:
                logger.info("%s: %d of %d shards already written; writing the other %d.", split, done, num_shards,
                            len(todo))
            args = [(output_dir, split, k, num_shards, items[k * examples_per_shard:(k + 1) * examples_per_shard],
                     verify, file_format) for k in todo]
            jobs = [pool.submit(prepare_shard, *a) for a in args] if pool else None
            for i, a in enumerate(args):
                result = jobs[i].result() if pool else prepare_shard(*a)
                shards[a[2]] = result
                done, images, skipped = done + 1, images + len(a[4]), skipped + len(result["skipped"])
                if bar:
                    bar.show(done, images, skipped)
            total = sum(s["num_examples"] for s in shards)
            meta["splits"][split] = {
                "num_examples": total, "num_skipped": skipped,
                "skipped": [entry for s in shards for entry in s["skipped"]],
                "shards": [{"file": s["file"], "num_examples": s["num_examples"],
                            **({"num_bytes": s["num_bytes"]} if "num_bytes" in s else {})} for s in shards]}
            if skipped:
                logger.warning("%s: skipped %d of %d files that are not valid images (listed in %s).", split,
                               skipped, len(items), sources.PREPARED_METADATA)
            if not total:
                raise PrepareError(f"Every image of {splits[split]} failed to decode: replace them with readable "
                                   f"JPEG/PNG files.")
    finally:
        if pool:
            pool.shutdown()
    _write_json(os.path.join(output_dir, sources.PREPARED_METADATA), meta)
    return meta
