"""Pre-training: the MoCo v3 model, the two-view input and one Trainer run.

`run_pretraining` is what `python -m tf_mocov3.train` calls; tests call it in-process. Running it again on the same
workdir resumes from the last checkpoint and sees the batches the uninterrupted run would have seen. Monitors that
belong to evaluation (the kNN monitor) are handed in by the caller through `make_callbacks`, so this module needs
nothing above training/.
"""

from tf_mocov3 import config_lib
from tf_mocov3.data import pipelines
from tf_mocov3.data import sources
from tf_mocov3.models import feature_queue
from tf_mocov3.models import moco
from tf_mocov3.training import distribute
from tf_mocov3.training import optim
from tf_mocov3.training import reports
from tf_mocov3.training import trainer as trainer_lib
from tf_mocov3.weights import pretrained

CONFIG_FILE = "config.json"
REPORT_NAME = "pretrain"
# Keys that must not change when a run resumes in the same workdir (they change what the checkpoint means).
RESUME_KEYS = ("batch_size", "seed", "model.arch", "model.moco_dim", "model.mlp_dim", "dataset.name",
               "dataset.image_size", "optim.name", "method", "model.pos_embed", "model.pooling", "model.head_bn",
               "model.predictor")
_CURVES = ("loss", "lr", "momentum", "grad_norm_first_block", "grad_norm_last_block", "knn_top1")


def write_pretraining_report(trainer):
    """metrics.json (key "pretrain") and pretrain.png from the run's metrics.jsonl; returns the printable summary."""
    records = trainer.read_log()
    curves = reports.log_curves(records, _CURVES)
    final = {"step": records[-1]["step"] if records else 0}
    for key, points in curves.items():
        final[key] = points[-1][1]
    if "knn_top1" in curves:
        final["knn_top1_best"] = max(value for _, value in curves["knn_top1"])
    return trainer.report(name=REPORT_NAME, metrics={"pretrain": final}, curves=curves, table=[final])


def uses_feature_queue(config):
    """True when the kNN monitor's bank is the paper's queue of training features (config.knn.bank="queue")."""
    knn = config.get("knn") or {}
    return bool(knn.get("enabled")) and knn.get("bank", "images") == "queue"


