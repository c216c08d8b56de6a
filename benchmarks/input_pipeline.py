"""Two-view pre-training input throughput per core: ours (each JPEG mode) against the official PIL/torchvision
pipeline, on real photographs, both pinned to the same core.

    pip install -r requirements-bench.txt                             # scikit-image (photographs), torchvision
    python benchmarks/input_pipeline.py --write_photos=/tmp/photos    # 320 JPEGs from scikit-image's photographs
    python benchmarks/input_pipeline.py --folder=/tmp/photos --core=1 # the comparison (median of --rounds)

`--write_photos` re-encodes the colour photographs that scikit-image ships (astronaut, chelsea, coffee, the two
motorcycles, rocket, retina, hubble_deep_field, ihc) as ImageNet-like JPEGs: random crops (60-100% of each side,
some flipped) of a 4:3 / 3:2 / 1:1 shape, reduced to 500 px on the long side (never enlarged), quality 90, 4:2:0
chroma, in two class folders. Photographs decode markedly slower than smooth synthetic images (`--synthetic` writes
those instead, for a machine without scikit-image).

Every measurement runs in a fresh process pinned to one core (`--core`, Linux sched_setaffinity), so that a
measurement's images/s is a per-core figure, the pipelines (ours and the official) do not share a process, and they
are interleaved round by round (`--rounds`); the table gives the median of the rounds and the ratio to the
official median. Ours: `pipelines.build_pretrain_dataset` on the same photographs written as a prepared array_record
set (`--format=prepared`, the default: the format an ImageNet run reads) or on the image folder (`--format=folder`)
(both views and steps 2-7, batched),
tf.data private thread pool of `--threads` threads. Official: moco-v3 `main_moco.py`'s two augmentations
(torchvision transforms on PIL images, `ImageFolder` with its PIL loader, a `DataLoader` with `num_workers=0`,
torch on 1 thread), i.e. the work of one data-loader worker. The load average at the start and end is printed: other
jobs on the machine slow both sides.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

# Our modes: the dataset config keys each one sets.
MODES = {
    "per_view": dict(jpeg_decode_once=False, jpeg_dct_scaling=False),
    "once": dict(jpeg_decode_once=True, jpeg_dct_scaling=False),
    "per_view_dct": dict(jpeg_decode_once=False, jpeg_dct_scaling=True),
}
MODE_NAMES = {
    "per_view": "ours, decode_and_crop_jpeg per view",
    "once": "ours, decode once, crop twice",
    "per_view_dct": "ours, per view + DCT-domain downscale",
    "official": "official PIL/torchvision (1 worker)",
}

# scikit-image's colour photographs (file names under skimage/data).
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "motorcycle_right.png",
          "rocket.jpg", "retina.jpg", "hubble_deep_field.jpg", "ihc.png")


def write_photographs(folder, count=320, seed=0, long_side=500, quality=90):
    """`count` ImageNet-like JPEGs cut from scikit-image's colour photographs, in class_0 / class_1.

    Each is a random crop (4:3, 3:4, 3:2, 2:3 or 1:1; 60-100% of the largest such crop), flipped with p=0.5, resized
    with Lanczos to `long_side` on its long side, or kept at its own size where that is smaller (never enlarged:
    an enlarged photograph is smooth, and smooth JPEGs decode faster than real ones)."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    from PIL import Image  # pylint: disable=import-outside-toplevel
    try:
        import skimage  # pylint: disable=import-outside-toplevel
    except ImportError as err:
        raise SystemExit("--write_photos needs scikit-image: pip install -r requirements-bench.txt") from err
    data_dir = os.path.join(os.path.dirname(skimage.__file__), "data")
    sources = [Image.open(os.path.join(data_dir, name)).convert("RGB") for name in PHOTOS]
    rng = np.random.default_rng(seed)
    shapes = ((4, 3), (3, 4), (3, 2), (2, 3), (1, 1))
    for i in range(count):
        src = sources[i % len(sources)]
        w, h = src.size
        aw, ah = shapes[rng.integers(len(shapes))]
        # the largest crop of that shape, scaled by 60-100%
        cw = min(w, h * aw / ah) * rng.uniform(0.6, 1.0)
        ch = cw * ah / aw
        x, y = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
        img = src.crop((round(x), round(y), round(x + cw), round(y + ch)))
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        k = min(long_side, max(img.size)) / max(aw, ah)
        img = img.resize((round(aw * k), round(ah * k)), Image.Resampling.LANCZOS)
        cls = os.path.join(folder, f"class_{i % 2}")
        os.makedirs(cls, exist_ok=True)
        img.save(os.path.join(cls, f"photo_{i:04d}.jpg"), quality=quality, subsampling="4:2:0")
    return folder


