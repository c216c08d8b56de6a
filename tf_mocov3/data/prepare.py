"""Writes an image folder as a prepared data set: array_record shards with random access, and metadata.json.

`python -m tf_mocov3.prepare_data --input=IMAGE_FOLDER --output=DIR` calls `prepare`; every command then reads DIR
with `--config.dataset.name=prepared --config.dataset.path=DIR` (sources.py).

Input: IMAGE_FOLDER/<class>/<image> (one split, "train"), or IMAGE_FOLDER/<split>/<class>/<image> for the splits
found there: train/, val/ or validation/ (split "validation", TFDS's name for ImageNet's), test/. Labels are the indices of the sorted class names of the first split (train when
there is one); every other split must use those names.

Output (DIR):
- `<split>-<k>-of-<M>.array_record`: shard k of a split, up to `examples_per_shard` records in the split's sorted
  file order. A record is the label (int64, little-endian) followed by the image file's bytes as they were
  (sources.encode_prepared_record), so the pipeline decodes (and crops) JPEGs itself.
- `<shard>.json` beside each finished shard: its record count and the files it skipped. It is written after the
  shard has been renamed into place, so it marks the shard as finished.
- `plan.json`: the splits, file counts and shard size this output was started with (a resumed write must match).
- `metadata.json` (written last): format, input, class names, per split the example count, skipped files and the
  shard list with counts. Readers need nothing else to count or find records.

Resumable: a killed run, started again with the same arguments, skips the finished shards and rewrites only the
others. Bad images (the header / end-marker check of sources.py, then a Pillow decode) are skipped, named in the log
and counted in the metadata.
"""

import hashlib
import json
import logging
import os
import sys
import time
from concurrent import futures

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


def shard_name(split, k, num_shards):
    return f"{split}-{k:05d}-of-{num_shards:05d}.array_record"


def write_shard(path, records):
    """Writes `records` (bytes) to the array_record file `path`, atomically (a temporary name, then a rename)."""
    from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel

    tmp = f"{path}.tmp-{os.getpid()}"
    writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
    count = 0
    for record in records:
        writer.write(record)
        count += 1
    writer.close()
    os.replace(tmp, path)
    return count


def _write_json(path, value):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1)
    os.replace(tmp, path)


def prepare_shard(out_dir, split, k, num_shards, items, verify=True):
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

    name = shard_name(split, k, num_shards)
    count = write_shard(os.path.join(out_dir, name), records())
    done = {"file": name, "num_examples": count, "skipped": skipped}
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
            progress=True):
    """Writes the prepared data set of `input_dir` into `output_dir` (module docstring); returns the metadata.

    workers: processes writing shards in parallel (None: the CPU count; 1: in this process).
    """
    input_dir, output_dir = os.path.abspath(input_dir), os.path.abspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    splits, classes, listing = find_splits(input_dir), None, {}
    for split in sorted(splits, key=lambda s: (s != "train", s)):
        listing[split], classes = list_split(splits[split], classes)
        if not listing[split]:
            raise PrepareError(f"{splits[split]} holds no images: put JPEG/PNG files in one sub-folder per class "
                               f"(e.g. {splits[split]}/dog/1.jpg).")
    examples_per_shard = int(examples_per_shard)
    digest = hashlib.sha256("\n".join(f"{s}:{p}:{l}" for s in sorted(listing) for p, l in listing[s]).encode())
    plan = {"input": input_dir, "examples_per_shard": examples_per_shard, "classes": classes,
            "files": {s: len(v) for s, v in listing.items()}, "files_sha256": digest.hexdigest()}
    plan_path = os.path.join(output_dir, PLAN)
    if os.path.exists(plan_path):
        with open(plan_path) as f:
            if json.load(f) != plan:
                raise PrepareError(f"{output_dir} holds a preparation of other files or another shard size: "
                                   f"choose a new --output, or delete {output_dir} to start over.")
    else:
        _write_json(plan_path, plan)
    for name in os.listdir(output_dir):  # leftovers of a killed write
        if ".tmp-" in name:
            os.remove(os.path.join(output_dir, name))

    meta = {"format": sources.PREPARED_FORMAT, "input": input_dir, "classes": classes,
            "record": "int64 label (little-endian, 8 bytes) + the image file's bytes", "splits": {}}
    pool = futures.ProcessPoolExecutor(workers or os.cpu_count()) if workers != 1 else None
    try:
        for split, items in listing.items():
            num_shards = max(1, -(-len(items) // examples_per_shard))
            shards, todo = [None] * num_shards, []
            for k in range(num_shards):
                sidecar = os.path.join(output_dir, shard_name(split, k, num_shards) + ".json")
                if os.path.exists(sidecar) and os.path.exists(sidecar[:-len(".json")]):
                    with open(sidecar) as f:
                        shards[k] = json.load(f)
                else:
                    todo.append(k)
            images = 0
            bar = _Progress(split, num_shards, len(items)) if progress else None
            skipped = sum(len(s["skipped"]) for s in shards if s)
            done = num_shards - len(todo)
            if done:
                logger.info("%s: %d of %d shards already written; writing the other %d.", split, done, num_shards,
                            len(todo))
            args = [(output_dir, split, k, num_shards, items[k * examples_per_shard:(k + 1) * examples_per_shard],
                     verify) for k in todo]
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
                "shards": [{"file": s["file"], "num_examples": s["num_examples"]} for s in shards]}
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