def attach_feature_queue(model, config, strategy, num_train):
    """Gives `model` the kNN monitor's FeatureQueue: config.knn.queue_size rows (0 = 10% of the training split, at
    least one global batch) of the backbone's width, made under the strategy's scope."""
    size = int(config.knn.get("queue_size", 0) or max(num_train // 10, config.batch_size))
    with strategy.scope():
        queue = feature_queue.FeatureQueue(size, int(model.backbone.output.shape[-1]), name="feature_queue")
    model.attach_feature_queue(queue, config.knn.get("queue_encoder", "momentum"))
    return queue


def through_data_service(ds, address):
    """`ds` produced by the tf.data service dispatcher at `address` (config.dataset.data_service) instead of here.

    The dataset's graph is sent to the service's workers, processes that hold TensorFlow and none of this package (as
    a TPU pod's input hosts do), so it must be pure TensorFlow. ShardingPolicy.OFF: the job's one worker produces the
    whole dataset in order, so the batches are exactly the local pipeline's and a resumed run gets the same batches
    as a straight one. No job name: every iteration is a job of its own, so a rerun never joins a finished run's job.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    service = tf.data.experimental.service
    ds = ds.apply(service.distribute(processing_mode=service.ShardingPolicy.OFF, service=address))
    return ds.prefetch(tf.data.AUTOTUNE)


def round_intervals(config, steps_per_call):
    """-> (a copy of `config` whose log, checkpoint and kNN intervals are multiples of `steps_per_call`, the line
    that says what changed or None): trainer.round_intervals on the pre-training keys. The copy is what the run
    uses and records in config.json."""
    intervals = {"log_every_steps": config.log_every_steps, "checkpoint_every_steps": config.checkpoint_every_steps}
    if config.get("knn") and config.knn.get("enabled"):
        intervals["knn.every_steps"] = config.knn.every_steps
    rounded, line = trainer_lib.round_intervals(steps_per_call, **intervals)
    if line is None:
        return config, None
    config = config.copy_and_resolve_references()
    config.log_every_steps = rounded["log_every_steps"]
    config.checkpoint_every_steps = rounded["checkpoint_every_steps"]
    if "knn.every_steps" in rounded:
        config.knn.every_steps = rounded["knn.every_steps"]
    return config, line


def make_dataset(config, strategy, start_step, end_step, source=None):
    """The per-replica two-view batches of global steps [start_step, end_step), distributed over `strategy` (with
    the images' labels when the kNN monitor's feature queue needs them, and the count of records the pipeline
    dropped, which the train step sums into `skipped_records`).

    The source (config.dataset) is opened once in this process (or passed in, opened by the run) and every input
    pipeline's function reuses it: no pipeline lists or reads the data set's metadata again.

    The dataset ends at end_step, so that several steps per host call stop exactly there (Keras runs a whole call of
    steps_per_execution steps as long as the data lasts). With config.dataset.data_service set, each input pipeline
    is produced by the tf.data service (`through_data_service`).
    """
    steps = int(end_step) - int(start_step)
    labels = uses_feature_queue(config)
    address = config.dataset.get("data_service") or ""
    source = sources.load_source(config.dataset) if source is None else source
    if address:
        sources.require_python_free(source, "a tf.data service worker (config.dataset.data_service)")

    def serve(ds):
        return through_data_service(ds, address) if address else ds

    if distribute.is_single_device(strategy):
        return serve(pipelines.build_pretrain_dataset(config, start_step=start_step, with_labels=labels,
                                                      count_skipped=True, source=source).take(steps))

    def per_pipeline(ctx):  # each pipeline emits its local replicas' batches, one per replica and step
        local = ctx.num_replicas_in_sync // ctx.num_input_pipelines
        return serve(pipelines.build_pretrain_dataset(config, input_context=ctx, start_step=start_step,
                                                      with_labels=labels, count_skipped=True,
                                                      source=source).take(steps * local))

    return strategy.distribute_datasets_from_function(per_pipeline)


def run_pretraining(config, workdir, *, strategy=None, tpu="", extra_callbacks=(), make_callbacks=None,
                    print_fn=None):
    """Pre-trains (or resumes) MoCo v3 as `config` says, writing everything to `workdir`.

    Args:
      config: a pre-training config (config_lib.base_config and a recipe's changes).
      workdir: checkpoints, metrics.jsonl, tensorboard/, config.json, metrics.json and pretrain.png go here.
      strategy: a tf.distribute.Strategy; None makes the one config.strategy names (with `tpu`).
      extra_callbacks: Keras callbacks run after the standard ones (tests stop a run with them).
      make_callbacks: optional function (config, trainer) -> list of callbacks, called before training on every
        worker once the config is checked (the kNN monitor is made this way: it logs through trainer.metrics).
      print_fn: where the progress lines go (default print).

    Returns:
      A dict: `step` (the optimizer step reached), `loss` (the mean of the step losses over the steps this call ran;
      None when the run had already finished), `model`, `metrics` (the trainer's MetricsWriter), `callbacks` (what
      make_callbacks returned).

    Raises config_lib.ConfigError for a bad config (before any work) and TrainingDiverged when the loss stops being
    finite.
    """
    if strategy is None:
        config_lib.validate(config, workdir=workdir)  # catch mistakes before touching devices
        strategy = trainer_lib.strategy_for(config, tpu)
    config_lib.validate(config, num_replicas=strategy.num_replicas_in_sync, workdir=workdir)
    source = sources.load_source(config.dataset)  # once per process; the input pipelines reuse it
    sources.check_source_for(source, strategy)  # e.g. array_record on a TPU pod slice, before any model is built
    if config.dataset.get("data_service"):  # the service's workers hold none of our Python either
        sources.require_python_free(source, "a tf.data service worker (config.dataset.data_service)")

    steps_per_epoch = source.num_examples // config.batch_size
    total_steps = trainer_lib.total_steps_of(config, steps_per_epoch)
    steps_per_call = trainer_lib.resolve_steps_per_execution(config, strategy)
    config, intervals_line = round_intervals(config, steps_per_call)
    trainer = trainer_lib.Trainer(
        workdir, strategy=strategy, total_steps=total_steps, global_batch=config.batch_size,
        log_every_steps=config.log_every_steps, checkpoint_every_steps=config.checkpoint_every_steps,
        keep_checkpoints=config.keep_checkpoints, config_file=CONFIG_FILE, kind="run",
        steps_per_execution=steps_per_call, print_fn=print_fn)
    trainer.check_resume(config, RESUME_KEYS)
    if intervals_line:
        trainer.say(intervals_line)
    with trainer_lib.precision(config.mixed_precision):
        model = trainer.build(
            lambda: moco.build_moco(config.model, image_size=config.dataset.image_size, total_steps=total_steps,
                                    method=config.get("method", "mocov3")),
            lambda: optim.build_optimizer(config.optim, global_batch=config.batch_size,
                                          steps_per_epoch=steps_per_epoch, total_steps=total_steps),
            seed=config.seed, jit_compile=trainer_lib.resolve_jit_compile(config, strategy))
        if uses_feature_queue(config):  # before the restore: a resumed run gets its queue back
            attach_feature_queue(model, config, strategy, source.num_examples)
        start_step = trainer.restore(model)
        if not start_step and config.get("pretrained"):
            pretrained.restore_moco(model, config.pretrained)
            trainer.say(f"Starting from the weights of {config.pretrained}.")
        trainer.write_config(config)
        if start_step >= total_steps:
            trainer.say(f"Training already finished: step {start_step} of {total_steps}.")
            return {"step": start_step, "loss": None, "model": model, "metrics": trainer.metrics, "callbacks": []}
        method = config.get("method", "mocov3")
        trainer.say(f"Pre-training {config.model.arch}{'' if method == 'mocov3' else ' with ' + method} on "
                    f"{config.dataset.name}: {total_steps} steps "
                    f"({steps_per_epoch} per epoch), global batch {config.batch_size} on "
                    f"{strategy.num_replicas_in_sync} replica(s), workdir {workdir}.")
        made = list(make_callbacks(config, trainer)) if make_callbacks else []
        history = trainer.fit(model, make_dataset(config, strategy, start_step, total_steps, source),
                              start_step=start_step,
                              callbacks=[*made, *extra_callbacks],
                              diverged_hint="lower config.optim.base_lr or use mixed_bfloat16 instead of "
                                            "mixed_float16")
    write_pretraining_report(trainer)
    return {"step": int(model.optimizer.iterations.numpy()), "loss": history.history.get("loss", [None])[-1],
            "model": model, "metrics": trainer.metrics, "callbacks": made}
