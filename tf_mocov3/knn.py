r"""kNN evaluation command: weighted kNN top-1 (k=200, T=0.07) of a pre-trained backbone on the full splits.

  python -m tf_mocov3.knn --pretrained=runs/demo [--dataset=NAME] [--data_path=DIR] [--k=200] \
      [--strategy=mirrored | --tpu=NAME]

Prints the accuracy as a table; when --pretrained is a workdir, also writes WORKDIR/knn.json
(see tf_mocov3/evaluation/knn.py).
"""

from absl import flags

from tf_mocov3 import cli

cli.define_flags(pretrained="Workdir, checkpoint prefix or converted official directory.",
                 strategy="Embed on the replicas of this strategy (auto: every GPU of the host, or one device).",
                 tpu="Cloud TPU name; implies --strategy=tpu.", required=("pretrained",))
flags.DEFINE_string("dataset", None, "Data set name (default: the pre-training data set of the run).")
flags.DEFINE_string("data_path", None, "dataset.path (image_folder, fashion_mnist_idx).")
flags.DEFINE_string("data_dir", None, "TFDS data_dir.")
flags.DEFINE_string("train_split", "train", "Memory-bank split (all of it).")
flags.DEFINE_string("eval_split", "test", "Evaluated split (all of it).")
flags.DEFINE_integer("k", 200, "Neighbours.")
flags.DEFINE_float("temperature", 0.07, "Vote weight exp(similarity / temperature).")
flags.DEFINE_integer("image_size", None, "Crop size (default: the pre-training size).")
flags.DEFINE_integer("batch_size", 256, "Images per backbone call (split over the replicas).")
flags.DEFINE_integer("num_cpu_devices", 0, "--strategy=mirrored without GPUs: split the CPU into this many devices.")


def main(argv):
    del argv  # cli.run rejects stray arguments
    from tf_mocov3.evaluation import knn  # pylint: disable=import-outside-toplevel
    from tf_mocov3.training import distribute  # pylint: disable=import-outside-toplevel

    f = cli.FLAGS
    strategy = distribute.make_strategy(f.strategy or ("tpu" if f.tpu else "auto"), tpu=f.tpu or "",
                                        num_cpu_devices=f.num_cpu_devices)
    knn.evaluate_and_report(f.pretrained, dataset=f.dataset, data_path=f.data_path, data_dir=f.data_dir,
                            train_split=f.train_split, eval_split=f.eval_split, k=f.k, temperature=f.temperature,
                            image_size=f.image_size, batch_size=f.batch_size, strategy=strategy)


if __name__ == "__main__":
    cli.run(main)
