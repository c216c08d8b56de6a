"""Serving throughput of the exported SavedModel beside the live Keras model, in images/s.

    python benchmarks/serving_throughput.py                         # ViT-S/16 at 224 px, random weights
    python benchmarks/serving_throughput.py --pretrained=runs/demo  # a pre-trained workdir at its own size
    python benchmarks/serving_throughput.py --arch=vit_micro --image_size=32 --seconds=1   # quick check

Exports the backbone to a temporary directory, loads it back with tf.saved_model.load (in this process, as a
stand-in for tensorflow_model_server: the same graph, without the RPC), and times batches of 1, 8 and 32 images:

  * from JPEG bytes (500x375, quality 90, the typical ImageNet size): SavedModel `serving_default`, which decodes and
    pre-processes in the graph, against the live Keras path (the same `eval_preprocess` in a tf.function, then
    `backbone.predict_on_batch`);
  * from pre-processed float32 tensors: SavedModel `embed_preprocessed` against `backbone.predict_on_batch`.

Weights do not change the speed, so random weights are the default. Prints the machine (CPU model, cores, TF).
"""

import argparse
import os
import platform
import tempfile
import time

import numpy as np


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def jpegs(count, height=375, width=500, seed=0):
    """Smooth colour patterns with noise, JPEG quality 90."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = []
    for _ in range(count):
        img = np.stack([127 + 100 * np.sin(xx / rng.uniform(10, 60) + rng.uniform(0, 6))
                        * np.cos(yy / rng.uniform(10, 60)) for _ in range(3)], axis=-1)
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        out.append(tf.io.encode_jpeg(img, quality=90).numpy())
    return out


def images_per_second(fn, batch, seconds, min_calls=3):
    fn()
    fn()  # warm-up: tracing, graph optimisation, allocator
    calls, start = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return batch * calls / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrained", default=None, help="Workdir / checkpoint / .keras (default: random weights).")
    parser.add_argument("--arch", default="vit_small")
    parser.add_argument("--image_size", type=int, default=None, help="Default: 224, or the pre-training size.")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=3.0, help="Timed seconds per measurement (after warm-up).")
    args = parser.parse_args(argv)
    # Imported once the arguments are good, so that --help does not wait for TensorFlow.
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from export import saved_model as sm  # pylint: disable=import-outside-toplevel
    from tf_mocov3.data import augment  # pylint: disable=import-outside-toplevel
    from tf_mocov3.models import vit  # pylint: disable=import-outside-toplevel

    if args.pretrained:
        from tf_mocov3.weights import pretrained  # pylint: disable=import-outside-toplevel

        if args.pretrained.endswith(".keras"):
            backbone = sm.load_keras_backbone(args.pretrained, args.image_size)
        else:
            backbone = pretrained.load_backbone(args.pretrained, args.image_size)
        name = args.pretrained
    else:
        backbone = vit.build_backbone(args.arch, args.image_size or 224)
        name = f"{args.arch} (random weights)"
    size = int(backbone.input_shape[1])
    batches = [int(b) for b in args.batches.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        version_dir = sm.export_saved_model(backbone, tmp, warmup=False, write_keras=False)
        loaded = tf.saved_model.load(version_dir)
        serve_bytes = loaded.signatures[sm.SERVING_DEFAULT]
        serve_pre = loaded.signatures[sm.EMBED_PREPROCESSED]

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def preprocess(data):
            return tf.map_fn(lambda d: augment.eval_preprocess(d, size), data,
                             fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))

        pool = jpegs(max(batches))
        print(f"Machine: {cpu_model()}, {os.cpu_count()} logical cores, TensorFlow {tf.__version__}, "
              f"Python {platform.python_version()}")
        print(f"Model: {name}, {size}x{size} input, D={backbone.output_shape[-1]}; JPEGs 500x375; "
              f"{args.seconds:g} s per figure after 2 warm-up calls")
        print(f"{'batch':>5}  {'SavedModel JPEG':>15}  {'Keras JPEG':>10}  {'SavedModel pre':>14}  {'Keras pre':>9}"
              "   (images/s)")
        for b in batches:
            data = tf.constant(pool[:b])
            pre = preprocess(data)
            row = [
                images_per_second(lambda: serve_bytes(image_bytes=data)["features"].numpy(), b, args.seconds),
                images_per_second(lambda: backbone.predict_on_batch(preprocess(data)), b, args.seconds),
                images_per_second(lambda: serve_pre(images=pre)["features"].numpy(), b, args.seconds),
                images_per_second(lambda: backbone.predict_on_batch(pre), b, args.seconds),
            ]
            print(f"{b:>5}  {row[0]:>15.1f}  {row[1]:>10.1f}  {row[2]:>14.1f}  {row[3]:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
