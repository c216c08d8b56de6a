r"""Weighted k-nearest-neighbour classification of frozen features: the kNN monitor and the kNN evaluation.

The classifier is Wu et al.'s (InstDisc, 2018), as in the MoCo / SimSiam kNN monitors: features are L2-normalised,
a test image's k most cosine-similar memory-bank images vote for their class with weight exp(similarity / T), the
class with the largest summed weight wins (k = 200, T = 0.07).

Once, on the full splits, for a pre-training workdir (writes WORKDIR/knn.json) or any --pretrained path:

  python -m tf_mocov3.knn --pretrained=runs/demo
  python -m tf_mocov3.knn --pretrained=runs/demo/checkpoints/ckpt-400 --dataset=fashion_mnist_idx --k=20

During pre-training, `KNNMonitor` (built by `make_monitor(config, metrics_writer)` from config.knn) evaluates every
config.knn.every_steps steps and logs `knn_top1` to metrics.jsonl and TensorBoard; it warns when the accuracy dips
below its best. Its memory bank is one of:

- `config.knn.bank="images"` (default): a fixed subset (config.knn.train_fraction) of the training split, embedded
  again with the current backbone at every evaluation (one forward pass per bank image per evaluation);
- `config.knn.bank="queue"`: the paper's monitor, a queue (models/feature_queue.py) of the last
  config.knn.queue_size training samples' backbone [CLS] features (0 = 10% of the training split), which the train
  step fills from the features it computes anyway (config.knn.queue_encoder: "momentum", the momentum encoder's
  features of the first view, or "query", the backbone's): no extra forward pass for the bank, only for the fixed
  evaluation images. The bank then holds augmented views from weights of the last queue_size / batch steps, as in
  the paper.
"""

import collections
import os
import time

import keras
import ml_collections
import numpy as np
import tensorflow as tf

from tf_mocov3 import config_lib
from tf_mocov3.data import order
from tf_mocov3.data import pipelines
from tf_mocov3.data import sources as data
from tf_mocov3.evaluation import features as features_lib

KNN_FILE = "knn.json"
# Preprocessed images of the monitor are kept in memory (a float32 tensor) below this size; above, they are
# decoded and preprocessed again at every evaluation.
CACHE_LIMIT_BYTES = 1 << 30



# === The classifier ===


def _normalize(x):
    return tf.math.l2_normalize(tf.convert_to_tensor(x, tf.float32), axis=-1)


@tf.function(reduce_retracing=True)
def _scores_chunk(bank, bank_labels, queries, num_classes, k, temperature):
    sims = tf.matmul(queries, bank, transpose_b=True)                       # [b, N] cosine similarities
    top = tf.math.top_k(sims, k=k)                                          # [b, k]
    weights = tf.exp(top.values / temperature)
    neighbour_labels = tf.gather(bank_labels, top.indices)                 # [b, k]
    rows = tf.shape(queries)[0]
    segment = tf.range(rows, dtype=tf.int64)[:, None] * num_classes + neighbour_labels
    scores = tf.math.unsorted_segment_sum(weights, segment, tf.cast(rows, tf.int64) * num_classes)
    return tf.reshape(scores, tf.stack([tf.cast(rows, tf.int64), num_classes]))


def weighted_knn_scores(train_features, train_labels, test_features, num_classes, k=200, temperature=0.07,
                        chunk_size=512):
    """Class scores [M, num_classes] (float32 np): per test row, sum of exp(cos_sim / T) over its k neighbours.

    k larger than the bank uses the whole bank. The test rows go through in chunks of `chunk_size`, so the
    similarity matrix held at once is [chunk_size, N] (512 x 60000 floats = 123 MB).
    """
    if k < 1 or temperature <= 0:
        raise ValueError(f"k must be >= 1 and temperature > 0, got k={k}, temperature={temperature}.")
    bank = _normalize(train_features)
    bank_labels = tf.convert_to_tensor(np.asarray(train_labels, np.int64))
    queries = _normalize(test_features)
    k = int(min(k, bank.shape[0]))
    out = []
    for start in range(0, int(queries.shape[0]), chunk_size):
        out.append(_scores_chunk(bank, bank_labels, queries[start:start + chunk_size],
                                 tf.constant(num_classes, tf.int64),
                                 tf.constant(k), tf.constant(temperature, tf.float32)).numpy())
    return np.concatenate(out) if out else np.zeros([0, num_classes], np.float32)


