"""The example order of every training input, the per-example seeds, and the seeded subsets of a split.

One rule serves pre-training, fine-tuning and the linear probe, so that 1 replica, N replicas, N workers and a
resumed run see the same examples with the same randomness:

- epoch e visits the N examples in the permutation `stateless_shuffle(range(N), seed=[seed, e])`;
- global step b of an epoch takes positions [b*B, (b+1)*B) of that order (B = global batch); the remainder of an
  epoch is dropped (`steps_per_epoch = N // B`), unless the caller keeps a last partial batch
  (`keep_partial_batch=True`: ceil(N / B) steps, the last one shorter; the linear probe does so);
- an input pipeline serving `rows` rows of each global batch from row `row_offset` on (its replicas' rows, see
  pipelines.py) gets exactly those positions;
- the example at position p of epoch e is augmented with the seed `example_seed(seed, e, p)` =
  [seed, e * 2**32 + p] and nothing else;
- `start_step=k` starts at global step k (epoch k // steps_per_epoch) without reading the skipped examples.

Repeated augmentation (`repeats=k`, DeiT's RASampler, k = 3 in its ImageNet recipe): the epoch's permutation is
repeated element-wise (each index k times in a row), dealt round-robin to the `num_replicas` replicas (replica r
takes items r, r + R, r + 2R, ... of the repeated list), and each replica's share is cut to N // R items, so an
epoch still has about N images, about N / k of them distinct, their copies on different replicas with different
augmentation seeds. Global step b of an epoch takes items [b*B, (b+1)*B) of the repeated list; `batch_rows()` puts
them in the rows of the global batch (replica r's n = B / R rows hold items r, r + R, ...). Positions then count
items of the repeated list (the augmentation seed of an item is that of its position). RASampler also rounds the
epoch down to a multiple of 256 images (`len // 256 * 256 / R` per replica); here the cut is N // R per replica.
The default (`repeats=1`) is the plain order above, unchanged.

Streamed sources (TFRecord files, no random access) follow the same positions and seeds, but an epoch's order is
a file-level shuffle: input pipeline p of P reads only its own files (every P-th, sources.StreamReader.share), in
an order seeded by (seed, e) (`ExampleOrder.file_order`), several files interleaved, through a shuffle buffer seeded
by (seed, e) (`ExampleOrder.streamed_epoch`). Its k-th example of an epoch fills row offset + k % rows of global
step k // rows. The epoch is N' = P * (the smallest share) examples (= N for one pipeline), so that every pipeline
fills every step. Resuming reads, but does not decode, the records of the pipeline's share before the restart step
of the current epoch (never those of earlier epochs). How much this mixes the data, against a global permutation:
benchmarks/stream_shuffle.py and BUILD_NOTES.md.

Seeded subsets (numpy, decided once before any tf.data work): `subset_indices` (a fraction and/or a count of a
split, kept in split order) and `holdout_split` (train / holdout indices of a training split).
"""

import numpy as np
import tensorflow as tf

# Mixes the streamed shuffle buffer's seed from (seed, epoch); any fixed odd constant would do.
_STREAM_SEED_STRIDE = 1_000_003


def example_seed(seed, epoch, position):
    """The augmentation seed of the example at `position` of `epoch`: int64 [seed, epoch * 2**32 + position]."""
    return tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64) * (1 << 32) + tf.cast(position, tf.int64)])


