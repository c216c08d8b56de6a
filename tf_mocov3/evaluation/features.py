"""Frozen-backbone features of a labelled split: the input of kNN (monitor and evaluation), the probe and the demo.

Images go through `augment.eval_preprocess` (resize the shorter side to image_size * 256 / 224, centre crop, ImageNet
normalisation; grayscale becomes RGB there) and the backbone runs in inference mode. The features are the raw [CLS]
vectors (not L2-normalised; `knn.py` normalises).

A subset (`fraction` < 1 or `max_examples`) is `order.subset_indices`: a seeded permutation prefix of the whole split,
kept in the split's order. The same arguments always give the same examples.

`features_of` is the one embedding loop (kNN, the linear probe, the demo): it pads the last batch to one shape (one
XLA compilation) and shows its progress (`Progress`) on a terminal line or as printed lines.

Example:

    features, labels = extract_features(backbone, config.dataset, "train", image_size=32, fraction=0.1)
"""

import contextlib
import sys
import time

import numpy as np
import tensorflow as tf

from tf_mocov3.data import order
from tf_mocov3.data import pipelines
from tf_mocov3.data import sources

# Show a progress line only for extractions that have already taken this long.
PROGRESS_AFTER_SECONDS = 3.0
# How often a progress line is printed where "\r" cannot rewrite it (log files, print_fn).
PRINT_INTERVAL_SECONDS = 30.0


# === Progress display ===


class Progress:
    """One line, rewritten in place ("\\r"), once the work has taken more than PROGRESS_AFTER_SECONDS.

    With `print_fn`, one printed line every PRINT_INTERVAL_SECONDS instead (a command's log).
    """

    def __init__(self, title, total, stream=None, after_seconds=PROGRESS_AFTER_SECONDS, print_fn=None):
        self.title, self.total = title, total
        self.stream = stream or sys.stderr
        self.after_seconds = after_seconds
        self.print_fn = print_fn
        # In a log file (no terminal) "\r" does not rewrite the line: update rarely there.
        terminal = print_fn is None and getattr(self.stream, "isatty", lambda: False)()
        self.interval = 1.0 if terminal else PRINT_INTERVAL_SECONDS
        self.start = self._last = time.perf_counter()
        self.shown = False

    def update(self, done):
        now = time.perf_counter()
        if now - self.start < self.after_seconds or (now - self._last < self.interval and done < self.total):
            return
        self._last = now
        rate = done / max(now - self.start, 1e-9)
        left = (self.total - done) / max(rate, 1e-9)
        line = f"{self.title}: {done}/{self.total} images, {rate:.0f} img/s, {left:.0f}s left"
        if self.print_fn is not None:
            self.print_fn(f"  {line}")
            return
        self.stream.write(f"\r{line}   ")
        self.stream.flush()
        self.shown = True

    def close(self):
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()


# === Features ===


def _local_device():
    gpus = tf.config.list_logical_devices("GPU")
    return gpus[0].name if gpus else "/cpu:0"


def replicas_of(strategy):
    """The number of replicas a feature extraction can split a batch over: all replicas of a one-host strategy
    (mirrored GPUs / CPUs, a TPU), 1 otherwise. MultiWorkerMirroredStrategy gives 1: the kNN monitor runs on the
    chief alone, and a collective there would wait for the other workers."""
    if strategy is None or isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 1
    return int(strategy.num_replicas_in_sync)