def write_synthetic(folder, count=256):
    """Smooth colour gradients + blobs + noise, 512 px, quality 90 (tf_mocov3/testing/fixtures_data.py)."""
    from tf_mocov3.testing import fixtures_data  # pylint: disable=import-outside-toplevel
    fixtures_data.write_photo_folder(folder, count=count, size=512, seed=0, classes=2, quality=90)
    return folder


# === One measurement (runs in a child process) ===


def measure_ours(folder, mode, batch, steps, warmup, threads, image_size, prepared=None):
    from ml_collections import ConfigDict  # pylint: disable=import-outside-toplevel

    from tf_mocov3 import config_lib  # pylint: disable=import-outside-toplevel
    from tf_mocov3.data import pipelines  # pylint: disable=import-outside-toplevel
    dataset = config_lib.base_config().dataset.to_dict()
    dataset.update(name="prepared" if prepared else "image_folder", path=prepared or folder, split="train",
                   image_size=image_size, crop_min=0.08, in_memory="false", threads=threads, **MODES[mode])
    cfg = ConfigDict(dict(seed=0, batch_size=batch, dataset=dataset))
    it = iter(pipelines.build_pretrain_dataset(cfg))
    for _ in range(warmup):
        next(it)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        v1, _ = next(it)
    v1.numpy()
    return steps * batch / (time.perf_counter() - t0), steps * batch / (time.process_time() - c0)


def _import_torchvision():
    try:
        import torchvision  # pylint: disable=import-outside-toplevel
    except ImportError as err:
        raise SystemExit("The official pipeline needs torchvision: pip install -r requirements-bench.txt, "
                         "or pass --no_official.") from err
    except RuntimeError as err:
        # A torchvision wheel whose compiled ops do not load against this torch (e.g. the CUDA build next to a CPU
        # torch) fails while registering them; the transforms used here are pure Python on PIL images and need none.
        import types  # pylint: disable=import-outside-toplevel
        for name in [m for m in sys.modules if m.startswith("torchvision")]:
            del sys.modules[name]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
        import torchvision  # pylint: disable=import-outside-toplevel
        print(f"note: torchvision's compiled ops did not load ({err}); its PIL transforms are used without them",
              file=sys.stderr)
    return torchvision


def official_transforms(image_size=224, crop_min=0.08):
    """moco-v3 main_moco.py's two augmentations (torchvision on PIL images), as one two-view callable."""
    import random  # pylint: disable=import-outside-toplevel

    from PIL import ImageFilter  # pylint: disable=import-outside-toplevel
    from PIL import ImageOps  # pylint: disable=import-outside-toplevel
    transforms = _import_torchvision().transforms

    def blur(img):  # moco.loader.GaussianBlur([.1, 2.])
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))

    normalize = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])

    def view(blur_p, solarize_p):
        steps = [transforms.RandomResizedCrop(image_size, scale=(crop_min, 1.0)),
                 transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
                 transforms.RandomGrayscale(p=0.2),
                 transforms.RandomApply([transforms.Lambda(blur)], p=blur_p)]
        if solarize_p:
            steps.append(transforms.RandomApply([transforms.Lambda(ImageOps.solarize)], p=solarize_p))
        steps += [transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize]
        return transforms.Compose(steps)

    view1, view2 = view(1.0, 0.0), view(0.1, 0.2)
    return lambda img: [view1(img), view2(img)]


def measure_official(folder, batch, steps, warmup):
    import torch  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(1)
    torchvision = _import_torchvision()
    root = os.path.join(folder, "train") if os.path.isdir(os.path.join(folder, "train")) else folder
    data = torchvision.datasets.ImageFolder(root, official_transforms())
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, num_workers=0, drop_last=True,
                                         generator=torch.Generator().manual_seed(0))

    def batches():
        while True:
            yield from loader

    it = batches()
    for _ in range(warmup):
        next(it)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        next(it)
    return steps * batch / (time.perf_counter() - t0), steps * batch / (time.process_time() - c0)


# === Driver ===