def weighted_knn_predict(train_features, train_labels, test_features, num_classes, k=200, temperature=0.07,
                         chunk_size=512):
    """Predicted labels (int64 np [M]) of the weighted kNN classifier (module docstring); ties go to the lower class."""
    scores = weighted_knn_scores(train_features, train_labels, test_features, num_classes, k, temperature, chunk_size)
    return np.argmax(scores, axis=-1).astype(np.int64)


def knn_top1(train_features, train_labels, test_features, test_labels, num_classes, k=200, temperature=0.07,
             chunk_size=512):
    """Top-1 accuracy in percent of the weighted kNN classifier."""
    predictions = weighted_knn_predict(train_features, train_labels, test_features, num_classes, k, temperature,
                                       chunk_size)
    return float(100.0 * np.mean(predictions == np.asarray(test_labels, np.int64)))


# === Evaluation sets ===


def _labelled_source(dataset_config, split, key):
    """The opened labelled split (sources.open_labelled), or a ValueError naming `key` and the fix."""
    try:
        return data.open_labelled(dataset_config, split)
    except (ValueError, OSError, tf.errors.OpError) as err:
        reason = str(err).strip().splitlines()[0].rstrip(".") if str(err).strip() else type(err).__name__
        raise ValueError(f"The kNN data set {key} (name={dataset_config['name']!r}, split={split!r}) cannot be "
                         f"used ({reason}); point {key} at a labelled data set or set config.knn.enabled=False."
                         ) from err


class ImageSet:
    """A fixed, eval-preprocessed subset (`indices`) of an opened labelled source, held in memory when small enough."""

    def __init__(self, source, indices, *, image_size, batch_size, cache_limit_bytes=CACHE_LIMIT_BYTES):
        self.source, self.indices = source, indices
        self.image_size, self.batch_size = image_size, batch_size
        self.num_classes, self.size = source.num_classes, len(indices)
        self.images = self.labels = None
        if self.size * image_size * image_size * 3 * 4 <= cache_limit_bytes:
            images, labels = [], []
            for x, y in self._dataset(1024).as_numpy_iterator():
                images.append(x)
                labels.append(y)
            self.images = tf.constant(np.concatenate(images))
            self.labels = np.concatenate(labels)

    def _dataset(self, batch_size):
        return pipelines.eval_dataset(self.source, self.image_size, batch_size, self.indices)

    @property
    def cached(self):
        return self.images is not None

    def batches(self):
        if self.cached:
            for start in range(0, self.size, self.batch_size):
                yield self.images[start:start + self.batch_size], self.labels[start:start + self.batch_size]
            return
        yield from self._dataset(self.batch_size).as_numpy_iterator()


def _step(model):
    return int(model.optimizer.iterations.numpy())


# === The monitor ===


