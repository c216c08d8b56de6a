r"""Peak RSS and time to the first batch of the pre-training input on 10k, 100k and 1M records (prepared format).

  python benchmarks/input_scale.py [--dir=/tmp/input_scale] [--sizes=10000,100000,1000000] [--batch=128]

Writes, once per size, a prepared data set (tf_mocov3.prepare_data's format: array_record shards of 1024 records
and metadata.json) of synthetic 64x64 JPEGs (256 distinct images of about 2.4 KB, cycled; labels i % 1000), in
parallel processes, then measures each size in a fresh process: the pre-training pipeline (two views at 64 px,
global batch --batch) from start-up to its first batch, its peak RSS after 20 batches, and the same at a resume
step deep into the third epoch (which reads nothing before it). With --compare it also times, on the 100k set,
batched random reads (records/s on one pipeline) and a TFRecord copy read in order, whose resume must read through
the skipped records. Prints one row per size, side by side.
"""

import argparse
from concurrent import futures
import io
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

SHARD = 1024


def _jpegs(count=256, size=64):
    from PIL import Image  # pylint: disable=import-outside-toplevel

    from tf_mocov3.testing import fixtures_data  # pylint: disable=import-outside-toplevel

    out = []
    rng = np.random.default_rng(0)
    for _ in range(count):
        buf = io.BytesIO()
        Image.fromarray(fixtures_data.photo_like(size, rng=rng)).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _write_shard(args):
    from tf_mocov3.data import prepare  # pylint: disable=import-outside-toplevel
    from tf_mocov3.data import sources  # pylint: disable=import-outside-toplevel

    path, start, stop, jpegs = args
    if not os.path.exists(path):
        prepare.write_shard(path, (sources.encode_prepared_record(jpegs[i % len(jpegs)], i % 1000)
                                   for i in range(start, stop)))
    return stop - start


