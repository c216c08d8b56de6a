"""Reports of every run: WORKDIR/metrics.json (merged across runs), a PNG of the curves, a text table; and the one
reader of the step log WORKDIR/metrics.jsonl that training writes (training/callbacks.py).

Pre-training, fine-tuning, the linear probe, kNN and the demo report all write through `write_report`, so one
metrics.json per workdir collects all of them and the plots look alike. Every file goes through tf.io.gfile (the PNG
is rendered to bytes first), so a gs:// workdir keeps its reports in the bucket.

Example:

    summary = write_report(workdir, name="linear_probe", metrics={"linear_probe_top1": 71.2},
                           curves={"holdout top-1": [(1, 60.0), (2, 65.5)]},
                           table=[{"lr": 12.0, "holdout_top1": 70.1, "test_top1": 71.2}])
    print(summary)
"""

import io
import json
import math
import os

import numpy as np
import tensorflow as tf

from tf_mocov3 import config_lib

REPORT_FILE = "metrics.json"      # the summary of every run in a workdir
METRICS_LOG = "metrics.jsonl"     # one record per logged step (training/callbacks.MetricsWriter)


# === Table ===


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.3e}"
        return f"{value:.4g}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


def _is_number(value):
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def format_table(rows):
    """A plain-text table of `rows` (dicts): columns in order of first appearance, numbers right-aligned.

    Floats >= 1 show two decimals (accuracies in %), smaller ones four significant digits (learning rates);
    a key missing from a row leaves its cell empty.
    """
    rows = list(rows or [])
    if not rows:
        return "(no rows)"
    columns = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    cells = [[_cell(row.get(col)) for col in columns] for row in rows]
    numeric = [all(_is_number(row.get(col)) or row.get(col) is None for row in rows) for col in columns]
    widths = [max(len(str(col)), *(len(r[i]) for r in cells)) for i, col in enumerate(columns)]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric)).rstrip()

    out = [line([str(c) for c in columns]), "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in cells)
    return "\n".join(out)


# === metrics.json ===


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    return value


def _merge(old, new):
    out = dict(old)
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_metrics(workdir):
    """WORKDIR/metrics.json as a dict ({} when absent)."""
    path = os.path.join(workdir, REPORT_FILE)
    text = config_lib.read_text(path)
    if text is None:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete or fix it, then run again.") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object; delete it, then run again.")
    return data


def merge_metrics(workdir, metrics):
    """Merges `metrics` into WORKDIR/metrics.json (nested dicts merged key by key); returns the result.

    The file is replaced whole through tf.io.gfile (config_lib.write_file: a temporary sibling renamed over it).
    """
    tf.io.gfile.makedirs(workdir)
    merged = _merge(read_metrics(workdir), _jsonable(metrics))
    config_lib.write_file(os.path.join(workdir, REPORT_FILE), json.dumps(merged, indent=2, sort_keys=True) + "\n")
    return merged


# === The step log ===


def read_log(workdir):
    """The records of WORKDIR/metrics.jsonl in file order ([] when absent)."""
    text = config_lib.read_text(os.path.join(workdir, METRICS_LOG))
    return [json.loads(line) for line in (text or "").splitlines() if line.strip()]


def log_curves(records, keys):
    """{key: [(step, value), ...]} of the records holding `key`, by step (a step logged twice keeps its last value,
    as after a resume), for the `keys` present."""
    curves = {}
    for key in keys:
        by_step = {r["step"]: r[key] for r in records if key in r}
        if by_step:
            curves[key] = sorted(by_step.items())
    return curves


# === Plot ===


def plot_curves(path, curves, title=None):
    """One subplot per curve ({name: [(step, value), ...]}), a PNG drawn with matplotlib's Agg backend and written
    through tf.io.gfile (save_figure)."""
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg", force=True)
    from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel

    names = list(curves)
    cols = min(len(names), 3)
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        points = list(curves[name])
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="." if len(points) < 50 else None)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=80)
    plt.close(fig)
    return path


def save_figure(fig, path, dpi):
    """Writes matplotlib figure `fig` as a PNG to `path` through tf.io.gfile (matplotlib itself writes local files
    only): rendered to bytes in memory, then replacing the file whole (config_lib.write_file)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    config_lib.write_file(path, buffer.getvalue())


def write_report(workdir, *, name, metrics, curves=None, table=None):
    """Merges `metrics` into WORKDIR/metrics.json, plots `curves` to WORKDIR/NAME.png, returns a summary string.

    Args:
      workdir: the run's directory (created if needed).
      name: the report's name (the PNG's file name and the summary's title).
      metrics: dict of JSON-able values, merged with the keys metrics.json already holds.
      curves: {curve name: [(step, value), ...]} or None; one subplot per curve (no PNG when empty).
      table: list of row dicts or None; the summary shows it, else the scalar metrics.

    Returns:
      The printable summary: a title line and format_table of `table` (or of the scalar metrics).
    """
    merge_metrics(workdir, metrics)
    if curves:
        plot_curves(os.path.join(workdir, f"{name}.png"), curves, title=name)
    if table:
        body = format_table(table)
    else:
        body = format_table([{"metric": k, "value": v} for k, v in metrics.items()
                             if _is_number(v) or isinstance(v, str)])
    return f"== {name} ==\n{body}"