class KNNMonitor(keras.callbacks.Callback):
    """Weighted kNN top-1 of `model.backbone` every `every_steps` optimizer steps and at the end of training.

    The memory bank (`train_fraction` of `train_split`) and the evaluation images (`eval_split`, at most
    `max_eval_examples`, 0 = all) are chosen once and kept preprocessed in memory; each evaluation recomputes
    their features with the current backbone in inference mode. Results go to `metrics_writer.write` as
    {"step", "knn_top1", "knn_step", "knn_seconds"} and to one printed line. A drop of more than `dip_margin`
    points below the best accuracy so far prints a WARNING line with the recent gradient norms of the first and
    last transformer blocks (grad_norm_first_block / grad_norm_last_block of the batch logs).

    Create it on the chief only (make_monitor does); it also checks `model.distribute_strategy` itself.
    """

    def __init__(self, dataset_config, *, image_size, every_steps=200, k=200, temperature=0.07, train_fraction=0.1,
                 train_split="train", eval_split="test", max_eval_examples=2000, dip_margin=5.0, batch_size=256,
                 seed=0, metrics_writer=None, print_fn=None, grad_history=5, bank="images"):
        super().__init__()
        if every_steps < 1:
            raise ValueError(f"config.knn.every_steps must be >= 1, got {every_steps}.")
        if bank not in config_lib.KNN_BANKS:
            raise ValueError(f"config.knn.bank={bank!r} is unknown; choose one of {', '.join(config_lib.KNN_BANKS)}.")
        self.bank_kind = bank
        self.dataset_config = dataset_config
        self.image_size = int(image_size)
        self.every_steps, self.k, self.temperature = int(every_steps), int(k), float(temperature)
        self.train_fraction, self.train_split, self.eval_split = float(train_fraction), train_split, eval_split
        self.max_eval_examples, self.dip_margin = int(max_eval_examples or 0), float(dip_margin)
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.metrics_writer = metrics_writer
        self.print_fn = print_fn or (lambda line: print(line, flush=True))
        self.bank = self.queries = None
        self.bank_size = 0
        self.best = None            # (accuracy, step)
        self.history = []           # [(step, accuracy)]
        self.grad_norms = collections.deque(maxlen=grad_history)   # (step, first block, last block)
        self._forward = None
        self._forward_of = None
        self._last_eval_step = None

    # --- data ---

    def prepare(self):
        """Chooses and preprocesses the memory bank and the evaluation images (once); errors name config.knn keys."""
        if self.queries is not None:
            return
        test = _labelled_source(self.dataset_config, self.eval_split, "config.knn.dataset / config.knn.eval_split")
        if self.bank_kind == "images":
            train = _labelled_source(self.dataset_config, self.train_split,
                                     "config.knn.dataset / config.knn.train_split")
            self.bank = ImageSet(train, order.subset_indices(train.num_examples, self.train_fraction, self.seed),
                                 image_size=self.image_size, batch_size=self.batch_size)
        self.queries = ImageSet(test, order.subset_indices(test.num_examples, 1.0, self.seed,
                                                           self.max_eval_examples or None),
                                image_size=self.image_size, batch_size=self.batch_size)

    # --- evaluation ---

    def _is_chief(self):
        from tf_mocov3.training import distribute  # pylint: disable=import-outside-toplevel
        strategy = getattr(self.model, "distribute_strategy", None)
        return strategy is None or distribute.is_chief(strategy)

    def bank_features(self):
        """(features [M, D], labels [M]) of the memory bank now: the fixed images embedded with the current
        backbone, or the rows of the model's feature queue written so far."""
        if self.bank_kind == "queue":
            queue = getattr(self.model, "feature_queue", None)
            if queue is None:
                raise ValueError("config.knn.bank='queue' needs the model's feature queue; build the run with "
                                 "training.pretrain (it adds one when config.knn.bank is 'queue').")
            return queue.filled()
        return features_lib.features_of(self._forward, self.bank.batches(), self.bank.size, progress=False)

    def evaluate(self, backbone):
        """kNN top-1 (%) of `backbone` on the bank (`bank_features`) and the fixed evaluation images."""
        self.prepare()
        if self._forward_of is not backbone:
            # Split over the replicas of the run's strategy (one host); on several workers, the chief alone.
            strategy = getattr(self.model, "distribute_strategy", None) if self.model is not None else None
            self._forward = features_lib.make_forward(backbone, self.image_size, strategy=strategy)
            self._forward_of = backbone
        bank_features, bank_labels = self.bank_features()
        self.bank_size = len(bank_labels)
        query_features, query_labels = features_lib.features_of(self._forward, self.queries.batches(),
                                                                self.queries.size, progress=False)
        return knn_top1(bank_features, bank_labels, query_features, query_labels, self.queries.num_classes,
                        k=self.k, temperature=self.temperature)

    def _run(self, step):
        start = time.perf_counter()
        accuracy = self.evaluate(self.model.backbone)
        seconds = time.perf_counter() - start
        self._last_eval_step = step
        if self.metrics_writer is not None:
            self.metrics_writer.write({"step": step, "knn_top1": accuracy, "knn_step": step, "knn_seconds": seconds})
        bank = f"queue {self.bank_size}" if self.bank_kind == "queue" else f"bank {self.bank_size}"
        self.print_fn(f"kNN step {step}: top-1 {accuracy:.2f}% (k={self.k}, T={self.temperature}, {bank}, "
                      f"eval {self.queries.size}, {seconds:.1f}s)")
        self.record_accuracy(step, accuracy)
        return accuracy

    def record_accuracy(self, step, accuracy):
        """Tracks the best accuracy; returns (and prints) the WARNING line when `accuracy` is a dip, else None."""
        self.history.append((step, accuracy))
        warning = None
        if self.best is not None and accuracy < self.best[0] - self.dip_margin:
            norms = ", ".join(f"step {s}: {first:.3g} / {last:.3g}" for s, first, last in self.grad_norms)
            norms = norms or "none logged"
            warning = (f"WARNING: kNN dip at step {step}: top-1 {accuracy:.2f}% is "
                       f"{self.best[0] - accuracy:.2f} points below the best {self.best[0]:.2f}% (step "
                       f"{self.best[1]}); grad norm first / last block: {norms}.")
            self.print_fn(warning)
        if self.best is None or accuracy > self.best[0]:
            self.best = (accuracy, step)
        return warning

    # --- callback hooks ---

    def on_train_begin(self, logs=None):
        if self._is_chief():
            self.prepare()

    def on_train_batch_end(self, batch, logs=None):
        step = _step(self.model)
        logs = logs or {}
        if "grad_norm_first_block" in logs and "grad_norm_last_block" in logs:
            self.grad_norms.append((step, float(np.asarray(logs["grad_norm_first_block"])),
                                    float(np.asarray(logs["grad_norm_last_block"]))))
        if step % self.every_steps == 0 and step != self._last_eval_step and self._is_chief():
            self._run(step)

    def on_train_end(self, logs=None):
        step = _step(self.model)
        if step != self._last_eval_step and self._is_chief():
            self._run(step)