def generate(directory, n, workers):
    """A prepared set of n records in `directory` (kept: a second call returns at once)."""
    from tf_mocov3.data import prepare  # pylint: disable=import-outside-toplevel
    from tf_mocov3.data import sources  # pylint: disable=import-outside-toplevel

    meta_path = os.path.join(directory, sources.PREPARED_METADATA)
    if os.path.exists(meta_path):
        return 0.0
    os.makedirs(directory, exist_ok=True)
    start, jpegs = time.time(), _jpegs()
    num_shards = -(-n // SHARD)
    jobs = [(os.path.join(directory, prepare.shard_name("train", k, num_shards)), k * SHARD,
             min(n, (k + 1) * SHARD), jpegs) for k in range(num_shards)]
    with futures.ProcessPoolExecutor(workers) as pool:
        counts = list(pool.map(_write_shard, jobs, chunksize=16))
    meta = {"format": sources.PREPARED_FORMAT, "input": "synthetic", "classes": [str(c) for c in range(1000)],
            "splits": {"train": {"num_examples": n, "num_skipped": 0, "skipped": [], "shards": [
                {"file": os.path.basename(j[0]), "num_examples": c} for j, c in zip(jobs, counts)]}}}
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    return time.time() - start


def _rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure(directory, batch, start_step):
    """In this (fresh) process: seconds to the first batch, peak RSS after it and after 20 batches."""
    t0 = time.time()
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from tf_mocov3 import config_lib  # pylint: disable=import-outside-toplevel
    from tf_mocov3.data import pipelines  # pylint: disable=import-outside-toplevel
    from tf_mocov3.data import sources  # pylint: disable=import-outside-toplevel

    t_import = time.time() - t0
    config = config_lib.base_config()
    config.dataset.name, config.dataset.path, config.dataset.image_size = "prepared", directory, 64
    config.batch_size, config.seed = batch, 0
    rss0 = _rss_mb()
    t1 = time.time()
    steps_per_epoch = sources.steps_per_epoch(config)
    step = 0 if start_step == 0 else 2 * steps_per_epoch + steps_per_epoch // 2
    it = iter(pipelines.build_pretrain_dataset(config, start_step=step))
    first = next(it)
    t_first = time.time() - t1
    rss1 = _rss_mb()
    for _ in range(19):
        next(it)
    t20 = time.time() - t1
    assert first[0].shape == (batch, 64, 64, 3)
    del tf
    return {"import_s": round(t_import, 1), "first_batch_s": round(t_first, 2), "twenty_batches_s": round(t20, 2),
            "rss_before_mb": round(rss0), "rss_first_mb": round(rss1), "rss_peak_mb": round(_rss_mb()),
            "start_step": step, "steps_per_epoch": steps_per_epoch}


def compare(directory, batch):
    """Batched random reads vs a TFRecord copy read in order (and its resume) on the same records."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from tf_mocov3.data import sources  # pylint: disable=import-outside-toplevel

    reader, _ = sources.prepared_reader(directory, "train")
    n = reader.num_records
    rng = np.random.default_rng(0)
    perm = rng.permutation(n)
    reader.read(perm[:batch])  # opens the shards touched
    t = time.time()
    done = 0
    while time.time() - t < 10:
        reader.read(perm[done % n:done % n + 64])
        done += 64
    random_rate = done / (time.time() - t)
    tfrecord = os.path.join(directory, "copy.tfrecord")
    if not os.path.exists(tfrecord):
        with tf.io.TFRecordWriter(tfrecord) as w:
            for start in range(0, n, 4096):
                for record in reader.read(np.arange(start, min(n, start + 4096)))[0]:
                    w.write(record)
    ds = tf.data.TFRecordDataset(tfrecord, buffer_size=8 << 20)
    t = time.time()
    count = sum(1 for _ in ds.batch(1024).take(n // 1024 // 2))
    seq_rate = count * 1024 / (time.time() - t)
    t = time.time()
    next(iter(ds.skip(n - batch).batch(batch)))
    skip_s = time.time() - t
    t = time.time()
    reader.read(perm[n - batch:])
    random_skip_s = time.time() - t
    return {"records": n, "array_record_random_reads_per_s": round(random_rate),
            "tfrecord_sequential_reads_per_s": round(seq_rate),
            "resume_near_epoch_end_tfrecord_s": round(skip_s, 2),
            "resume_near_epoch_end_array_record_s": round(random_skip_s, 4)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default="/tmp/input_scale")
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--compare", action="store_true")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--start_step", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(compare(args.measure, args.batch) if args.compare else
                         measure(args.measure, args.batch, args.start_step)))
        return
    rows = {}
    for n in [int(s) for s in args.sizes.split(",")]:
        directory = os.path.join(args.dir, f"n{n}")
        seconds = generate(directory, n, args.workers)
        size_mb = sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory)
                      if f.endswith(".array_record")) / 2**20
        row = {"generate_s": round(seconds, 1), "disk_mb": round(size_mb)}
        for label, start in (("", 0), ("resume_", 1)):
            out = subprocess.run([sys.executable, __file__, f"--measure={directory}", f"--batch={args.batch}",
                                  f"--start_step={start}"], capture_output=True, text=True, check=True,
                                 env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
            row.update({label + k: v for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()})
        rows[n] = row
        print(f"{n}: {row}", flush=True)
    keys = list(next(iter(rows.values())))
    print("\n" + f"{'':32s}" + "".join(f"{n:>14,d}" for n in rows))
    for key in keys:
        print(f"{key:32s}" + "".join(f"{rows[n][key]!s:>14s}" for n in rows))
    if args.compare:
        directory = os.path.join(args.dir, f"n{sorted(rows)[len(rows) // 2]}")
        out = subprocess.run([sys.executable, __file__, f"--measure={directory}", f"--batch={args.batch}",
                              "--compare"], capture_output=True, text=True, check=True,
                             env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        print("\n" + out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
