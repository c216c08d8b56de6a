"""tf.distribute strategies by name, and the few facts about them the rest of the code needs.

Names (config.strategy or --strategy):
  one_device    the default strategy on the first GPU, else the CPU.
  mirrored      all local GPUs; on a machine without GPUs, `num_cpu_devices` logical CPU devices
                (how the tests run two replicas on one CPU).
  multi_worker  MultiWorkerMirroredStrategy; the cluster comes from the TF_CONFIG environment variable.
  tpu           TPUStrategy on the Cloud TPU named by `tpu` ('local' on a TPU VM).
  auto          tpu when a TPU name is given, mirrored when there are several GPUs, else one_device.
"""

import itertools
import json
import os

import tensorflow as tf

from tf_mocov3 import config_lib
from tf_mocov3.data import pipelines

STRATEGIES = config_lib.STRATEGIES

_KEY_RANGE = 100_000
_mirrored_made = itertools.count(1)


def mirrored_strategy(devices=None):
    """tf.distribute.MirroredStrategy(devices) with collective keys no other strategy of this process uses.

    Every MirroredStrategy starts its collective group keys at the class attribute `_collective_key_base` (0), so a
    second strategy in the same process (a probe after pre-training in a notebook, or the test suite) reuses the
    first one's (group, instance) keys, and the runtime, which remembers each instance's shape, fails with
    "Shape mismatch in the collective instance N". Each strategy made here gets its own key range.
    """
    cls = tf.distribute.MirroredStrategy
    previous = cls._collective_key_base  # pylint: disable=protected-access
    cls._collective_key_base = next(_mirrored_made) * _KEY_RANGE  # pylint: disable=protected-access
    try:
        return cls(devices)
    finally:
        cls._collective_key_base = previous  # pylint: disable=protected-access


def configure_cpu_devices(num_devices):
    """Split the physical CPU into `num_devices` logical devices; must run before TensorFlow initialises."""
    if num_devices <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == num_devices:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices)
    except RuntimeError as err:
        raise RuntimeError(f"Cannot split the CPU into {num_devices} logical devices because TensorFlow is "
                           "already initialised; set the device count before any TensorFlow op runs.") from err


