r"""One table of what a machine does with tf_mocov3: the MoCo v3 train step, the input pipeline and serving.

  python benchmarks/device_check.py            # benchmarks/device_check.sh runs this with a time limit

Rows:
* train: images/s of the whole MoCo v3 step (both views, momentum encoder, symmetrized loss, optimizer) for ViT-S/16
  and ViT-B/16 through the project's Trainer (XLA, `steps_per_execution` "auto" for the device), and the model FLOP
  utilisation: (FLOPs of the step per image, counted as benchmarks/train_throughput.py counts them) x images/s over
  the device's peak. On a GPU / TPU: 224 px, bfloat16 (mixed_bfloat16), the peak is the chip's dense bf16 figure
  from its data sheet (printed). On a CPU: smaller images and batches, float32 (AVX2 machines have no bf16
  arithmetic), and the achieved GFLOP/s instead of a utilisation: a CPU has no data-sheet peak here, and a
  tf.matmul measured on the spot ran slower than the model's oneDNN kernels (utilisations over 100%).
* input: two-view images/s of the pre-training pipeline on all the host's cores (224 px views of 448 px photo-like
  JPEGs).
* serving: milliseconds per call of an exported SavedModel's `embed_preprocessed` signature at batch 1 and 32.
"""

import argparse
import os
import shutil
import tempfile
import time

# serving_throughput, input_pipeline and train_throughput are imported from this script's folder, which Python puts
# first on sys.path when it runs `python benchmarks/device_check.py`.

# Dense bfloat16 tensor-core peaks from the vendors' data sheets, FLOP/s (no sparsity).
BF16_PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "V100": 125e12,
              "T4": 65e12, "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v3": 123e12}


