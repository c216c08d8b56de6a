"""Throughput of the two-view pre-training input pipeline on 512x512 JPEGs.

    python benchmarks/input_pipeline.py                   # writes 256 synthetic JPEGs to a temp dir
    python benchmarks/input_pipeline.py --folder DIR      # an existing image folder (class sub-folders)

Prints images/s (each image gives both views) with a private tf.data threadpool of 1 thread
and of `nproc` threads, after a warm-up, and the per-core figure. Reference: the official
PIL/torchvision two-view pipeline decodes and augments about 69 images/s per core.
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np
from ml_collections import ConfigDict
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tf_mocov3 import data  # noqa: E402

OFFICIAL_PER_CORE = 69.0


def write_images(folder, count=256, size=512, seed=0):
    """Smooth colour gradients + blobs + noise, JPEG quality 90, in two class folders."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(count):
        cls = os.path.join(folder, f"class_{i % 2}")
        os.makedirs(cls, exist_ok=True)
        img = np.zeros((size, size, 3), np.float32)
        for c in range(3):
            a, b, f = rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(1, 6)
            img[..., c] = 0.5 + 0.35 * np.sin(f * (a * xx + b * yy) * np.pi + rng.uniform(0, 6))
        for _ in range(6):
            cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.03, 0.2)
            mask = ((yy - cy) ** 2 + (xx - cx) ** 2) < r * r
            img[mask] = rng.uniform(0, 1, 3)
        img += rng.normal(0, 0.04, img.shape)
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(
            os.path.join(cls, f"img_{i:04d}.jpg"), quality=90)


def measure(folder, threads, batch, steps, warmup, image_size, decode_once):
    cfg = ConfigDict(dict(seed=0, batch_size=batch, dataset=dict(
        name="image_folder", path=folder, split="train", image_size=image_size, crop_min=0.08,
        threads=threads, jpeg_decode_once=decode_once)))
    it = iter(data.build_pretrain_dataset(cfg))
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
    args = p.parse_args()
    cores = os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder
        if folder is None:
            folder = tmp
            write_images(folder, args.count)
        for decode_once, threads in [(d, t) for d in (False, True) for t in sorted({1, cores})]:
            ips, per_cpu_s = measure(folder, threads, args.batch, args.steps, args.warmup, args.image_size,
                                     decode_once)
            print("JPEG: " + ("decode once, crop twice" if decode_once else "decode_and_crop_jpeg per view"))
            per_core = ips / threads
            print(f"threads={threads}: {ips:.1f} images/s (two views each); per core: {per_core:.1f} "
                  f"(wall / threads) = {per_core / OFFICIAL_PER_CORE:.2f}x the official "
                  f"~{OFFICIAL_PER_CORE:.0f}; {per_cpu_s:.1f} images per CPU-second of the process")


if __name__ == "__main__":
    main()