# === From the config ===


def _knn_dataset_config(config):
    """config.knn.dataset merged over config.dataset of a complete config: its empty keys come from the pre-training
    data set (path and data_dir only when it names the same data set)."""
    base = config.dataset.to_dict()
    if config.knn.dataset.name not in ("", base["name"]):
        base.update(path="", data_dir="")
    base.update({key: value for key, value in config.knn.dataset.items() if value not in (None, "")})
    return ml_collections.ConfigDict(base)


def knn_settings(config):
    """config.knn of `config` completed with config_lib's defaults (config_lib.complete), as a plain dict, with
    image_size 0 read as config.dataset.image_size and the run's seed."""
    config = config_lib.complete(config, "pretrain")
    settings = config.knn.to_dict()
    settings["image_size"] = int(settings["image_size"] or config.dataset.image_size)
    settings["seed"] = int(config.seed)
    return settings


def make_monitor(config, metrics_writer, *, chief=True, print_fn=None):
    """KNNMonitor from config.knn (a key it lacks takes config_lib's default, config_lib.complete), or None when
    config.knn.enabled is False or on a non-chief worker. Reads and preprocesses the kNN images now, so a missing or
    unlabelled data set fails before training starts (ValueError naming the config key)."""
    config = config_lib.complete(config, "pretrain")
    settings = knn_settings(config)
    if not settings["enabled"] or not chief:
        return None
    if not 0 < settings["train_fraction"] <= 1:
        raise ValueError(f"config.knn.train_fraction must be in (0, 1], got {settings['train_fraction']}; "
                         f"the paper's monitor uses 0.1.")
    for problem in config_lib.knn_problems(config):
        raise ValueError(problem)
    monitor = KNNMonitor(
        _knn_dataset_config(config), image_size=settings["image_size"], every_steps=settings["every_steps"],
        k=settings["k"], temperature=settings["temperature"], train_fraction=settings["train_fraction"],
        train_split=settings["train_split"], eval_split=settings["eval_split"],
        max_eval_examples=settings["max_eval_examples"], dip_margin=settings["dip_margin"],
        batch_size=settings["batch_size"], seed=settings["seed"], metrics_writer=metrics_writer, print_fn=print_fn,
        bank=settings["bank"])
    monitor.prepare()
    return monitor


