"""FeatureQueue: the memory bank of the paper's kNN monitor, filled from the training batches themselves.

The paper's monitor (appendix; details as in NPID) keeps a queue holding about 10% of ImageNet, filled with the
[CLS] features of the training samples, so that watching kNN accuracy costs no extra forward pass over a bank. Here
a training step pushes the backbone features it has already computed (those of the momentum encoder for the first
view, by default) with the images' labels; the monitor (evaluation/knn.py, `config.knn.bank="queue"`) reads the
queue as its bank and only embeds its fixed query images.

The queue is a ring: a global batch of B rows overwrites rows [p, p + B) mod size and moves the pointer p by B.
Under tf.distribute every replica gathers all replicas' rows (replica order, i.e. the rows of the global batch),
so each replica writes the same values; the variables aggregate ONLY_FIRST_REPLICA. Rows never written hold the
label -1 and are left out of the bank (`filled`).
"""

import keras
import tensorflow as tf


class FeatureQueue(keras.layers.Layer):
    """A ring of `size` float32 feature rows of width `dim` and their int64 labels.

    Args:
      size: rows kept (the paper: 10% of the training set).
      dim: the feature width (the backbone's output width).
    """

    def __init__(self, size, dim, **kwargs):
        super().__init__(**kwargs)
        if int(size) <= 0 or int(dim) <= 0:
            raise ValueError(f"A feature queue needs a positive size and width, got size {size}, dim {dim}; set "
                             f"config.knn.queue_size to a positive number of rows (0 = 10% of the split).")
        self.size, self.dim = int(size), int(dim)
        self.features = self.add_weight(shape=(self.size, self.dim), initializer="zeros", dtype="float32",
                                        trainable=False, aggregation="only_first_replica", name="features")
        self.labels = self.add_weight(shape=(self.size,), initializer=keras.initializers.Constant(-1),
                                      dtype="int64", trainable=False, aggregation="only_first_replica",
                                      name="labels")
        self.pointer = self.add_weight(shape=(), initializer="zeros", dtype="int64", trainable=False,
                                       aggregation="only_first_replica", name="pointer")
        self.built = True

    def push(self, features, labels):
        """Writes this replica's rows and every other replica's (gathered, in replica order) at the pointer.

        Call it inside a train step (replica context). features [n, dim], labels [n] for this replica's rows.
        """
        features = tf.cast(tf.stop_gradient(features), tf.float32)
        labels = tf.cast(labels, tf.int64)
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            features = ctx.all_gather(features, axis=0)
            labels = ctx.all_gather(labels, axis=0)
        rows = tf.shape(labels, out_type=tf.int64)[0]
        at = (tf.convert_to_tensor(self.pointer) + tf.range(rows, dtype=tf.int64)) % self.size
        self.features.assign(tf.tensor_scatter_nd_update(tf.convert_to_tensor(self.features), at[:, None],
                                                         features))
        self.labels.assign(tf.tensor_scatter_nd_update(tf.convert_to_tensor(self.labels), at[:, None], labels))
        self.pointer.assign((tf.convert_to_tensor(self.pointer) + rows) % self.size)

    def filled(self):
        """-> (features float32 np [M, dim], labels int64 np [M]): the rows written so far (M <= size)."""
        labels = tf.convert_to_tensor(self.labels).numpy()
        keep = labels >= 0
        return tf.convert_to_tensor(self.features).numpy()[keep], labels[keep]

    def get_config(self):
        config = super().get_config()
        config.update(size=self.size, dim=self.dim)
        return config