def device():
    """(kind, name, peak FLOP/s or None) of the first accelerator, else the CPU's."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
        peak = next((p for key, p in BF16_PEAKS.items() if key in name), None)
        return "gpu", name, peak
    import serving_throughput  # pylint: disable=import-outside-toplevel
    return "cpu", serving_throughput.cpu_model(), None


def train_row(arch, image_size, batch, precision, steps, kind):
    """(images/s, steps per call) of the MoCo v3 step for `arch` through training.trainer."""
    import keras  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from tf_mocov3 import config_lib  # pylint: disable=import-outside-toplevel
    from tf_mocov3.models import moco  # pylint: disable=import-outside-toplevel
    from tf_mocov3.training import optim  # pylint: disable=import-outside-toplevel
    from tf_mocov3.training import trainer  # pylint: disable=import-outside-toplevel

    config = config_lib.base_config()
    config.model.arch = arch
    config.jit_compile = "true"
    strategy = tf.distribute.get_strategy()
    k = trainer.resolve_steps_per_execution(config, strategy)
    warmup = 2 * k
    total = warmup + -(-steps // k) * k
    with trainer.precision(precision):
        run = trainer.Trainer(None, total_steps=total, global_batch=batch, steps_per_execution=k)
        model = run.build(lambda: moco.build_moco(config.model, image_size=image_size, total_steps=total),
                          lambda: optim.build_optimizer(config.optim, global_batch=batch, steps_per_epoch=total,
                                                        total_steps=total),
                          seed=0, jit_compile=True)
        model.steps_per_execution = k
        rng = np.random.default_rng(0)
        views = tuple(tf.constant(rng.normal(size=(batch, image_size, image_size, 3)).astype(np.float32))
                      for _ in range(2))
        marks = []

        class Clock(keras.callbacks.Callback):
            def on_train_batch_end(self, b, logs=None):
                float(logs["loss"])  # waits for the call
                marks.append((int(model.optimizer.iterations.numpy()), time.perf_counter()))

        model.fit(tf.data.Dataset.from_tensors(views).repeat().take(total), epochs=1, steps_per_epoch=total,
                  verbose=0, callbacks=[Clock()])
    first = next(i for i, (step, _) in enumerate(marks) if step >= warmup)
    (s0, t0), (s1, t1) = marks[first], marks[-1]
    return batch * (s1 - s0) / max(t1 - t0, 1e-9), k


def input_row(folder, batch, steps):
    import input_pipeline  # pylint: disable=import-outside-toplevel
    wall, _ = input_pipeline.measure(folder, threads=0, batch=batch, steps=steps, warmup=4, image_size=224,
                                     mode="per_view")
    return wall


def serving_rows(arch, image_size, batches, seconds):
    """{batch: ms per call} of an exported SavedModel's embed_preprocessed signature."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from export import saved_model  # pylint: disable=import-outside-toplevel
    from tf_mocov3.models import vit  # pylint: disable=import-outside-toplevel

    out = {}
    tmp = tempfile.mkdtemp()
    try:
        path = saved_model.export_saved_model(vit.build_backbone(arch, image_size), tmp, version=1)
        fn = tf.saved_model.load(str(path)).signatures["embed_preprocessed"]
        for batch in batches:
            images = tf.constant(np.random.default_rng(0).normal(size=(batch, image_size, image_size, 3)),
                                 tf.float32)
            fn(images=images)["features"].numpy()  # warm-up
            times, start = [], time.perf_counter()
            while len(times) < 5 or time.perf_counter() - start < seconds:
                t = time.perf_counter()
                fn(images=images)["features"].numpy()
                times.append(time.perf_counter() - t)
            out[batch] = 1000 * float(np.median(times))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=0, help="timed train steps (default: 40 on an accelerator, 3 "
                                                             "on a CPU)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tf_mocov3 import cli  # pylint: disable=import-outside-toplevel
    cli.quiet_tensorflow()
    import train_throughput  # pylint: disable=import-outside-toplevel

    from tf_mocov3.testing import fixtures_data  # pylint: disable=import-outside-toplevel

    kind, name, peak = device()
    accelerator = kind != "cpu"
    precision = "mixed_bfloat16" if accelerator else "float32"
    peak_text = f"{peak / 1e12:.0f} TFLOP/s (dense bf16, data sheet)" if peak else "none known (CPU)"
    print(f"device: {name} ({kind}); {os.cpu_count()} host cores; peak {peak_text}; precision {precision}",
          flush=True)
    rows = []
    setups = ([("vit_small", 224, 256), ("vit_base", 224, 256)] if accelerator
              else [("vit_small", 64, 8), ("vit_base", 32, 4)])
    steps = args.steps or (40 if accelerator else 3)
    for arch, size, batch in setups:
        images_per_s, k = train_row(arch, size, batch, precision, steps, kind)
        flops, _ = train_throughput.step_flops_per_image(arch, size, 4096, 256)
        achieved = flops * images_per_s
        rows.append((f"train {arch} {size}px batch {batch}, XLA, {k} step(s)/call", f"{images_per_s:.1f} img/s",
                     f"MFU {100 * achieved / peak:.1f}%" if peak else f"{achieved / 1e9:.1f} GFLOP/s"))
        print("  ".join(rows[-1]), flush=True)
    with tempfile.TemporaryDirectory() as folder:
        fixtures_data.write_photo_folder(folder, count=128, size=448, seed=0, classes=2, quality=90)
        rate = input_row(folder, batch=32, steps=20 if accelerator else 8)
    rows.append((f"input: two-view pipeline, {os.cpu_count()} cores", f"{rate:.1f} img/s", ""))
    print("  ".join(rows[-1]), flush=True)
    size = 224 if accelerator else 64
    for batch, ms in serving_rows("vit_small", size, (1, 32), seconds=5 if accelerator else 2).items():
        rows.append((f"serving: SavedModel vit_small {size}px, batch {batch}", f"{ms:.2f} ms/call",
                     f"{1000 * batch / ms:.0f} img/s"))
    width = max(len(r[0]) for r in rows)
    print(f"\n== device check: {name} ==")
    for what, value, extra in rows:
        print(f"{what:<{width}}  {value:>14}  {extra}")


if __name__ == "__main__":
    main()
