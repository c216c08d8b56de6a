r"""Where the time of the MoCo v3 step goes: the ViT backbone forward, forward + backward, and its pieces.

  python benchmarks/vit_step_profile.py                       # ViT-S/16, 224 px, 64 images (two views of 32), XLA
  python benchmarks/vit_step_profile.py --xla=false --parts=backbone
  XLA_FLAGS=--xla_cpu_experimental_xnn_fusion_type=... python benchmarks/vit_step_profile.py --parts=ops

Each measurement is a compiled function timed over --repeats calls after one warm-up call; it prints the median
wall time, the median CPU-seconds of the process (time.process_time, all threads) and the GFLOP/s rate on both
clocks, so results stay comparable when other jobs load the machine (CPU GFLOP/s x cores ~ wall rate on an idle
machine). Run A/B settings as separate processes, alternating, and compare the CPU-time figures.

Parts:
  backbone  forward (the momentum path) and forward + backward w.r.t. the trainable weights (the query path)
  ops       one block's pieces at the same token count: qkv/fc1/fc2/proj matmuls, attention core (ours, with its
            hand-written gradient, and autodiff of the same formula), GELU and LayerNorm
            (tf_mocov3.models.custom_gradients vs the plain TensorFlow / Keras ops), forward and forward + backward
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _bool(text):
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a boolean; write true or false")
    return text.lower() == "true"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="vit_small", help="Backbone (tf_mocov3.models.vit.ARCHS).")
    parser.add_argument("--batch", type=int, default=64,
                        help="Images per call (the step runs 2 x the per-view batch).")
    parser.add_argument("--image_size", type=int, default=224, help="Image size in pixels.")
    parser.add_argument("--xla", type=_bool, default=True, help="jit_compile the measured functions (true / false).")
    parser.add_argument("--repeats", type=int, default=3, help="Timed calls per measurement (after one warm-up call).")
    parser.add_argument("--parts", type=lambda text: text.split(","), default=["backbone"],
                        help="What to measure, comma-separated: backbone, ops.")
    parser.add_argument("--intra_op_threads", type=int, default=0,
                        help="tf.config.threading intra-op threads (0: TF's default).")
    return parser.parse_args(argv)


def _time(fn, args, repeats):
    fn(*args)  # compile / warm up
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        out = fn(*args)
        _ = [o.numpy() for o in (out if isinstance(out, (list, tuple)) else [out])][:1]
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    walls.sort()
    cpus.sort()
    return walls[len(walls) // 2], cpus[len(cpus) // 2]


def _report(name, gflop, wall, cpu):
    print(f"{name:<34s} wall {wall * 1e3:9.1f} ms  cpu {cpu * 1e3:9.1f} ms  "
          f"{gflop / wall:7.1f} GFLOP/s wall  {gflop / cpu:7.1f} GFLOP/s per CPU-s  ({gflop:.2f} GFLOP)", flush=True)


def main(argv=None):
    args = parse_args(argv)
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from tf_mocov3.models import vit  # pylint: disable=import-outside-toplevel

    if args.intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    spec = vit.ARCHS[args.arch]
    b, s, xla, reps = args.batch, args.image_size, args.xla, args.repeats
    d, depth, heads = spec["embed_dim"], spec["depth"], spec["num_heads"]
    hidden = int(d * spec["mlp_ratio"])
    n = (s // spec["patch_size"]) ** 2 + 1
    print(f"{args.arch}, {s} px, {b} images, XLA {'on' if xla else 'off'}, tokens {n}, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, load {os.getloadavg()[0]:.2f}", flush=True)
    rng = np.random.default_rng(0)

    if "backbone" in args.parts:
        model = vit.build_backbone(args.arch, s)
        images = tf.constant(rng.normal(size=(b, s, s, 3)).astype(np.float32))
        fwd_gflop = b * vit_forward_flops(depth, d, spec["patch_size"], s, spec["mlp_ratio"]) / 1e9

        @tf.function(jit_compile=xla)
        def forward(x):
            return model(x, training=True)

        @tf.function(jit_compile=xla)
        def forward_backward(x):
            with tf.GradientTape() as tape:
                y = model(x, training=True)
                loss = tf.reduce_sum(y * y)
            return tape.gradient(loss, model.trainable_variables)

        _report("backbone forward", fwd_gflop, *_time(forward, (images,), reps))
        _report("backbone forward+backward", 3 * fwd_gflop, *_time(forward_backward, (images,), reps))

    if "ops" in args.parts:
        rows = b * n
        x = tf.constant(rng.normal(size=(b, n, d)).astype(np.float32))
        h = tf.constant(rng.normal(size=(b, n, hidden)).astype(np.float32))
        w_qkv = tf.Variable(rng.normal(size=(d, 3 * d)).astype(np.float32) * 0.05)
        w_fc1 = tf.Variable(rng.normal(size=(d, hidden)).astype(np.float32) * 0.05)
        w_fc2 = tf.Variable(rng.normal(size=(hidden, d)).astype(np.float32) * 0.05)

        def mm3(a, w):
            return tf.einsum("bnd,de->bne", a, w)

        def mm2(a, w):
            return tf.reshape(tf.reshape(a, (-1, a.shape[-1])) @ w, a.shape[:-1] + w.shape[-1:])

        for name, fn_mm in (("3-D einsum", mm3), ("2-D matmul", mm2)):
            for label, a, w in (("qkv", x, w_qkv), ("fc1", x, w_fc1), ("fc2", h, w_fc2)):
                gflop = 2 * rows * w.shape[0] * w.shape[1] / 1e9
                f = tf.function(lambda a, w=w, fn_mm=fn_mm: fn_mm(a, w), jit_compile=xla)
                _report(f"{label} fwd ({name})", gflop, *_time(f, (a,), reps))

                def fb(a, w=w, fn_mm=fn_mm):
                    with tf.GradientTape() as tape:
                        tape.watch(a)
                        y = fn_mm(a, w)
                    return tape.gradient(y, [a, w], output_gradients=y)

                _report(f"{label} fwd+bwd ({name})", 3 * gflop, *_time(tf.function(fb, jit_compile=xla), (a,), reps))

        qkv = tf.constant(rng.normal(size=(b, n, 3 * d)).astype(np.float32))
        dh = d // heads
        attn_gflop = 2 * 2 * b * n * n * d / 1e9
        layer = vit.MultiHeadSelfAttention(heads)
        layer.build((None, n, d))

        def core(t):
            return layer._attention_core(t) if hasattr(layer, "_attention_core") else _ref_core(t, heads, dh)

        _report("attention core fwd", attn_gflop, *_time(tf.function(core, jit_compile=xla), (qkv,), reps))

        _report("attention core fwd+bwd", 3 * attn_gflop,
                *_time(tf.function(_fwd_bwd(core), jit_compile=xla), (qkv,), reps))

        _report("attention core fwd+bwd (autodiff)", 3 * attn_gflop,
                *_time(tf.function(_fwd_bwd(lambda t: _ref_core(t, heads, dh)), jit_compile=xla), (qkv,), reps))

        from tf_mocov3.models import custom_gradients  # pylint: disable=import-outside-toplevel
        for label, fn in (("erf GELU [B,N,4D] (tf.nn.gelu)", lambda t: tf.nn.gelu(t, approximate=False)),
                          ("erf GELU [B,N,4D] (fused)", custom_gradients.gelu_erf)):
            _report(label + " fwd", 0.0, *_time(tf.function(fn, jit_compile=xla), (h,), reps))
            _report(label + " fwd+bwd", 0.0, *_time(tf.function(_fwd_bwd(fn), jit_compile=xla), (h,), reps))
        stock = vit.keras.layers.LayerNormalization(epsilon=1e-6)
        ours = vit.LayerNorm(epsilon=1e-6)
        for label, layer in (("LayerNorm [B,N,D] (Keras)", stock), ("LayerNorm [B,N,D] (fused)", ours)):
            layer.build((None, n, d))
            _report(label + " fwd", 0.0, *_time(tf.function(lambda t, f=layer: f(t), jit_compile=xla), (x,), reps))
            _report(label + " fwd+bwd", 0.0,
                    *_time(tf.function(_fwd_bwd(lambda t, f=layer: f(t)), jit_compile=xla), (x,), reps))


def _fwd_bwd(fn):
    """x -> d(sum(fn(x) * fn(x)) / 2)/dx: one forward and one backward of `fn`."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    def run(t):
        with tf.GradientTape() as tape:
            tape.watch(t)
            y = fn(t)
        return tape.gradient(y, t, output_gradients=y)

    return run


def vit_forward_flops(depth, dim, patch, image_size, mlp_ratio=4.0):
    """Forward FLOPs of one image through the ViT backbone (as benchmarks/train_throughput.py counts them)."""
    tokens = (image_size // patch) ** 2 + 1
    hidden = int(dim * mlp_ratio)
    per_block = 2 * tokens * dim * (3 * dim + dim + 2 * hidden) + 2 * 2 * tokens * tokens * dim
    return depth * per_block + 2 * (tokens - 1) * (3 * patch * patch) * dim


def _ref_core(qkv, heads, dh):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    b, n = tf.shape(qkv)[0], qkv.shape[1]
    t = tf.transpose(tf.reshape(qkv, (b, n, 3, heads, dh)), (2, 0, 3, 1, 4))
    q, k, v = t[0], t[1], t[2]
    a = tf.nn.softmax(tf.matmul(q * dh ** -0.5, k, transpose_b=True), axis=-1)
    return tf.reshape(tf.transpose(tf.matmul(a, v), (0, 2, 1, 3)), (b, n, heads * dh))


if __name__ == "__main__":
    main()
