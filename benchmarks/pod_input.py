r"""Start-up cost and decode-error handling of the pod-ready input path (issue 20).

  python benchmarks/pod_input.py [--shards=1024] [--hosts=32] [--examples=1500] [--dir=/tmp/pod_input]

1. File-system calls at start: writes a prepared TFRecord set of `--shards` shards (one tiny record each), then
   counts the tf.io.gfile calls of opening it once and building the pre-training input of `--hosts` input
   pipelines (training/pretrain.make_dataset, each pipeline's function called as distribute_datasets_from_function
   calls it once per host), with the time that takes. Beside it, the count of the code before issue 20, which
   reopened the set in every pipeline and once more for the step count, each time reading metadata.json after an
   existence call and making one existence call per shard: (hosts + 1) * (shards + 2).
2. Decode errors skipped per example (pipelines.map_examples) against a plain parallel map + Dataset.ignore_errors:
   two-view examples/s of one 500x375 JPEG at 224 px, `--examples` per run, three alternating runs each.
"""

import argparse
import collections
import json
import os
import time


class Hosts:
    """A strategy of `n` input pipelines of one replica each, as pretrain.make_dataset uses it."""

    def __init__(self, n):
        self.num_replicas_in_sync = n

    def distribute_datasets_from_function(self, fn):
        import tensorflow as tf  # pylint: disable=import-outside-toplevel

        n = self.num_replicas_in_sync
        return [fn(tf.distribute.InputContext(n, p, n)) for p in range(n)]


def write_set(path, shards):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from tf_mocov3.data import prepare  # pylint: disable=import-outside-toplevel
    from tf_mocov3.data import sources  # pylint: disable=import-outside-toplevel

    if tf.io.gfile.exists(os.path.join(path, sources.PREPARED_METADATA)):
        return
    os.makedirs(path, exist_ok=True)
    jpeg = tf.io.encode_jpeg(tf.fill([8, 8, 3], tf.constant(128, tf.uint8))).numpy()
    files = []
    for k in range(shards):
        name = prepare.shard_name("train", k, shards, "tfrecord")
        prepare.write_shard(os.path.join(path, name), [sources.encode_prepared_record(jpeg, k % 2)])
        files.append({"file": name, "num_examples": 1})
    meta = {"format": sources.PREPARED_FORMAT, "file_format": "tfrecord", "classes": ["a", "b"],
            "splits": {"train": {"num_examples": shards, "shards": files}}}
    with open(os.path.join(path, sources.PREPARED_METADATA), "w") as f:
        json.dump(meta, f)


def count_calls(path, hosts):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from tf_mocov3 import config_lib  # pylint: disable=import-outside-toplevel
    from tf_mocov3.training import pretrain  # pylint: disable=import-outside-toplevel

    calls = collections.Counter()
    real = {name: getattr(tf.io.gfile, name) for name in ("exists", "listdir", "GFile", "stat", "glob", "isdir")}

    def counted(name):
        return lambda *args, **kwargs: (calls.update([name]), real[name](*args, **kwargs))[1]

    config = config_lib.base_config()
    config.dataset.name, config.dataset.path, config.dataset.image_size = "prepared", path, 16
    config.batch_size = hosts
    for name in real:
        setattr(tf.io.gfile, name, counted(name))
    try:
        start = time.time()
        pretrain.make_dataset(config, Hosts(hosts), 0, 1)
        seconds = time.time() - start
    finally:
        for name, fn in real.items():
            setattr(tf.io.gfile, name, fn)
    return dict(calls), seconds


def skip_scope(examples):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from tf_mocov3.data import augment  # pylint: disable=import-outside-toplevel
    from tf_mocov3.data import pipelines  # pylint: disable=import-outside-toplevel

    image = tf.io.encode_jpeg(tf.cast(tf.random.stateless_uniform([375, 500, 3], [1, 2], 0, 255), tf.uint8),
                              quality=90)

    def two_views(x, position):
        return augment.two_view_inputs(x, tf.stack([tf.constant(0, tf.int64), position]), image_size=224,
                                       crop_min=0.08, is_encoded=True)

    base = tf.data.Dataset.zip(tf.data.Dataset.from_tensors(image).repeat(examples), tf.data.Dataset.range(examples))
    modes = {"map + ignore_errors": lambda: base.map(two_views, num_parallel_calls=tf.data.AUTOTUNE,
                                                     deterministic=True).ignore_errors(),
             "map_examples": lambda: pipelines.map_examples(base, two_views, True)}
    rates = {name: [] for name in modes}
    for _ in range(3):
        for name, make in modes.items():
            start = time.time()
            n = sum(1 for _ in make().prefetch(8))
            rates[name].append(n / (time.time() - start))
    return rates


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=1024)
    parser.add_argument("--hosts", type=int, default=32)
    parser.add_argument("--examples", type=int, default=1500)
    parser.add_argument("--dir", default="/tmp/pod_input")
    args = parser.parse_args()
    path = os.path.join(args.dir, f"set_{args.shards}")
    write_set(path, args.shards)
    calls, seconds = count_calls(path, args.hosts)
    print(f"{args.shards} shards, {args.hosts} hosts: {sum(calls.values())} file-system calls at start {calls} "
          f"({seconds:.1f} s to build the {args.hosts} pipelines); before issue 20: "
          f"{(args.hosts + 1) * (args.shards + 2)}")
    for name, rates in skip_scope(args.examples).items():
        print(f"{name}: {' '.join(f'{r:.0f}' for r in rates)} two-view examples/s")


if __name__ == "__main__":
    main()
