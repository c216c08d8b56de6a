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

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="vit_small", help="Backbone (tf_mocov3.models.vit.ARCHS).")
    parser.add_argument("--batch", type=int, default=32, help="Global batch size.")
    parser.add_argument("--image_size", type=int, default=224, help="Image size in pixels.")
    parser.add_argument("--xla", default="auto", choices=["auto", "true", "false"],
                        help="Compile the train step with XLA: as config.jit_compile (auto: on TPU / one GPU, off on "
                             "CPU).")
    parser.add_argument("--precision", default="float32", choices=["float32", "mixed_bfloat16", "mixed_float16"],
                        help="Keras dtype policy.")
    parser.add_argument("--steps", type=int, default=5, help="Timed steps (after the warm-up).")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps first (tracing, compilation).")
    parser.add_argument("--mlp_dim", type=int, default=4096, help="Hidden width of the projector and predictor.")
    parser.add_argument("--moco_dim", type=int, default=256, help="Output width of the projector and predictor.")
    parser.add_argument("--intra_op_threads", type=int, default=0,
                        help="tf.config.threading intra-op threads (0: TF's default).")
    parser.add_argument("--inter_op_threads", type=int, default=0,
                        help="tf.config.threading inter-op threads (0: TF's default).")
    return parser.parse_args(argv)


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
        raise ValueError(f"FLOP counting covers the patch-embedding ViTs and {arch} has a conv stem; pick another "
                         "arch.")
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


def main(argv=None):
    args = parse_args(argv)
    import keras  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from tf_mocov3 import config_lib  # pylint: disable=import-outside-toplevel
    from tf_mocov3.models import moco  # pylint: disable=import-outside-toplevel
    from tf_mocov3.training import optim  # pylint: disable=import-outside-toplevel
    from tf_mocov3.training import trainer  # pylint: disable=import-outside-toplevel

    if args.intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    if args.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
    flops, backbone_flops = step_flops_per_image(args.arch, args.image_size, args.mlp_dim, args.moco_dim)
    peak = matmul_peak_gflops()

    keras.config.set_dtype_policy(args.precision)
    config = config_lib.base_config()
    config.jit_compile = args.xla
    use_xla = trainer.resolve_jit_compile(config, tf.distribute.get_strategy())
    config.model.arch = args.arch
    config.model.mlp_dim = args.mlp_dim
    config.model.moco_dim = args.moco_dim
    total = args.warmup + args.steps
    model = moco.build_moco(config.model, image_size=args.image_size, total_steps=total)
    opt = optim.build_optimizer(config.optim, global_batch=args.batch, steps_per_epoch=total, total_steps=total)
    model.compile(optimizer=opt, jit_compile=use_xla)

    rng = np.random.default_rng(0)
    shape = (args.batch, args.image_size, args.image_size, 3)
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
    timed = np.array(times[args.warmup:])
    timed_cpu = np.array(cpu_times[args.warmup:])
    step_s = float(np.median(timed))
    step_cpu_s = float(np.median(timed_cpu))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    images_per_s = args.batch / step_s
    achieved = flops * images_per_s / 1e9

    print(f"machine: {os.cpu_count()} CPU cores; TensorFlow {tf.__version__}, Keras {keras.__version__}")
    print(f"setting: {args.arch}, {args.image_size} px, batch {args.batch}, {args.precision}, "
          f"XLA {'on' if use_xla else 'off'}, mlp {args.mlp_dim}, dim {args.moco_dim}")
    print(f"FLOPs per image per step: {flops / 1e9:.1f} G (backbone forward {backbone_flops / 1e9:.2f} G)")
    print(f"fp32 matmul rate on this machine (4096^2): {peak:.0f} GFLOP/s; ceiling if every FLOP of the step ran at "
          f"that rate: {peak / (flops / 1e9):.2f} images/s")
    print(f"step time: median {step_s:.3f} s over {len(timed)} steps (min {timed.min():.3f}, max {timed.max():.3f}); "
          f"first step incl. compilation {times[0]:.1f} s")
    print(f"throughput: {images_per_s:.2f} images/s")
    # CPU-seconds of this process (all its threads) per step: robust to other jobs on a shared machine, as long as
    # they do not slow the cores themselves. With C cores fully used, wall images/s ~= C x images per CPU-second.
    print(f"cpu_time: median {step_cpu_s:.2f} CPU-s per step (min {timed_cpu.min():.2f}); "
          f"{args.batch / step_cpu_s:.3f} images per CPU-second "
          f"(= {os.cpu_count() * args.batch / step_cpu_s:.2f} images/s if all {os.cpu_count()} cores were ours)")
    print(f"load average (1 min) at the end: {load:.2f}")
    print(f"model FLOP utilisation: {achieved:.0f} GFLOP/s = {100 * achieved / peak:.1f}% of the measured matmul rate")


if __name__ == "__main__":
    main()
