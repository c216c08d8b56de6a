r"""Cost of one kNN-monitor evaluation against one pre-training step, in the demo setting.

  python benchmarks/knn_cost.py                                 # configs/demo.py: vit_micro, 32 px, batch 256
  python benchmarks/knn_cost.py --eval_sizes=2000,10000 --train_steps=3 --repeats=2

The evaluation is `tf_mocov3.evaluation.knn.KNNMonitor.evaluate` on Fashion-MNIST: features of the fixed memory
bank (10% of the training split = 6000 images) and of the held-out images (the test split, capped at each
--eval_sizes value), then the weighted kNN (k=200, T=0.07). The preprocessed images are cached once (reported
apart: it happens once per run). The train step is the real one (`MoCoV3.train_step` through `model.fit`, XLA as
the demo runs it) on random tensors. The ratio says how many train steps one evaluation costs; with
config.knn.every_steps = E the monitor adds ratio / E to the training time.
"""

import argparse
import importlib.util
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval_sizes", type=lambda text: [int(n) for n in text.split(",")], default=[2000, 10000],
                        help="Held-out image counts to time, comma-separated (0 = all).")
    parser.add_argument("--train_fraction", type=float, default=0.1, help="Memory-bank share of the training split.")
    parser.add_argument("--train_steps", type=int, default=3,
                        help="Timed train steps before and after each evaluation.")
    parser.add_argument("--repeats", type=int, default=1, help="Timed evaluations per size (after one untimed).")
    return parser.parse_args(argv)


def demo_config():
    spec = importlib.util.spec_from_file_location("demo", os.path.join(ROOT, "configs", "demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


class TrainClock:
    """The demo model and its real train step on random in-memory views; `seconds_per_step(n)` times n steps."""

    def __init__(self, config):
        import keras  # pylint: disable=import-outside-toplevel
        import tensorflow as tf  # pylint: disable=import-outside-toplevel

        from tf_mocov3.models import moco  # pylint: disable=import-outside-toplevel
        from tf_mocov3.training import optim  # pylint: disable=import-outside-toplevel
        from tf_mocov3.training import trainer  # pylint: disable=import-outside-toplevel

        steps_per_epoch, total_steps = 234, 702
        run = trainer.Trainer(None, total_steps=total_steps, global_batch=config.batch_size)
        self.model = run.build(
            lambda: moco.build_moco(config.model, image_size=config.dataset.image_size, total_steps=total_steps),
            lambda: optim.build_optimizer(config.optim, global_batch=config.batch_size,
                                          steps_per_epoch=steps_per_epoch, total_steps=total_steps),
            seed=config.seed, jit_compile=trainer.resolve_jit_compile(config, tf.distribute.get_strategy()))
        size = config.dataset.image_size
        views = tf.random.normal([2, config.batch_size, size, size, 3], seed=0)
        self.dataset = tf.data.Dataset.from_tensors((views[0], views[1])).repeat()
        self.marks = marks = []

        class Clock(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                float(logs["loss"])  # wait for the step
                marks.append(time.perf_counter())

        self.clock = Clock()
        self.seconds_per_step(1)  # tracing and XLA compilation

    def seconds_per_step(self, steps):
        """Mean time of `steps` steps after one untimed step."""
        self.marks.clear()
        self.model.fit(self.dataset, epochs=1, steps_per_epoch=steps + 1, callbacks=[self.clock], verbose=0)
        return (self.marks[-1] - self.marks[0]) / steps


def main(argv=None):
    args = parse_args(argv)
    from tf_mocov3.evaluation import knn  # pylint: disable=import-outside-toplevel
    from tf_mocov3.training import reports  # pylint: disable=import-outside-toplevel

    config = demo_config()
    train = TrainClock(config)
    print(f"demo model: {config.model.arch}, {config.dataset.image_size} px, batch {config.batch_size}", flush=True)
    rows = []
    for size in args.eval_sizes:
        monitor = knn.KNNMonitor(config.dataset, image_size=config.dataset.image_size,
                                 train_fraction=args.train_fraction, max_eval_examples=size)
        start = time.perf_counter()
        monitor.prepare()
        prepare_seconds = time.perf_counter() - start
        monitor.evaluate(train.model.backbone)  # traces and compiles the forward function
        # The machine may be shared: time train steps right before and right after each evaluation.
        for _ in range(args.repeats):
            before = train.seconds_per_step(args.train_steps)
            start = time.perf_counter()
            accuracy = monitor.evaluate(train.model.backbone)
            seconds = time.perf_counter() - start
            after = train.seconds_per_step(args.train_steps)
            step_seconds = (before + after) / 2
            rows.append(dict(bank=monitor.bank.size, eval=monitor.queries.size, prepare_s=f"{prepare_seconds:.1f}",
                             eval_s=f"{seconds:.2f}", train_step_s=f"{before:.2f}/{after:.2f}",
                             ratio=f"{seconds / step_seconds:.1f}",
                             overhead_every_200=f"{100 * seconds / step_seconds / 200:.1f}%",
                             top1=f"{accuracy:.2f}"))
            print(rows[-1], flush=True)
    print(reports.format_table(rows))


if __name__ == "__main__":
    main()
