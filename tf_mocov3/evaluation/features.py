"""Frozen-backbone features of a labelled split: the input of the kNN monitor and of the kNN evaluation.

Images go through `augment.eval_preprocess` (resize the shorter side to image_size * 256 / 224, centre crop, ImageNet
normalisation; grayscale becomes RGB there) and the backbone runs in inference mode. The features are the raw [CLS]
vectors (not L2-normalised; `knn.py` normalises).

A subset (`fraction` < 1 or `max_examples`) is a seeded permutation of the whole split, the same for every class:
the first round(fraction * N) (then at most max_examples) indices of `np.random.default_rng(seed).permutation(N)`,
kept in the split's order. The same arguments always give the same examples.

Example:

    features, labels = extract_features(backbone, config.dataset, "train", image_size=32, fraction=0.1)
"""

import sys
import time

import numpy as np
import tensorflow as tf

from tf_mocov3.data import augment
from tf_mocov3.data import sources as data

# Show a progress line only for extractions that have already taken this long.
PROGRESS_AFTER_SECONDS = 3.0


# === Subset selection ===


def subset_indices(num_examples, fraction=1.0, seed=0, max_examples=None):
    """Sorted int64 indices of the deterministic subset of a split of `num_examples` examples (module docstring)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}.")
    count = num_examples if fraction >= 1 else max(1, int(round(fraction * num_examples)))
    if max_examples:
        count = min(count, int(max_examples))
    if count >= num_examples:
        return np.arange(num_examples, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(num_examples)
    return np.sort(order[:count]).astype(np.int64)


def labeled_subset(dataset_config, split, *, image_size, fraction=1.0, seed=0, max_examples=None):
    """(tf.data.Dataset of (preprocessed float32 [S, S, 3] image, int64 label), num_classes, num_selected)."""
    ds, num_classes, num_examples = data.load_labeled(dataset_config, split)
    indices = subset_indices(num_examples, fraction, seed, max_examples)
    if len(indices) < num_examples:
        keep = np.zeros([num_examples], bool)
        keep[indices] = True
        keep = tf.constant(keep)

        def selected(index, example):
            del example
            return tf.gather(keep, index)

        def drop_index(index, example):
            del index
            return example

        ds = ds.enumerate().filter(selected).map(drop_index)

    def preprocess(image, label):
        return augment.eval_preprocess(image, image_size), tf.cast(label, tf.int64)

    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds, num_classes, len(indices)


# === Progress display ===


class Progress:
    """One line, rewritten in place ("\\r"), once the work has taken more than PROGRESS_AFTER_SECONDS."""

    def __init__(self, title, total, stream=None, after_seconds=PROGRESS_AFTER_SECONDS):
        self.title, self.total = title, total
        self.stream = stream or sys.stderr
        self.after_seconds = after_seconds
        # In a log file (no terminal) "\r" does not rewrite the line: update rarely there.
        self.interval = 1.0 if getattr(self.stream, "isatty", lambda: False)() else 30.0
        self.start = self._last = time.perf_counter()
        self.shown = False

    def update(self, done):
        now = time.perf_counter()
        if now - self.start < self.after_seconds or (now - self._last < self.interval and done < self.total):
            return
        self._last = now
        rate = done / max(now - self.start, 1e-9)
        left = (self.total - done) / max(rate, 1e-9)
        self.stream.write(f"\r{self.title}: {done}/{self.total} images, {rate:.0f} img/s, {left:.0f}s left   ")
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


def make_forward(backbone, image_size, jit_compile=True):
    """A plain tf.function: normalised images [B, S, S, 3] -> float32 features [B, D], inference mode.

    Called outside any replica context, so it also runs a backbone whose variables were created under a
    tf.distribute strategy (MirroredVariables are read through their local copy). XLA compiles it once per batch
    shape (the full batches and the last one).
    """

    @tf.function(input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32)],
                 jit_compile=jit_compile)
    def forward(images):
        return tf.cast(backbone(images, training=False), tf.float32)

    return forward


def features_of(forward, batches, total, *, title="features", stream=None, progress=True):
    """Runs `forward` over an iterable of (images, labels) batches -> (features float32 np, labels int64 np)."""
    progress = Progress(title, total, stream, after_seconds=PROGRESS_AFTER_SECONDS if progress else float("inf"))
    features, labels, done, width = [], [], 0, None
    with tf.device(_local_device()):
        for images, batch_labels in batches:
            rows = int(images.shape[0])
            width = width or rows
            if rows < width:  # pad the last batch: one batch shape, one XLA compilation
                images = tf.concat([images, tf.zeros([width - rows, *images.shape[1:]], images.dtype)], 0)
            features.append(forward(images).numpy()[:rows])
            labels.append(np.asarray(batch_labels, np.int64))
            done += len(labels[-1])
            progress.update(done)
    progress.close()
    if not features:
        return np.zeros([0, 0], np.float32), np.zeros([0], np.int64)
    return np.concatenate(features).astype(np.float32), np.concatenate(labels)


def extract_features(backbone, dataset_config, split, *, image_size, batch_size=256, fraction=1.0, seed=0,
                     max_examples=None, stream=None):
    """[CLS] features of (a deterministic subset of) a labelled split.

    Args:
      backbone: keras.Model, normalised images [B, S, S, 3] -> [B, D] (e.g. pretrained.load_backbone(path)).
      dataset_config: a ConfigDict / dict with the data set's name, path, data_dir (see data.load_source).
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
    ds, _, total = labeled_subset(dataset_config, split, image_size=image_size, fraction=fraction, seed=seed,
                                  max_examples=max_examples)
    ds = ds.batch(batch_size).prefetch(2)
    forward = make_forward(backbone, image_size)
    return features_of(forward, ds.as_numpy_iterator(), total, title=f"features of {split}", stream=stream)
