"""Pre-training, start to end: config -> strategy -> data -> MoCoV3 -> model.fit -> workdir.

`run_pretraining` is what `python -m tf_mocov3.train` calls; tests call it in-process. Running it again on the same
workdir resumes from the last checkpoint and sees the batches the uninterrupted run would have seen.
"""

import json
import os

import keras
import tensorflow as tf

from tf_mocov3.training import callbacks as callbacks_lib
from tf_mocov3.training import checkpointing
from tf_mocov3 import config_lib
from tf_mocov3.data import sources as data
from tf_mocov3.evaluation import demo as demo_eval
from tf_mocov3.training import distribute
from tf_mocov3.evaluation import knn
from tf_mocov3.models import moco
from tf_mocov3.training import optim
from tf_mocov3.weights import pretrained
from tf_mocov3.training import reports

CONFIG_FILE = "config.json"
# Keys that must not change when a run resumes in the same workdir (they change what the checkpoint means).
_RESUME_KEYS = ("batch_size", "seed", "model.arch", "model.moco_dim", "model.mlp_dim", "dataset.name",
                "dataset.image_size", "optim.name")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the message names the step."""


_CURVES = ("loss", "lr", "momentum", "grad_norm_first_block", "grad_norm_last_block", "knn_top1")


def write_pretraining_report(workdir):
    """metrics.json (key "pretrain") and pretrain.png from WORKDIR/metrics.jsonl; returns the printable summary."""
    with open(os.path.join(workdir, callbacks_lib.METRICS_FILE)) as f:
        records = [json.loads(line) for line in f if line.strip()]
    curves = {key: [(r["step"], r[key]) for r in records if key in r] for key in _CURVES}
    curves = {key: points for key, points in curves.items() if points}
    final = {"step": records[-1]["step"] if records else 0}
    for key, points in curves.items():
        final[key] = points[-1][1]
    if "knn_top1" in curves:
        final["knn_top1_best"] = max(value for _, value in curves["knn_top1"])
    return reports.write_report(workdir, name="pretrain", metrics={"pretrain": final}, curves=curves,
                                table=[final])


def total_steps_of(config, steps_per_epoch):
    return int(config.max_steps) if config.max_steps > 0 else int(config.epochs) * int(steps_per_epoch)


def resolve_jit_compile(config, strategy):
    """config.jit_compile resolved: "auto" is XLA on a TPU and on one GPU; not on CPUs, where TensorFlow's
    oneDNN kernels ran the ViT-S/16 step in 28 CPU-s against 32 under XLA:CPU (BUILD_NOTES.md)."""
    choice = str(config.jit_compile).lower()
    if choice == "auto":
        if isinstance(strategy, tf.distribute.TPUStrategy):
            return True
        return distribute.is_single_device(strategy) and bool(tf.config.list_logical_devices("GPU"))
    return choice == "true"


def build_model_and_optimizer(config, strategy, *, steps_per_epoch, total_steps):
    """MoCoV3 and its optimizer, compiled, created under `strategy`'s scope.

    The initial weights are a function of config.seed alone (the same on every worker and on every restart).
    """
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = moco.build_moco(config.model, image_size=config.dataset.image_size, total_steps=total_steps)
        optimizer = optim.build_optimizer(config.optim, global_batch=config.batch_size,
                                          steps_per_epoch=steps_per_epoch, total_steps=total_steps)
        model.compile(optimizer=optimizer, jit_compile=resolve_jit_compile(config, strategy))
        model.optimizer.build(model.trainable_variables)
    return model


def make_dataset(config, strategy, start_step):
    if distribute.is_single_device(strategy):
        return data.build_pretrain_dataset(config, start_step=start_step)
    return strategy.distribute_datasets_from_function(
        lambda ctx: data.build_pretrain_dataset(config, input_context=ctx, start_step=start_step))


def run_pretraining(config, workdir, *, strategy=None, tpu="", extra_callbacks=(), print_fn=None):
    """Pre-trains (or resumes) MoCo v3 as `config` says, writing everything to `workdir`.

    Returns a dict with the final `step`, `loss` (the mean over the steps this call ran), the `model`, the
    `metrics` writer and the `knn_monitor` (None when config.knn.enabled is False). Raises
    config_lib.ConfigError for a bad config (before any work) and TrainingDiverged when the loss stops being
    finite.
    """
    if strategy is None:
        config_lib.validate(config, workdir=workdir)  # catch mistakes before touching devices
        strategy = distribute.make_strategy(config.strategy, tpu=tpu, num_cpu_devices=config.num_cpu_devices)
    config_lib.validate(config, num_replicas=strategy.num_replicas_in_sync, workdir=workdir)
    chief = distribute.is_chief(strategy)

    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(config.mixed_precision)
    try:
        steps_per_epoch = data.steps_per_epoch(config)
        total_steps = total_steps_of(config, steps_per_epoch)
        config_lib.check_resume_compatible(workdir, config, _RESUME_KEYS, config_file=CONFIG_FILE)
        model = build_model_and_optimizer(config, strategy, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
        checkpointer = checkpointing.Checkpointer(
            workdir, model=model, optimizer=model.optimizer, keep=config.keep_checkpoints,
            is_chief=chief, worker_index=distribute.worker_index(strategy))
        start_step = checkpointer.restore_latest()
        if not start_step and config.get("pretrained"):
            pretrained.restore_moco(model, config.pretrained)
        if chief:
            with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
                f.write(config.to_json_best_effort(indent=2))
        say = print_fn or (lambda line: print(line, flush=True))
        if start_step:
            say(f"Resuming from step {start_step} ({checkpointer.latest_path()}).")
        elif config.get("pretrained"):
            say(f"Starting from the weights of {config.pretrained}.")
        if start_step >= total_steps:
            say(f"Training already finished: step {start_step} of {total_steps}.")
            if chief and config.get("demo_eval"):
                demo_eval.evaluate_demo(workdir, config, print_fn=print_fn)
            return {"step": start_step, "loss": None, "model": model}
        if chief:
            say(f"Pre-training {config.model.arch} on {config.dataset.name}: {total_steps} steps "
                f"({steps_per_epoch} per epoch), global batch {config.batch_size} on "
                f"{strategy.num_replicas_in_sync} replica(s), workdir {workdir}.")

        dataset = make_dataset(config, strategy, start_step)
        guard = callbacks_lib.NonFiniteLossGuard()
        metrics = callbacks_lib.MetricsWriter(workdir, config.log_every_steps, total_steps, config.batch_size,
                                              enabled=chief)
        cbs = [guard, metrics]
        if chief:
            cbs.append(callbacks_lib.ProgressLogger(total_steps, config.batch_size, config.log_every_steps,
                                                    print_fn=print_fn))
        monitor = knn.make_monitor(config, metrics, print_fn=print_fn) if chief else None
        if monitor is not None:
            cbs.append(monitor)
        cbs.extend(extra_callbacks)
        cbs.append(callbacks_lib.CheckpointSaver(checkpointer, config.checkpoint_every_steps, guard))
        history = model.fit(dataset, epochs=1, steps_per_epoch=total_steps - start_step, callbacks=cbs, verbose=0)
        if guard.bad_step is not None:
            raise TrainingDiverged(
                f"The loss became NaN or Inf at step {guard.bad_step}; the last good checkpoint "
                f"({checkpointer.latest_path()}) is kept. Lower config.optim.base_lr or use mixed_bfloat16 "
                "instead of mixed_float16, then run the same command again to resume.")
        loss = history.history.get("loss", [None])[-1]
        if chief:
            say(write_pretraining_report(workdir))
        if chief and config.get("demo_eval"):
            demo_eval.evaluate_demo(workdir, config, print_fn=print_fn)
        return {"step": int(model.optimizer.iterations.numpy()), "loss": loss, "model": model,
                "metrics": metrics, "knn_monitor": monitor}
    finally:
        keras.config.set_dtype_policy(previous_policy)