def monitor_callbacks(config, trainer):
    """`make_callbacks` for training.pretrain.run_pretraining: [the kNN monitor] when config.knn.enabled and this
    is the chief, else []. The monitor logs through the run's MetricsWriter (`trainer.metrics`)."""
    monitor = make_monitor(config, trainer.metrics, chief=trainer.chief, print_fn=trainer.say)
    return [monitor] if monitor is not None else []


# === Command line ===


def evaluate_pretrained(path, *, dataset=None, data_path=None, data_dir=None, train_split="train",
                        eval_split="test", k=200, temperature=0.07, image_size=None, batch_size=256, stream=None,
                        strategy=None):
    """Weighted kNN top-1 of the backbone at `path` on the FULL splits; returns the knn.json record (a dict).

    The splits are the command's own (--train_split, --eval_split), not the run's config.knn: a run whose monitor
    was off records config_lib's eval_split "validation" whatever its data set, while Fashion-MNIST and CIFAR hold
    out "test" (an ImageNet run takes --eval_split=validation).
    `strategy`: embed each batch split over its replicas (a one-host strategy: GPUs, a TPU, mirrored CPUs).
    """
    from tf_mocov3.weights import pretrained  # pylint: disable=import-outside-toplevel

    resolved = pretrained.resolve(path)
    run = resolved.config
    dataset_config = run.dataset.to_dict()  # resolve() completed the record: a run without one read imagenet2012
    if dataset and dataset != dataset_config["name"]:
        dataset_config = {"name": dataset}
    if data_path:
        dataset_config["path"] = data_path
    if data_dir:
        dataset_config["data_dir"] = data_dir
    dataset_config = config_lib.complete(dataset_config, "pretrain", part="dataset")
    train = _labelled_source(dataset_config, train_split, "--dataset / --train_split")
    test = _labelled_source(dataset_config, eval_split, "--dataset / --eval_split")
    size = int(image_size or run.dataset.image_size)
    with (strategy or tf.distribute.get_strategy()).scope():
        backbone = pretrained.load_backbone(path, image_size=size)
    forward = features_lib.make_forward(backbone, size, strategy=strategy)
    start = time.perf_counter()
    train_x, train_y = features_lib.features_of_source(backbone, train, image_size=size, batch_size=batch_size,
                                                       title=f"features of {train_split}", stream=stream,
                                                       forward=forward)
    test_x, test_y = features_lib.features_of_source(backbone, test, image_size=size, batch_size=batch_size,
                                                     title=f"features of {eval_split}", stream=stream,
                                                     forward=forward)
    accuracy = knn_top1(train_x, train_y, test_x, test_y, train.num_classes, k=k, temperature=temperature)
    return {"knn_top1": accuracy, "k": k, "temperature": temperature, "dataset": dataset_config.name,
            "train_split": train_split, "eval_split": eval_split, "num_train": int(len(train_y)),
            "num_eval": int(len(test_y)), "image_size": size, "checkpoint": resolved.prefix,
            "replicas": int(forward.replicas),
            "seconds": round(time.perf_counter() - start, 1)}


def evaluate_and_report(path, *, print_fn=None, **kwargs):
    """`evaluate_pretrained(path, **kwargs)` printed as a table and, when `path` is a workdir, written to
    PATH/knn.json; returns the record. This is what `python -m tf_mocov3.knn` runs."""
    from tf_mocov3.training import reports  # pylint: disable=import-outside-toplevel

    say = print_fn or (lambda line: print(line, flush=True))
    record = evaluate_pretrained(path, **kwargs)
    row = {"dataset": record["dataset"], "bank": f"{record['train_split']} ({record['num_train']})",
           "eval": f"{record['eval_split']} ({record['num_eval']})", "k": record["k"], "T": record["temperature"],
           "kNN top-1 (%)": record["knn_top1"]}
    say(reports.format_table([row]))
    if tf.io.gfile.isdir(path):
        out = os.path.join(path, KNN_FILE)
        config_lib.write_json(out, record, indent=2)
        say(f"wrote {out}")
    return record