class ExampleOrder:
    """The (index, position, epoch) stream of one input pipeline (module docstring).

    Args:
      num_examples: N, the examples to order (indices 0..N-1; a caller with a subset maps them through it).
      global_batch: B, the examples of one global step.
      seed: the run's seed.
      start_step: the first global step to produce.
      rows: how many rows of each global batch this pipeline serves (default: all B).
      row_offset: the first of those rows.
      keep_partial_batch: keep the last, shorter batch of an epoch (ceil(N / B) steps per epoch).
      repeats: repeated augmentation (module docstring); 1 = none.
      num_replicas: R, the replicas the global batch is split over (used only with repeats > 1).
    """

    def __init__(self, num_examples, global_batch, seed, *, start_step=0, rows=None, row_offset=0,
                 keep_partial_batch=False, repeats=1, num_replicas=1):
        self.num_examples = int(num_examples)
        self.global_batch = int(global_batch)
        self.seed = int(seed)
        self.rows = self.global_batch if rows is None else int(rows)
        self.row_offset = int(row_offset)
        self.keep_partial_batch = bool(keep_partial_batch)
        if self.global_batch <= 0:
            raise ValueError(f"The global batch must be positive, got {self.global_batch}; set config.batch_size.")
        self.repeats, self.num_replicas = int(repeats), int(num_replicas)
        if self.repeats < 1 or self.num_replicas < 1:
            raise ValueError(f"repeats ({self.repeats}) and num_replicas ({self.num_replicas}) must be >= 1; set "
                             f"config.aug.repeated_aug to 1 (off) or e.g. 3 (DeiT).")
        if self.repeats > 1 and (self.keep_partial_batch or self.global_batch % self.num_replicas):
            raise ValueError("Repeated augmentation needs whole global batches split evenly over the replicas; set "
                             "config.aug.repeated_aug=1 for this input.")
        if self.keep_partial_batch:
            self.steps_per_epoch = -(-self.num_examples // self.global_batch)
        elif self.repeats > 1:  # RASampler: N // R items per replica
            self.steps_per_epoch = (self.num_examples // self.num_replicas) * self.num_replicas // self.global_batch
        else:
            self.steps_per_epoch = self.num_examples // self.global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"The split has {self.num_examples} examples, fewer than one global batch of "
                             f"{self.global_batch}: lower config.batch_size.")
        self.start_step = int(start_step)
        self.start_epoch, self.first_step = divmod(self.start_step, self.steps_per_epoch)

    def permutation(self, epoch):
        """int64 [N]: the example index at each position of `epoch`."""
        return tf.random.experimental.stateless_shuffle(
            tf.range(self.num_examples, dtype=tf.int64), seed=tf.stack([tf.constant(self.seed, tf.int64),
                                                                         tf.cast(epoch, tf.int64)]))

    def _first_step(self, epoch):
        return tf.where(epoch == self.start_epoch, tf.constant(self.first_step, tf.int64), 0)

    def _row_items(self):
        """int64 [rows]: which of a step's items this pipeline's rows take. All rows: items 0..B-1 in item order
        (with repeated augmentation the caller puts them in rows with batch_rows()); part of the rows (one of
        several input pipelines): the items of rows row_offset.. in row order, batch_rows() already applied."""
        if self.repeats > 1 and self.rows != self.global_batch:
            return tf.constant(self.batch_rows()[self.row_offset:self.row_offset + self.rows])
        return tf.range(self.row_offset, self.row_offset + self.rows, dtype=tf.int64)

    def positions(self, epoch):
        """int64 positions of `epoch` this pipeline serves, in order (from start_step in the first epoch)."""
        step = tf.range(self._first_step(epoch), self.steps_per_epoch, dtype=tf.int64)
        rows = self._row_items()
        position = tf.reshape(step[:, None] * self.global_batch + rows[None], [-1])
        if self.keep_partial_batch:
            position = tf.boolean_mask(position, position < self.num_examples)
        return position

    def batch_rows(self):
        """int64 [B]: row j of a global batch takes item batch_rows()[j] of the step's B items of the repeated list
        (identity when repeats == 1 or one replica): replica r's rows hold items r, r + R, r + 2R, ..."""
        n = self.global_batch // self.num_replicas
        if self.repeats == 1:
            return np.arange(self.global_batch, dtype=np.int64)
        rows = np.arange(self.global_batch, dtype=np.int64)
        return (rows // n) + self.num_replicas * (rows % n)

    def epoch(self, epoch):
        """Dataset of (index, position, epoch) of one epoch (random-access sources)."""
        epoch = tf.cast(epoch, tf.int64)
        position = self.positions(epoch)
        if self.repeats > 1:  # the repeated list: item q holds permutation[q // repeats]
            index = tf.gather(self.permutation(epoch), position // self.repeats)
        else:
            index = tf.gather(self.permutation(epoch), position)
        return tf.data.Dataset.from_tensor_slices((index, position, tf.fill(tf.shape(position), epoch)))

    def file_order(self, file_ids, epoch):
        """int64: the files `file_ids` of a streamed source in the order `epoch` reads them (seeded by seed, epoch)."""
        file_ids = tf.constant(np.asarray(file_ids, np.int64))
        return tf.gather(file_ids, tf.random.experimental.stateless_shuffle(
            tf.range(tf.size(file_ids, out_type=tf.int64)), seed=tf.stack([
                tf.constant(self.seed, tf.int64), tf.cast(epoch, tf.int64)])))

    def streamed_epoch(self, stream, epoch, shuffle_buffer):
        """Dataset of (example, position, epoch) of one epoch of a streamed source, for this pipeline's rows.

        `stream` is a Dataset of this pipeline's share of the epoch's examples (at least steps_per_epoch * rows
        of them), in the epoch's file order; it passes a shuffle buffer of `shuffle_buffer` examples seeded by
        (seed, epoch), and its k-th example fills row row_offset + k % rows of step k // rows. The skipped steps
        are read, not decoded.
        """
        epoch = tf.cast(epoch, tf.int64)
        graph = tf.compat.v1.get_default_graph()
        if not tf.executing_eagerly() and graph.seed == 0:
            # TF's get_seed compares (graph seed, op seed) with (0, 0) in Python: with a graph seed of 0
            # (keras.utils.set_random_seed(0), i.e. config.seed = 0) and this tensor op seed it raises
            # OperatorNotAllowedInGraphError. The op seed alone decides the shuffle, so the graph seed is dropped.
            graph.seed = None
        ds = stream.shuffle(shuffle_buffer, seed=self.seed * _STREAM_SEED_STRIDE + epoch,
                            reshuffle_each_iteration=False)
        if self.repeats > 1:  # each record `repeats` times in a row (read once)
            if self.rows != self.global_batch:
                raise ValueError("Repeated augmentation of a streamed (TFRecord) set read by several hosts is not "
                                 "supported; set config.aug.repeated_aug=1 or read an array_record set (a TFDS "
                                 "array_record build, or a set prepared with --format=array_record).")
            repeats = self.repeats
            ds = ds.flat_map(lambda *ex: tf.data.Dataset.from_tensors(ex if len(ex) > 1 else ex[0]).repeat(repeats))
        batch, rows, offset = self.global_batch, self.rows, self.row_offset
        ds = ds.take(min(self.steps_per_epoch * rows, self.num_examples)).enumerate()
        ds = ds.skip(self._first_step(epoch) * rows)
        return ds.map(lambda k, ex: (ex, (k // rows) * batch + offset + k % rows, epoch))

    def epochs(self, one_epoch, end_epoch=None):
        """`one_epoch(epoch)` (a Dataset) for epochs start_epoch .. end_epoch - 1 (None: forever), concatenated."""
        end = np.iinfo(np.int64).max if end_epoch is None else int(end_epoch)
        return tf.data.Dataset.range(self.start_epoch, end).flat_map(one_epoch)


# === Seeded subsets ===


def subset_indices(num_examples, fraction=1.0, seed=0, max_examples=None):
    """Sorted int64 indices of a deterministic subset of a split of `num_examples` examples.

    The first round(fraction * N) (then at most `max_examples`; None or 0 = no limit) entries of
    `np.random.default_rng(seed).permutation(N)`, kept in the split's order: the same arguments always give the same
    examples, and every class is sampled alike.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"The subset fraction must be in (0, 1], got {fraction}; pass a share of the split.")
    count = num_examples if fraction >= 1 else max(1, int(round(fraction * num_examples)))
    if max_examples:
        count = min(count, int(max_examples))
    if count >= num_examples:
        return np.arange(num_examples, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(num_examples)
    return np.sort(order[:count]).astype(np.int64)


def holdout_split(num_examples, *, holdout_examples=0, holdout_fraction=0.0, seed=0):
    """(train indices, holdout indices), both sorted int64, of a training split: a seeded random holdout.

    The holdout is `holdout_examples` examples, or else round(holdout_fraction * N): the first entries of
    `np.random.default_rng(seed).permutation(N)`.
    """
    count = int(holdout_examples) if holdout_examples else int(round(num_examples * float(holdout_fraction)))
    if count < 0 or count >= num_examples:
        raise ValueError(f"The holdout of {count} examples does not fit the {num_examples} training examples; "
                         f"lower config.holdout_examples / config.holdout_fraction.")
    order = np.random.default_rng(seed).permutation(num_examples)
    return np.sort(order[count:]).astype(np.int64), np.sort(order[:count]).astype(np.int64)
