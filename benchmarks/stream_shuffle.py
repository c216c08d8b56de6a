r"""How well the epoch order of a streamed TFRecord source mixes the data, against a global permutation.

  python benchmarks/stream_shuffle.py [--num_examples=1281167] [--files=1024] [--batch=4096] [--hosts=1,32]
      [--shuffle_buffer=10000] [--cycle_length=16] [--dir=/tmp/stream_shuffle]

Writes, once, `--files` TFRecord files whose records are their own index in the split (8 bytes each, the ImageNet
train split's size and TFDS's 1024 shards by default), and reads two epochs through the library's streamed order
(`pipelines.streamed_epochs`: each host's own files in a seeded order, `--cycle_length` of them interleaved, a
`--shuffle_buffer` shuffle), for each host count in `--hosts` (every host serving its rows of each global batch).
Beside it: the rule before it (the whole split in file order through the same buffer, one host), and the global
permutation that array_record / prepared sets get (order.py). Per mode it prints:

- spread: the mean distance, in the file order, between two examples of one global batch, as a share of the split
  (a uniform random batch: 1/3);
- repeat: of the pairs of examples that share a batch in epoch 0, the share that share one again in epoch 1
  (a fresh random permutation: (B - 1) / (N - 1));
- corr: the correlation between an example's position in epoch 0 and in epoch 1 (fresh permutation: 0).

TFDS shuffles the examples once when it builds a set, so the file order itself is random; what a local shuffle loses
is the change from one epoch to the next: the same examples meet in the same batches (their negatives, for the
contrastive loss) every epoch, which `repeat` and `corr` measure.
"""

import argparse
import os
import time

import numpy as np