def _child(args):
    os.sched_setaffinity(0, {args.core})
    if args.measure == "official":
        ips, per_cpu = measure_official(args.folder, args.batch, args.steps, args.warmup)
    else:
        ips, per_cpu = measure_ours(args.folder, args.measure, args.batch, args.steps, args.warmup, args.threads,
                                    args.image_size, prepared=args.prepared)
    print("RESULT " + json.dumps(dict(ips=ips, per_cpu_s=per_cpu)), flush=True)


def _run_child(args, name):
    cmd = [sys.executable, os.path.abspath(__file__), f"--measure={name}", f"--folder={args.folder}",
           f"--core={args.core}", f"--batch={args.batch}", f"--steps={args.steps}", f"--warmup={args.warmup}",
           f"--threads={args.threads}", f"--image_size={args.image_size}"]
    if args.prepared and name != "official":
        cmd.append(f"--prepared={args.prepared}")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise SystemExit(f"the {name} measurement failed:\n{out.stderr[-3000:]}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", help="image folder with class sub-folders (default: write photographs to a temp dir)")
    p.add_argument("--write_photos", metavar="DIR", help="write --count photographs to DIR and exit")
    p.add_argument("--synthetic", action="store_true", help="without --folder: synthetic gradients, not photographs")
    p.add_argument("--count", type=int, default=320)
    p.add_argument("--modes", default="per_view,once,per_view_dct",
                   help="comma-separated, of: " + ", ".join(MODES) + ", official")
    p.add_argument("--no_official", action="store_true", help="skip the official pipeline")
    p.add_argument("--core", type=int, default=1, help="the one core every measurement is pinned to")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--threads", type=int, default=1, help="our tf.data private thread pool (0: TF's default)")
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--format", choices=("prepared", "folder"), default="prepared",
                   help="what ours reads: the photographs as a prepared array_record set (prepare_data, the "
                        "ImageNet-scale format; written once into a temp dir) or the image folder itself")
    p.add_argument("--prepared", help=argparse.SUPPRESS)
    p.add_argument("--measure", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        return _child(args)
    if args.write_photos:
        write_photographs(args.write_photos, args.count)
        print(f"wrote {args.count} photographs to {args.write_photos}")
        return None
    if args.core not in os.sched_getaffinity(0):
        p.error(f"--core={args.core} is not one of this process's cores {sorted(os.sched_getaffinity(0))}.")
    names = [m for m in args.modes.split(",") if m]
    unknown = [m for m in names if m not in MODES and m != "official"]
    if unknown:
        p.error(f"unknown mode(s) {unknown}: choose from {', '.join(MODES)}, official.")
    if not args.no_official and "official" not in names:
        names.insert(0, "official")
    with tempfile.TemporaryDirectory() as tmp:
        if args.folder is None:
            args.folder = write_synthetic(tmp) if args.synthetic else write_photographs(tmp, args.count)
        if args.format == "prepared":
            from tf_mocov3.data import prepare  # pylint: disable=import-outside-toplevel
            args.prepared = os.path.join(tmp, "prepared")
            prepare.prepare(args.folder, args.prepared, workers=1, progress=False)
        print(f"ours reads the {args.format} format; "
              f"core {args.core}, batch {args.batch} x {args.steps} steps after {args.warmup}, {args.rounds} "
              f"interleaved rounds; load average {os.getloadavg()[0]:.2f} at the start", flush=True)
        results = {name: [] for name in names}
        for r in range(args.rounds):
            for name in names:
                results[name].append(_run_child(args, name))
                print(f"  round {r + 1} {name}: {results[name][-1]['ips']:.1f} images/s, "
                      f"{results[name][-1]['per_cpu_s']:.1f} per CPU-second", flush=True)
        official = statistics.median(x["ips"] for x in results["official"]) if "official" in results else None
        from tf_mocov3 import config_lib  # pylint: disable=import-outside-toplevel
        defaults = config_lib.base_config().dataset
        default = next((m for m, keys in MODES.items() if all(defaults.get(k) == v for k, v in keys.items())), None)
        print(f"\ntwo-view images/s on one core (median of {args.rounds}; each image gives both views), "
              f"load average {os.getloadavg()[0]:.2f} at the end:")
        for name in names:
            ips = statistics.median(x["ips"] for x in results[name])
            per_cpu = statistics.median(x["per_cpu_s"] for x in results[name])
            ratio = f"{ips / official:.2f}x official" if official else ""
            mark = " (the config default)" if name == default else ""
            print(f"  {MODE_NAMES[name]:42s} {ips:7.1f} /s  ({per_cpu:6.1f} per CPU-second)  {ratio}{mark}")
    return None


if __name__ == "__main__":
    main()