def make_strategy(name="auto", *, tpu="", num_cpu_devices=0):
    """The tf.distribute.Strategy called `name` (see the module docstring)."""
    if name not in STRATEGIES:
        raise ValueError(f"config.strategy={name!r} is unknown; choose one of {', '.join(STRATEGIES)}.")
    gpus = tf.config.list_physical_devices("GPU")
    if name == "auto":
        name = "tpu" if tpu else ("mirrored" if len(gpus) > 1 else "one_device")
    if name == "one_device":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if gpus:
            return mirrored_strategy()
        configure_cpu_devices(num_cpu_devices)
        cpus = tf.config.list_logical_devices("CPU")
        return mirrored_strategy([d.name for d in cpus])
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("config.strategy='multi_worker' needs the cluster in the TF_CONFIG environment "
                             "variable; set TF_CONFIG on every worker or use strategy 'mirrored'.")
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.AUTO)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    # tpu
    if not tpu:
        raise ValueError("config.strategy='tpu' needs the TPU's name; pass --tpu=NAME (or --tpu=local on a TPU VM).")
    check_tpu_launch(tpu)
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def check_tpu_launch(tpu, environ=None):
    """Refuses a multi-host TPU slice started the way JAX or PyTorch/XLA start one (a process per host).

    TensorFlow drives a whole pod slice from ONE client process: on the slice's first VM (worker 0), with
    TPU_LOAD_LIBRARY=0 (that process must not claim the local chips itself) and --tpu=NAME naming the slice; the
    input function runs as a graph on every host's TensorFlow server. What is detectable from the environment is
    refused here in one sentence: --tpu=local on a VM that TPU_WORKER_HOSTNAMES says is one of several hosts, and a
    process on a VM other than worker 0 (TPU_WORKER_ID; both variables are set where the TPU runtime exports them,
    e.g. on GKE). Elsewhere a wrong start fails in TensorFlow's TPU initialisation.
    """
    environ = os.environ if environ is None else environ
    hosts = [h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    worker = environ.get("TPU_WORKER_ID", "").strip()
    if tpu == "local" and len(hosts) > 1:
        raise ValueError(f"--tpu=local drives only this VM's chips, but this VM is one of the {len(hosts)} hosts of a "
                         f"pod slice (TPU_WORKER_HOSTNAMES): TensorFlow drives a slice from one process, so run the "
                         f"command once, on worker 0, with TPU_LOAD_LIBRARY=0 and --tpu=SLICE_NAME (README, "
                         f"'Cloud TPU pod slices').")
    if worker not in ("", "0") and len(hosts) > 1:
        raise ValueError(f"This VM is worker {worker} of a {len(hosts)}-host pod slice, and TensorFlow drives a slice "
                         f"from one process on worker 0: stop the command here and run it once on worker 0 with "
                         f"TPU_LOAD_LIBRARY=0 and --tpu=SLICE_NAME (README, 'Cloud TPU pod slices').")


def is_chief(strategy):
    """True on the worker that writes logs and the real checkpoints (worker 0 or the TF_CONFIG chief)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    resolver = strategy.cluster_resolver
    return resolver.task_type in (None, "chief") or (
        resolver.task_type == "worker" and resolver.task_id == 0
        and "chief" not in json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {}))


def is_single_device(strategy):
    return strategy.num_replicas_in_sync == 1 and not isinstance(
        strategy, (tf.distribute.MultiWorkerMirroredStrategy, tf.distribute.TPUStrategy))


def pipeline_datasets(strategy, make, *, replica_rows=None):
    """The input of a training loop over `strategy`, built per input pipeline.

    `make(input_context)` returns a dataset of batches: of the global batch for None (one device), else of that
    input pipeline's rows of each global batch. On several replicas each pipeline (host) builds only its rows and
    hands them to its local replicas (pipelines.per_replica_batches; `replica_rows` for batches that may end short),
    instead of Keras distributing the global batch, which makes every worker build all of it and keep a share.
    """
    if is_single_device(strategy):
        return make(None)

    def per_pipeline(ctx):
        local = ctx.num_replicas_in_sync // ctx.num_input_pipelines
        return pipelines.per_replica_batches(make(ctx), local, replica_rows)

    return strategy.distribute_datasets_from_function(per_pipeline)


def worker_index(strategy):
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return int(strategy.cluster_resolver.task_id or 0)
    return 0


def _num_workers(strategy):
    """The number of worker processes (the TF_CONFIG chief counts as one) of a MultiWorkerMirroredStrategy, else 1."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 1
    spec = strategy.cluster_resolver.cluster_spec()
    return sum(spec.num_tasks(job) for job in ("chief", "worker") if job in spec.jobs) or 1


def _position(strategy):
    """This worker's place among the workers: the chief first, then the workers by index."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 0
    resolver = strategy.cluster_resolver
    has_chief = "chief" in resolver.cluster_spec().jobs
    if resolver.task_type == "chief":
        return 0
    return int(resolver.task_id or 0) + (1 if has_chief else 0)


class WorkerValues:
    """Every worker's value of one number, exchanged by one small all-reduce: `WorkerValues(strategy)(value)` returns
    the list of the workers' values (the chief's first).

    Each worker calls it at the same point of the run (it is a collective: all wait for all), so it is how the
    workers agree on what one of them saw: a SIGTERM (training/callbacks.py PreemptionWatcher), a failed checkpoint
    write (checkpointing.Checkpointer), the chief's token in the workdir (Trainer.check_workdir_shared). Exact for
    integers below 2**50 (a float64 sum over the local replicas, divided by their number). With one worker (one
    device, mirrored, a TPU's single host program) there is nothing to exchange and no collective runs.
    """

    def __init__(self, strategy):
        self.strategy = strategy
        self.num_workers = _num_workers(strategy)
        self.position = _position(strategy)
        self._local = max(int(strategy.num_replicas_in_sync) // self.num_workers, 1)
        self._exchange = None
        if self.num_workers > 1:
            @tf.function
            def exchange(values):
                def replica_fn(x):
                    # A copy made inside the replica (on its device): all_reduce takes its destination from the
                    # value's device, which the argument, made outside, does not have.
                    return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(x))
                return strategy.run(replica_fn, args=(values,))
            self._exchange = exchange

    def __call__(self, value):
        if self._exchange is None:
            return [float(value)]
        mine = [0.0] * self.num_workers
        mine[self.position] = float(value)
        total = self.strategy.experimental_local_results(self._exchange(tf.constant(mine, tf.float64)))[0]
        return [float(v) / self._local for v in total.numpy()]


def describe_workers(flags):
    """The workers whose flag is set, for a message: "Worker 1", "The chief (worker 0), worker 2"."""
    names = ["the chief (worker 0)" if i == 0 else f"worker {i}" for i, flag in enumerate(flags) if flag]
    text = ", ".join(names)
    return text[:1].upper() + text[1:]
