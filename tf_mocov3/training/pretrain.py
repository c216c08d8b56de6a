"""Pre-training: the MoCo v3 model and the two-view input as a task of the one run loop (training/loop.py).

`run_pretraining` is what `python -m tf_mocov3.train` calls; tests call it in-process. Running it again on the same
workdir resumes from the last checkpoint and sees the batches the uninterrupted run would have seen. Monitors that
belong to evaluation (the kNN monitor) are handed in by the caller through `make_callbacks`, so this module needs
nothing above training/.
"""

from tf_mocov3.data import pipelines
from tf_mocov3.data import sources
from tf_mocov3.models import feature_queue
from tf_mocov3.models import moco
from tf_mocov3.training import distribute
from tf_mocov3.training import loop
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
    return bool(config.knn.enabled) and config.knn.bank == "queue"


def attach_feature_queue(model, config, strategy, num_train):
    """Gives `model` the kNN monitor's FeatureQueue: config.knn.queue_size rows (0 = 10% of the training split, at
    least one global batch) of the backbone's width, made under the strategy's scope."""
    size = int(config.knn.queue_size or max(num_train // 10, config.batch_size))
    with strategy.scope():
        queue = feature_queue.FeatureQueue(size, int(model.backbone.output.shape[-1]), name="feature_queue")
    model.attach_feature_queue(queue, config.knn.queue_encoder)
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


def _intervals_of(config):
    """The pre-training step intervals: logging, checkpoints and (when on) the kNN monitor."""
    intervals = {"log_every_steps": config.log_every_steps, "checkpoint_every_steps": config.checkpoint_every_steps}
    if config.knn.enabled:
        intervals["knn.every_steps"] = config.knn.every_steps
    return intervals


def _with_intervals(config, rounded):
    """`config`, or a copy of it with the `rounded` intervals when any of them changed."""
    if all(rounded[key] == value for key, value in _intervals_of(config).items()):
        return config
    config = config.copy_and_resolve_references()
    config.log_every_steps = rounded["log_every_steps"]
    config.checkpoint_every_steps = rounded["checkpoint_every_steps"]
    if "knn.every_steps" in rounded:
        config.knn.every_steps = rounded["knn.every_steps"]
    return config


def round_intervals(config, steps_per_call):
    """-> (a copy of `config` whose log, checkpoint and kNN intervals are multiples of `steps_per_call`, the line
    that says what changed or None): trainer.round_intervals on the pre-training keys, as loop.run does it. The copy
    is what the run uses and records in config.json."""
    rounded, line = trainer_lib.round_intervals(steps_per_call, **_intervals_of(config))
    return _with_intervals(config, rounded), line


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
    address = config.dataset.data_service
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


class PretrainTask(loop.Task):
    """MoCo v3 pre-training as a loop.Task: the MoCo model and its optimizer, the two-view batches, the kNN monitor's
    callbacks (`make_callbacks`), the keys a resume must match (RESUME_KEYS) and the pre-training report."""

    resume_keys = RESUME_KEYS
    diverged_hint = "lower config.optim.base_lr or use mixed_bfloat16 instead of mixed_float16"

    def __init__(self, config, make_callbacks=None):
        super().__init__(config)
        self.make_callbacks = make_callbacks
        self.made = []

    def setup(self, strategy, workdir):
        config = self.config
        self.source = sources.load_source(config.dataset)  # once per process; the input pipelines reuse it
        sources.check_source_for(self.source, strategy)  # e.g. array_record on a TPU pod slice, before any model
        if config.dataset.data_service:  # the service's workers hold none of our Python either
            sources.require_python_free(self.source, "a tf.data service worker (config.dataset.data_service)")
        self.steps_per_epoch = self.source.num_examples // config.batch_size
        self.total_steps = trainer_lib.total_steps_of(config, self.steps_per_epoch)
        self.global_batch = config.batch_size

    def step_intervals(self):
        return _intervals_of(self.config)

    def use_intervals(self, intervals):
        self.config = self.record = _with_intervals(self.config, intervals)

    def make_model(self):
        config = self.config
        return moco.build_moco(config.model, image_size=config.dataset.image_size, total_steps=self.total_steps,
                               method=config.method)

    def make_optimizer(self):
        return optim.build_optimizer(self.config.optim, global_batch=self.config.batch_size,
                                     steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps)

    def checkpoint_part(self, model, trainer):
        if uses_feature_queue(self.config):  # before the restore: a resumed run gets its queue back
            attach_feature_queue(model, self.config, self.strategy, self.source.num_examples)
        return None

    def restored(self, model, trainer, start_step):
        if not start_step and self.config.pretrained:
            pretrained.restore_moco(model, self.config.pretrained)
            trainer.say(f"Starting from the weights of {self.config.pretrained}.")

    def start_line(self, start_step):
        config, method = self.config, self.config.method
        return (f"Pre-training {config.model.arch}{'' if method == 'mocov3' else ' with ' + method} on "
                f"{config.dataset.name}: {self.total_steps} steps ({self.steps_per_epoch} per epoch), global batch "
                f"{config.batch_size} on {self.strategy.num_replicas_in_sync} replica(s), workdir "
                f"{self.workdir}.")

    def finished_line(self, start_step):
        return f"Training already finished: step {start_step} of {self.total_steps}."

    def dataset(self, start_step):
        return make_dataset(self.config, self.strategy, start_step, self.total_steps, self.source)

    def callbacks(self, model, trainer):
        self.made = list(self.make_callbacks(self.config, trainer)) if self.make_callbacks else []
        return self.made

    def report(self, model, trainer, start_step, history):
        if history is None:  # already finished: the report of the run that finished it stands
            return {"step": start_step, "loss": None, "model": model, "metrics": trainer.metrics, "callbacks": []}
        write_pretraining_report(trainer)
        return {"step": int(model.optimizer.iterations.numpy()), "loss": history.history.get("loss", [None])[-1],
                "model": model, "metrics": trainer.metrics, "callbacks": self.made}


def run_pretraining(config, workdir, *, strategy=None, tpu="", extra_callbacks=(), make_callbacks=None,
                    print_fn=None):
    """Pre-trains (or resumes) MoCo v3 as `config` says, writing everything to `workdir`: loop.run of a PretrainTask.

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
    return loop.run(PretrainTask(config, make_callbacks), workdir, strategy=strategy, tpu=tpu, print_fn=print_fn,
                    extra_callbacks=extra_callbacks)
