r"""Linear-probe command: a linear classifier on the frozen pre-trained backbone (MoCo v3's protocol).

  python -m tf_mocov3.linear_probe --config=configs/linear_fashion_mnist.py --pretrained=runs/demo \
      --workdir=runs/demo_linear [--config.epochs=10] [--strategy=mirrored] [--tpu=NAME]

Running the same command again resumes from the probe's last checkpoint (see tf_mocov3/training/linear_probe.py).
"""

from tf_mocov3 import cli

cli.define_flags(
    config="Config file (configs/linear_*.py).",
    pretrained="Pre-training workdir, checkpoint prefix or converted official directory.",
    workdir="Directory for the probe's checkpoints and report.",
    strategy="Overrides config.strategy.",
    tpu="Cloud TPU name; implies --strategy=tpu.",
    required=("config", "pretrained", "workdir"))


def main(argv):
    del argv  # cli.run rejects stray arguments
    from tf_mocov3.training import linear_probe  # pylint: disable=import-outside-toplevel

    linear_probe.run_probe(cli.configure(cli.FLAGS.config), cli.FLAGS.pretrained, cli.FLAGS.workdir,
                           tpu=cli.FLAGS.tpu)


if __name__ == "__main__":
    cli.run(main)
