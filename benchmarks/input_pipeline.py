"""Throughput of the two-view pre-training input pipeline on 512x512 JPEGs.

    python benchmarks/input_pipeline.py                   # writes 256 synthetic JPEGs to a temp dir
    python benchmarks/input_pipeline.py --folder DIR      # an existing image folder (class sub-folders)
    python benchmarks/input_pipeline.py --cores=1         # the process pinned to one core: wall = per core

Prints, for each JPEG mode (decode once / decode_and_crop per view / per view with DCT
scaling) and a private tf.data threadpool of 1 and of `nproc` threads: wall images/s (each image
gives both views) and images per CPU-second of this process (time.process_time, all threads),
which is robust to other jobs on a shared machine. With --cores=N the process is pinned to N cores
(Linux sched_setaffinity) before TensorFlow starts, and wall images/s / N is the per-core figure in
the strictest sense; unpinned, TensorFlow's intra-op thread pool hands work across cores and its
wake-ups and spin-waits cost CPU time that a single-core run does not pay. The modes are
measured in interleaved rounds (--rounds) and the best round is kept. Reference: the official
PIL/torchvision two-view pipeline decodes and augments about 69 images/s per core.
"""

import argparse
import os
import sys
import tempfile
import time

from ml_collections import ConfigDict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests import fixtures_data  # noqa: E402

OFFICIAL_PER_CORE = 69.0


def write_images(folder, count=256, size=512, seed=0):
    """Smooth colour gradients + blobs + noise, JPEG quality 90, in two class folders (tests/fixtures_data.py)."""
    fixtures_data.write_photo_folder(folder, count=count, size=size, seed=seed, classes=2, quality=90)


MODES = {"once": dict(jpeg_decode_once=True), "per_view": dict(jpeg_decode_once=False),
         "per_view_dct": dict(jpeg_decode_once=False, jpeg_dct_scaling=True)}
MODE_NAMES = {"once": "decode once, crop twice", "per_view": "decode_and_crop_jpeg per view",
              "per_view_dct": "decode_and_crop_jpeg per view, DCT-domain downscale (ratio 2/4/8)"}


def measure(folder, threads, batch, steps, warmup, image_size, mode):
    from tf_mocov3.data import pipelines  # pylint: disable=import-outside-toplevel
    cfg = ConfigDict(dict(seed=0, batch_size=batch, dataset=dict(
        name="image_folder", path=folder, split="train", image_size=image_size, crop_min=0.08,
        threads=threads, **MODES[mode])))
    it = iter(pipelines.build_pretrain_dataset(cfg))
    for _ in range(warmup):
        next(it)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        v1, _ = next(it)
    v1.numpy()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return steps * batch / wall, steps * batch / cpu


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", help="image folder with class sub-folders (default: write 256 JPEGs)")
    p.add_argument("--count", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated: " + ", ".join(MODES))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--cores", type=int, default=0,
                   help="pin the process to this many cores before TensorFlow starts (0: all, no pinning)")
    args = p.parse_args()
    cores = os.cpu_count()
    if args.cores:
        allowed = sorted(os.sched_getaffinity(0))
        if not 0 < args.cores <= len(allowed):
            p.error(f"--cores={args.cores} but this process may use {len(allowed)} cores; pass 1..{len(allowed)}.")
        os.sched_setaffinity(0, allowed[:args.cores])
        cores = args.cores
    print(f"{cores} core(s){' (pinned)' if args.cores else ''}, load average {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder
        if folder is None:
            folder = tmp
            write_images(folder, args.count)
        runs = [(m, t) for t in sorted({1, cores}) for m in args.modes.split(",")]
        best = {}
        for _ in range(args.rounds):
            for run in runs:
                ips, per_cpu_s = measure(folder, run[1], args.batch, args.steps, args.warmup,
                                         args.image_size, run[0])
                old = best.get(run, (0.0, 0.0))
                best[run] = (max(old[0], ips), max(old[1], per_cpu_s))
        for (mode, threads), (ips, per_cpu_s) in best.items():
            print(f"{MODE_NAMES[mode]}, threads={threads}: {ips:.1f} images/s wall (two views each) = "
                  f"{ips / cores:.1f} per core = {ips / cores / OFFICIAL_PER_CORE:.2f}x the official "
                  f"~{OFFICIAL_PER_CORE:.0f} per core; {per_cpu_s:.1f} images per CPU-second "
                  f"({per_cpu_s / OFFICIAL_PER_CORE:.2f}x)")
        print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