def write_files(folder, num_examples, files):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    counts = np.full(files, num_examples // files)
    counts[:num_examples % files] += 1
    starts = np.concatenate([[0], np.cumsum(counts)])
    paths = [os.path.join(folder, f"split.tfrecord-{k:05d}-of-{files:05d}") for k in range(files)]
    done = os.path.join(folder, f"done-{num_examples}-{files}")
    if not os.path.exists(done):
        os.makedirs(folder, exist_ok=True)
        for k, path in enumerate(paths):
            with tf.io.TFRecordWriter(path) as writer:
                for i in range(starts[k], starts[k + 1]):
                    writer.write(int(i).to_bytes(8, "little"))
        open(done, "w").close()
    return paths, counts.tolist()


def source_of(paths, counts):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from tf_mocov3.data import sources  # pylint: disable=import-outside-toplevel

    def parse(record):  # the record's own index stands in for its image
        return tf.reshape(tf.io.decode_raw(record, tf.int64), []), tf.constant(0, tf.int64)

    reader = sources.StreamReader(paths, counts, parse, name="synthetic")
    return sources.Source("synthetic", "stream", reader.num_records, 2, stream=reader.stream, reader=reader)


def streamed_order(source, batch, hosts, args, epochs=2):
    """-> int64 [epochs, N'] the example at each global position of each epoch, hosts each reading their files."""
    from tf_mocov3.data import order as order_lib  # pylint: disable=import-outside-toplevel
    from tf_mocov3.data import pipelines  # pylint: disable=import-outside-toplevel

    size = pipelines.streamed_epoch_size(source, hosts)
    out = None
    for host in range(hosts):
        rows = batch // hosts
        order = order_lib.ExampleOrder(size, batch, args.seed, rows=rows, row_offset=host * rows)
        one_epoch = pipelines.streamed_epochs(source, order, shuffle_buffer=args.shuffle_buffer,
                                              cycle_length=args.cycle_length, pipeline=host, pipelines=hosts)
        if out is None:
            out = np.full([epochs, order.steps_per_epoch * batch], -1, np.int64)
        for epoch in range(epochs):
            for (index, _), position, _ in one_epoch(epoch).batch(65536).as_numpy_iterator():
                out[epoch, position] = index
    return out


def buffer_only_order(source, batch, args, epochs=2):
    """The rule before file-level shuffling: one host, the split in file order through the seeded buffer."""
    from tf_mocov3.data import order as order_lib  # pylint: disable=import-outside-toplevel

    order = order_lib.ExampleOrder(source.num_examples, batch, args.seed)
    out = np.full([epochs, order.steps_per_epoch * batch], -1, np.int64)
    for epoch in range(epochs):
        for (index, _), position, _ in order.streamed_epoch(source.stream(), epoch, args.shuffle_buffer).batch(
                65536).as_numpy_iterator():
            out[epoch, position] = index
    return out


def permutation_order(num_examples, batch, args, epochs=2):
    from tf_mocov3.data import order as order_lib  # pylint: disable=import-outside-toplevel

    order = order_lib.ExampleOrder(num_examples, batch, args.seed)
    used = order.steps_per_epoch * batch
    return np.stack([order.permutation(e).numpy()[:used] for e in range(epochs)])


def measures(orders, num_examples, batch):
    """-> (spread, repeat, corr) of a [2, N'] order (module docstring)."""
    steps = orders.shape[1] // batch
    first = np.sort(orders[0].reshape(steps, batch), axis=1).astype(np.float64)
    weights = 2 * np.arange(batch) - batch + 1  # sum_{i<j} (x_j - x_i) of a sorted row
    spread = float(np.mean(first @ weights) / (batch * (batch - 1) / 2) / num_examples)
    step_of = np.full([2, num_examples], -1, np.int64)
    position_of = np.full([2, num_examples], -1, np.int64)
    for e in range(2):
        step_of[e, orders[e]] = np.arange(orders.shape[1]) // batch
        position_of[e, orders[e]] = np.arange(orders.shape[1])
    both = (step_of[0] >= 0) & (step_of[1] >= 0)
    cells = np.bincount(step_of[0, both] * steps + step_of[1, both], minlength=steps * steps)
    repeat = float(np.sum(cells * (cells - 1) / 2) / (steps * batch * (batch - 1) / 2))
    corr = float(np.corrcoef(position_of[0, both], position_of[1, both])[0, 1])
    return spread, repeat, corr


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_examples", type=int, default=1281167)
    parser.add_argument("--files", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--hosts", default="1,32")
    parser.add_argument("--shuffle_buffer", type=int, default=10000)
    parser.add_argument("--cycle_length", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", default="/tmp/stream_shuffle")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    t0 = time.perf_counter()
    paths, counts = write_files(args.dir, args.num_examples, args.files)
    source = source_of(paths, counts)
    n, b = args.num_examples, args.batch
    print(f"N = {n} examples in {args.files} files, global batch {b}, shuffle buffer {args.shuffle_buffer}, "
          f"cycle length {args.cycle_length} (files written / found in {time.perf_counter() - t0:.0f} s)")
    print(f"chance: spread 0.333, repeat {(b - 1) / (n - 1):.4f}, corr 0")
    print(f"{'mode':52s} {'spread':>7s} {'repeat':>7s} {'corr':>6s} {'time':>6s}")
    modes = [("buffer only, file order (before; 1 host)", lambda: buffer_only_order(source, b, args))]
    for hosts in (int(h) for h in args.hosts.split(",")):
        modes.append((f"file shuffle + interleave + buffer ({hosts} host{'s' if hosts > 1 else ''})",
                      lambda hosts=hosts: streamed_order(source, b, hosts, args)))
    modes.append(("global permutation (array_record / prepared)", lambda: permutation_order(n, b, args)))
    for name, make in modes:
        t0 = time.perf_counter()
        orders = make()
        assert (orders >= 0).all()
        spread, repeat, corr = measures(orders, n, b)
        print(f"{name:52s} {spread:7.3f} {repeat:7.4f} {corr:6.3f} {time.perf_counter() - t0:5.0f}s", flush=True)


if __name__ == "__main__":
    main()