def make_forward(backbone, image_size, jit_compile=True, strategy=None, postprocess=None):
    """A tf.function: normalised images [B, S, S, 3] -> float32 features [B, D], inference mode.

    With a `strategy` of several replicas (`replicas_of`), B must be a multiple of the replicas: replica r computes
    rows [r * B/R, (r+1) * B/R) and the rows come back in order, so the features equal those of one device. The
    backbone's variables must then belong to that strategy (built under its scope; a trained model's are).
    Otherwise it is a plain call outside any replica context, which also runs a backbone whose variables were made
    under a strategy (MirroredVariables are read through their local copy). XLA compiles it once (`features_of`
    pads the last batch). `forward.feature_dim` is the backbone's width, `forward.replicas` its replica count.
    `postprocess` maps the model's float32 output [B, D] to what is returned [B, D'] (e.g. a classifier's logits to
    its predictions), on the device.
    """
    replicas = replicas_of(strategy)

    @tf.autograph.experimental.do_not_convert  # plain TensorFlow calls: nothing for AutoGraph to rewrite
    def embed(images):
        out = tf.cast(backbone(images, training=False), tf.float32)
        return postprocess(out) if postprocess is not None else out

    spec = [tf.TensorSpec([None, image_size, image_size, 3], tf.float32)]
    if replicas == 1:
        forward = tf.function(embed, input_signature=spec, jit_compile=jit_compile)
    else:
        @tf.autograph.experimental.do_not_convert
        def shard(images):  # in replica r: its rows of the global batch
            ctx = tf.distribute.get_replica_context()
            rows = tf.shape(images)[0] // replicas
            return embed(images[ctx.replica_id_in_sync_group * rows:(ctx.replica_id_in_sync_group + 1) * rows])

        @tf.function(input_signature=spec)
        @tf.autograph.experimental.do_not_convert
        def forward(images):
            # No XLA here: TensorFlow cannot place an XLA cluster per replica of a one-host multi-device strategy
            # (keras-team/keras#19005); a TPU compiles every replica's work anyway.
            out = strategy.run(shard, args=(images,))
            return strategy.gather(out, axis=0)

    forward.feature_dim = int(backbone.output.shape[-1])
    forward.replicas = replicas
    return forward


def features_of(forward, batches, total, *, title="features", stream=None, progress=True, print_fn=None):
    """Runs `forward` over an iterable of (images, labels) batches -> (features float32 np [N, D], labels int64 np).

    Progress goes to `stream` (default stderr), or to `print_fn` as lines; `progress=False` shows none.
    """
    progress = Progress(title, total, stream, after_seconds=PROGRESS_AFTER_SECONDS if progress else float("inf"),
                        print_fn=print_fn)
    features, labels, done, width = [], [], 0, None
    replicas = getattr(forward, "replicas", 1)
    with tf.device(_local_device()) if replicas == 1 else contextlib.nullcontext():
        for images, batch_labels in batches:
            rows = int(images.shape[0])
            width = width or -(-rows // replicas) * replicas  # a multiple of the replicas
            if rows < width:  # pad the last batch: one batch shape, one XLA compilation
                images = tf.concat([images, tf.zeros([width - rows, *images.shape[1:]], images.dtype)], 0)
            features.append(forward(images).numpy()[:rows])
            labels.append(np.asarray(batch_labels, np.int64))
            done += len(labels[-1])
            progress.update(done)
    progress.close()
    if not features:
        return np.zeros([0, getattr(forward, "feature_dim", 0)], np.float32), np.zeros([0], np.int64)
    return np.concatenate(features).astype(np.float32), np.concatenate(labels)


def features_of_source(backbone, source, *, image_size, batch_size=256, indices=None, title="features",
                       stream=None, print_fn=None, forward=None, strategy=None):
    """[CLS] features of `indices` (sorted; None = all) of an opened labelled source -> (features [N, D], labels [N]).

    `forward`: a `make_forward(backbone, image_size)` to reuse (one compilation for several calls); `strategy`:
    split each batch over its replicas (make_forward).
    """
    total = source.num_examples if indices is None else len(indices)
    batches = pipelines.eval_dataset(source, image_size, batch_size, indices)
    forward = forward or make_forward(backbone, image_size, strategy=strategy)
    return features_of(forward, batches, total, title=title, stream=stream, print_fn=print_fn)


def extract_features(backbone, dataset_config, split, *, image_size, batch_size=256, fraction=1.0, seed=0,
                     max_examples=None, stream=None):
    """[CLS] features of (a deterministic subset of) a labelled split.

    Args:
      backbone: keras.Model, normalised images [B, S, S, 3] -> [B, D] (e.g. pretrained.load_backbone(path)).
      dataset_config: a ConfigDict / dict with the data set's name, path, data_dir (see sources.open_labelled).
      split: 'train', 'test', ...
      image_size: S, the eval_preprocess crop size (the size the backbone was built for).
      batch_size: images per backbone call.
      fraction: the share of the split to use (module docstring); max_examples: then at most this many
        (None or 0 = no limit).
      seed: the subset's permutation seed.
      stream: where the progress line goes (default stderr).
    Returns:
      (features float32 np [N, D], labels int64 np [N]).
    """
    source = sources.open_labelled(dataset_config, split)
    indices = order.subset_indices(source.num_examples, fraction, seed, max_examples)
    return features_of_source(backbone, source, image_size=image_size, batch_size=batch_size, indices=indices,
                              title=f"features of {split}", stream=stream)
