r"""Spread of the short runs' kNN gain over seeds and CPU kernel settings (the margin of a threshold test).

  python benchmarks/knn_gain_spread.py [--methods=mocov3,simclr,byol] [--seeds=0,1,2,3]
      [--settings=default,onednn_off,avx] [--every=0] [--steps=0] [--parallel=2]

Runs `configs/short_run_fashion_mnist.py:METHOD` (the runs of tests/test_methods.py's
test_short_fashion_mnist_run_improves_knn_over_random_init) once per method, seed and kernel setting, each in its own
process because oneDNN reads its settings when TensorFlow starts:

  default       oneDNN as this CPU picks it (AVX-512 or AVX2 kernels)
  onednn_off    TF_ENABLE_ONEDNN_OPTS=0: TensorFlow's own kernels
  onednn_on     TF_ENABLE_ONEDNN_OPTS=1: oneDNN's ops, the default only on CPUs with AVX-512 VNNI / BF16 or AMX
  avx, sse41, avx2   ONEDNN_MAX_CPU_ISA=...: oneDNN capped at that instruction set

A run on other kernels rounds differently from its first step on and ends on other weights, like another seed. Each
run prints the kNN top-1 of the random backbone (before step 1) and every `--every` steps; the table gives the gain
(last - first) per run and the minimum per method. Prints the CPU model and its AVX flags first: quote them with
the figures.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SETTINGS = {"default": {}, "onednn_off": {"TF_ENABLE_ONEDNN_OPTS": "0"}, "onednn_on": {"TF_ENABLE_ONEDNN_OPTS": "1"},
            "avx": {"ONEDNN_MAX_CPU_ISA": "AVX"},
            "sse41": {"ONEDNN_MAX_CPU_ISA": "SSE41"}, "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"}}


def _settings(text):
    names = text.split(",")
    unknown = [name for name in names if name not in SETTINGS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown setting {', '.join(unknown)}; choose from {', '.join(SETTINGS)}")
    return names


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", type=lambda text: text.split(","), default=["mocov3", "simclr", "byol"],
                        help="Methods, comma-separated (configs/short_run_fashion_mnist.py).")
    parser.add_argument("--seeds", type=lambda text: [int(n) for n in text.split(",")], default=[0, 1, 2, 3],
                        help="config.seed values, comma-separated.")
    parser.add_argument("--settings", type=_settings, default=["default", "onednn_off", "avx"],
                        help=f"Kernel settings, comma-separated: {', '.join(SETTINGS)}.")
    parser.add_argument("--every", type=int, default=0,
                        help="kNN every this many steps (0: only at the end, as the test). An evaluation changes the "
                             "run's later steps, so a curve is not the test's run.")
    parser.add_argument("--steps", type=int, default=0, help="Steps of each run (0: the config's).")
    parser.add_argument("--parallel", type=int, default=2, help="Runs at a time (one core each).")
    parser.add_argument("--worker", default="",
                        help="Internal: METHOD,SEED runs one measurement and prints it as JSON.")
    return parser.parse_args(argv)


def cpu_line():
    model, flags_seen = "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags_seen |= {x for x in line.split(":", 1)[1].split() if x.startswith(("avx", "fma"))}
    except OSError:
        pass
    return f"{model}; flags {' '.join(sorted(flags_seen)) or 'n/a'}"


def measure(method, seed, every, steps=0):
    """One short run in this process: {"start": kNN before step 1, "curve": [[step, kNN], ...], "seconds": ...}."""
    import importlib.util  # pylint: disable=import-outside-toplevel

    import keras  # pylint: disable=import-outside-toplevel

    from tf_mocov3.evaluation import knn  # pylint: disable=import-outside-toplevel
    from tf_mocov3.training import pretrain  # pylint: disable=import-outside-toplevel

    spec = importlib.util.spec_from_file_location("short", os.path.join(ROOT, "configs", "short_run_fashion_mnist.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(method)
    config.seed = seed
    if steps:
        config.max_steps = config.checkpoint_every_steps = config.knn.every_steps = steps
    if every:
        config.knn.every_steps = every
    start = {}

    class AtStart(keras.callbacks.Callback):
        def __init__(self, monitor):
            super().__init__()
            self.monitor = monitor

        def on_train_begin(self, logs=None):
            start["knn"] = self.monitor.evaluate(self.model.backbone)

    def make_callbacks(cfg, trainer):
        monitors = knn.monitor_callbacks(cfg, trainer)
        return [AtStart(monitors[0]), *monitors]

    began = time.time()
    with tempfile.TemporaryDirectory() as workdir:
        result = pretrain.run_pretraining(config, workdir, make_callbacks=make_callbacks, print_fn=lambda line: None)
    curve = [[int(s), float(a)] for s, a in result["callbacks"][1].history]
    return {"start": float(start["knn"]), "curve": curve, "seconds": time.time() - began}


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        method, seed = args.worker.split(",")
        print("RESULT " + json.dumps(measure(method, int(seed), args.every, args.steps)), flush=True)
        return
    print(f"CPU: {cpu_line()}")
    jobs = [(m, s, k) for m in args.methods for s in args.seeds for k in args.settings]
    running, results = [], {}
    while jobs or running:
        while jobs and len(running) < args.parallel:
            method, seed, setting = jobs.pop(0)
            env = dict(os.environ, **SETTINGS[setting])
            cmd = [sys.executable, os.path.abspath(__file__), f"--worker={method},{seed}", f"--every={args.every}",
                   f"--steps={args.steps}"]
            running.append(((method, seed, setting), subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                                                       stderr=subprocess.PIPE, text=True)))
        time.sleep(1)
        for item in list(running):
            key, proc = item
            if proc.poll() is None:
                continue
            running.remove(item)
            out, err = proc.communicate()
            line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                print(f"{key}: failed\n{err[-2000:]}", flush=True)
                continue
            results[key] = json.loads(line[len("RESULT "):])
            r = results[key]
            curve = " ".join(f"{s}:{a:.2f}" for s, a in r["curve"])
            print(f"{key[0]:7s} seed {key[1]} {key[2]:10s} start {r['start']:.2f}  {curve}  "
                  f"gain {r['curve'][-1][1] - r['start']:+.2f}  ({r['seconds']:.0f} s)", flush=True)
    for method in args.methods:
        gains = [r["curve"][-1][1] - r["start"] for (m, _, _), r in results.items() if m == method]
        if gains:
            print(f"{method}: {len(gains)} runs, gain min {min(gains):+.2f}, "
                  f"median {sorted(gains)[len(gains) // 2]:+.2f}, max {max(gains):+.2f}")


if __name__ == "__main__":
    main()
