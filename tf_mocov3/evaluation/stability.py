"""The paper's central finding in miniature (Figures 4-5): the same short run with a random frozen patch projection
and with a trained one, at a high learning rate, watched by the kNN monitor and the block gradient norms.

`run_stability(config, workdir)` pre-trains twice from the same seed (same initial weights, same batches), once
with config.model.train_patch_embed=False (the paper's trick) and once with True, in WORKDIR/random_patch and
WORKDIR/trained_patch; the kNN monitor of config.knn runs every few steps and once before the first step. It then
writes WORKDIR/stability.png (kNN top-1, first-block and last-block gradient norms of both runs side by side) and
WORKDIR/stability.json, and returns the table it prints: each run's final and best kNN top-1 and its largest dip
(the largest fall below the best accuracy reached so far). `python -m tf_mocov3.stability` runs it.
"""

import copy
import os

import keras
import tensorflow as tf

from tf_mocov3 import config_lib
from tf_mocov3.evaluation import knn
from tf_mocov3.training import pretrain
from tf_mocov3.training import reports

RUNS = (("random frozen patch projection", "random_patch", False),
        ("trained patch projection", "trained_patch", True))
PLOT_FILE = "stability.png"
RESULT_FILE = "stability.json"


def largest_dip(points):
    """The largest fall of a curve [(step, value), ...] below its running maximum (0 for a curve that never falls);
    returns (dip, step of the dip)."""
    best, dip, at = None, 0.0, None
    for step, value in points:
        if best is not None and best - value > dip:
            dip, at = best - value, step
        best = value if best is None else max(best, value)
    return dip, at


class _KNNBeforeTraining(keras.callbacks.Callback):
    """Evaluates the kNN monitor on the initial backbone and logs it as step 0."""

    def __init__(self, monitor, metrics_writer):
        super().__init__()
        self.monitor, self.metrics_writer = monitor, metrics_writer

    def on_train_begin(self, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == 0:
            accuracy = self.monitor.evaluate(self.model.backbone)
            self.monitor.record_accuracy(0, accuracy)
            self.metrics_writer.write({"step": 0, "knn_top1": accuracy, "knn_step": 0})
            self.monitor.print_fn(f"kNN step 0 (initial weights): top-1 {accuracy:.2f}%")


def _callbacks(config, trainer):
    monitors = knn.monitor_callbacks(config, trainer)
    if not monitors:
        return []
    return [_KNNBeforeTraining(monitors[0], trainer.metrics), *monitors]


def plot_stability(path, curves):
    """One PNG: kNN top-1, first-block and last-block gradient norm (log scale), each run one line per panel."""
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg", force=True)
    from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel

    panels = (("knn_top1", "kNN top-1 (%)", False), ("grad_norm_first_block", "gradient norm, first block", True),
              ("grad_norm_last_block", "gradient norm, last block", True))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 3.6))
    for ax, (key, title, log) in zip(axes, panels):
        for label, run_curves in curves.items():
            points = run_curves.get(key, [])
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, label=label, marker="." if key == "knn_top1" else None, linewidth=1.2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    reports.save_figure(fig, path, dpi=90)
    plt.close(fig)
    return path


def run_stability(config, workdir, *, print_fn=None):
    """Both runs, the PNG and the table (see the module docstring); returns {"rows": [...], "plot": path}."""
    say = print_fn or (lambda line: print(line, flush=True))
    config = config_lib.complete(config, "pretrain")
    if not config.knn.enabled:
        raise ValueError("The stability run needs the kNN monitor: set config.knn.enabled=True (and a labelled "
                         "config.knn.eval_split).")
    curves, rows = {}, []
    for label, name, trained in RUNS:
        run_config = copy.deepcopy(config)
        run_config.model.train_patch_embed = trained
        run_dir = os.path.join(workdir, name)
        say(f"== {label} (config.model.train_patch_embed={trained}) ==")
        pretrain.run_pretraining(run_config, run_dir, make_callbacks=_callbacks, print_fn=say)
        run_curves = reports.log_curves(reports.read_log(run_dir),
                                        ("knn_top1", "grad_norm_first_block", "grad_norm_last_block", "loss"))
        curves[label] = run_curves
        knn_curve = run_curves.get("knn_top1", [])
        dip, dip_step = largest_dip(knn_curve)
        best_step, best = max(knn_curve, key=lambda p: p[1]) if knn_curve else (None, None)
        rows.append({"run": label, "final kNN (%)": round(knn_curve[-1][1], 2) if knn_curve else None,
                     "best kNN (%)": None if best is None else round(best, 2), "best at step": best_step,
                     "largest dip (points)": round(dip, 2), "dip at step": dip_step})
    tf.io.gfile.makedirs(workdir)
    plot = plot_stability(os.path.join(workdir, PLOT_FILE), curves)
    config_lib.write_json(os.path.join(workdir, RESULT_FILE), {"rows": rows, "curves": curves}, indent=1)
    say(reports.format_table(rows))
    say(f"Plot: {plot}")
    return {"rows": rows, "plot": plot, "curves": curves}
