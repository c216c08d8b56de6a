r"""Training throughput and model FLOP utilisation of the full MoCo v3 step on this machine.

  python benchmarks/train_throughput.py                       # ViT-S/16, 224 px, batch 32, fp32, jit_compile=auto
  python benchmarks/train_throughput.py --arch=vit_base --batch=64 --precision=mixed_bfloat16
  python benchmarks/train_throughput.py --xla=true                 # XLA:CPU instead of TF's oneDNN kernels

Besides wall-clock images/s it prints the process's CPU-seconds per step (time.process_time, all threads) and
images per CPU-second: on a shared machine that figure is the load-robust one (quote it with the load average).

The step is the real one (`MoCoV3.train_step` through `model.fit`): two views, query encoder forward and backward,
momentum update, momentum-encoder forward, AdamW. Images are random tensors already in memory, so the figure is
the model's speed alone (benchmarks/input_pipeline.py measures the input pipeline).

FLOPs are counted analytically (2 per multiply-add): per view, the query path (backbone + projector + predictor)
costs forward + backward = 3 x forward, the momentum path (backbone + projector) 1 x forward. Utilisation is
relative to the fp32 matmul rate measured here on a 4096 x 4096 product (printed), not to a data-sheet peak; the
"ceiling" line is the throughput the step would have if ALL its FLOPs ran at that rate (no step can beat it in fp32).
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

_ARCH = flags.DEFINE_string("arch", "vit_small", "Backbone (tf_mocov3.vit.ARCHS).")
_BATCH = flags.DEFINE_integer("batch", 32, "Global batch size.")
_IMAGE = flags.DEFINE_integer("image_size", 224, "Image size in pixels.")
_XLA = flags.DEFINE_enum("xla", "auto", ["auto", "true", "false"],
                         "Compile the train step with XLA: as config.jit_compile (auto: on TPU / one GPU, off on CPU).")
_PRECISION = flags.DEFINE_enum("precision", "float32", ["float32", "mixed_bfloat16", "mixed_float16"],
                               "Keras dtype policy.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps (after the warm-up).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps first (tracing, compilation).")
_MLP = flags.DEFINE_integer("mlp_dim", 4096, "Hidden width of the projector and predictor.")
_DIM = flags.DEFINE_integer("moco_dim", 256, "Output width of the projector and predictor.")
_INTRA = flags.DEFINE_integer("intra_op_threads", 0, "tf.config.threading intra-op threads (0: TF's default).")
_INTER = flags.DEFINE_integer("inter_op_threads", 0, "tf.config.threading inter-op threads (0: TF's default).")


def vit_forward_flops(depth, dim, patch, image_size, mlp_ratio=4.0):
    """Forward FLOPs of one image through the ViT backbone (patch embedding + blocks)."""
    tokens = (image_size // patch) ** 2 + 1
    hidden = int(dim * mlp_ratio)
    per_block = 2 * tokens * dim * (3 * dim + dim + 2 * hidden) + 2 * 2 * tokens * tokens * dim
    patch_embed = 2 * (tokens - 1) * (3 * patch * patch) * dim
    return depth * per_block + patch_embed


def mlp_flops(widths):
    return sum(2 * a * b for a, b in zip(widths[:-1], widths[1:]))


def step_flops_per_image(arch, image_size, mlp_dim, moco_dim):
    from tf_mocov3.models import vit  # pylint: disable=import-outside-toplevel
    spec = vit.ARCHS[arch]
    if spec["conv_stem"]:
        raise app.UsageError("FLOP counting covers the patch-embedding ViTs; pick a non-conv arch.")
    backbone = vit_forward_flops(spec["depth"], spec["embed_dim"], spec["patch_size"], image_size, spec["mlp_ratio"])
    projector = mlp_flops([spec["embed_dim"], mlp_dim, mlp_dim, moco_dim])
    predictor = mlp_flops([moco_dim, mlp_dim, moco_dim])
    query = backbone + projector + predictor
    key = backbone + projector
    return 2 * (3 * query + key), backbone


def matmul_peak_gflops(n=4096, repeats=5):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    a = tf.random.normal([n, n])
    b = tf.random.normal([n, n])
    mm = tf.function(lambda x, y: tf.matmul(x, y))
    mm(a, b).numpy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        mm(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def main(argv):
    del argv
    import keras  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from tf_mocov3 import config_lib  # pylint: disable=import-outside-toplevel
    from tf_mocov3.models import moco  # pylint: disable=import-outside-toplevel
    from tf_mocov3.training import optim  # pylint: disable=import-outside-toplevel
    from tf_mocov3.training import trainer  # pylint: disable=import-outside-toplevel

    if _INTRA.value:
        tf.config.threading.set_intra_op_parallelism_threads(_INTRA.value)
    if _INTER.value:
        tf.config.threading.set_inter_op_parallelism_threads(_INTER.value)
    flops, backbone_flops = step_flops_per_image(_ARCH.value, _IMAGE.value, _MLP.value, _DIM.value)
    peak = matmul_peak_gflops()

    keras.config.set_dtype_policy(_PRECISION.value)
    config = config_lib.base_config()
    config.jit_compile = _XLA.value
    use_xla = trainer.resolve_jit_compile(config, tf.distribute.get_strategy())
    config.model.arch = _ARCH.value
    config.model.mlp_dim = _MLP.value
    config.model.moco_dim = _DIM.value
    total = _WARMUP.value + _STEPS.value
    model = moco.build_moco(config.model, image_size=_IMAGE.value, total_steps=total)
    opt = optim.build_optimizer(config.optim, global_batch=_BATCH.value, steps_per_epoch=total, total_steps=total)
    model.compile(optimizer=opt, jit_compile=use_xla)

    rng = np.random.default_rng(0)
    shape = (_BATCH.value, _IMAGE.value, _IMAGE.value, 3)
    views = tuple(tf.constant(rng.normal(size=shape).astype(np.float32)) for _ in range(2))
    dataset = tf.data.Dataset.from_tensors(views).repeat()

    times, cpu_times = [], []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self._start = time.perf_counter()
            self._cpu_start = time.process_time()

        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])  # wait for the step to finish
            times.append(time.perf_counter() - self._start)
            cpu_times.append(time.process_time() - self._cpu_start)

    model.fit(dataset, epochs=1, steps_per_epoch=total, verbose=0, callbacks=[Timer()])
    timed = np.array(times[_WARMUP.value:])
    timed_cpu = np.array(cpu_times[_WARMUP.value:])
    step_s = float(np.median(timed))
    step_cpu_s = float(np.median(timed_cpu))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    images_per_s = _BATCH.value / step_s
    achieved = flops * images_per_s / 1e9

    print(f"machine: {os.cpu_count()} CPU cores; TensorFlow {tf.__version__}, Keras {keras.__version__}")
    print(f"setting: {_ARCH.value}, {_IMAGE.value} px, batch {_BATCH.value}, {_PRECISION.value}, "
          f"XLA {'on' if use_xla else 'off'}, mlp {_MLP.value}, dim {_DIM.value}")
    print(f"FLOPs per image per step: {flops / 1e9:.1f} G (backbone forward {backbone_flops / 1e9:.2f} G)")
    print(f"fp32 matmul rate on this machine (4096^2): {peak:.0f} GFLOP/s; ceiling if every FLOP of the step ran at "
          f"that rate: {peak / (flops / 1e9):.2f} images/s")
    print(f"step time: median {step_s:.3f} s over {len(timed)} steps (min {timed.min():.3f}, max {timed.max():.3f}); "
          f"first step incl. compilation {times[0]:.1f} s")
    print(f"throughput: {images_per_s:.2f} images/s")
    # CPU-seconds of this process (all its threads) per step: robust to other jobs on a shared machine, as long as
    # they do not slow the cores themselves. With C cores fully used, wall images/s ~= C x images per CPU-second.
    print(f"cpu_time: median {step_cpu_s:.2f} CPU-s per step (min {timed_cpu.min():.2f}); "
          f"{_BATCH.value / step_cpu_s:.3f} images per CPU-second "
          f"(= {os.cpu_count() * _BATCH.value / step_cpu_s:.2f} images/s if all {os.cpu_count()} cores were ours)")
    print(f"load average (1 min) at the end: {load:.2f}")
    print(f"model FLOP utilisation: {achieved:.0f} GFLOP/s = {100 * achieved / peak:.1f}% of the measured matmul rate")


if __name__ == "__main__":
    app.run(main)
