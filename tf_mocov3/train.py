r"""MoCo v3 pre-training command.

  python -m tf_mocov3.train --config=configs/vit_small.py --workdir=/tmp/mocov3_vit_small \
      [--config.batch_size=1024] [--strategy=mirrored] [--tpu=NAME] [--pretrained=DIR]

Running the same command again resumes from the last checkpoint in --workdir. With config.knn.enabled the kNN monitor
runs during training; with config.demo_eval the demo's evaluation report follows it.
"""

from tf_mocov3 import cli

cli.define_flags(
    config="Config file (configs/*.py).",
    workdir="Directory for checkpoints, logs and metrics.",
    pretrained="Start from these weights (continued pre-training): a workdir, a checkpoint or a "
               "tf_mocov3.convert_official directory. Overrides config.pretrained.",
    strategy="Overrides config.strategy.",
    tpu="Cloud TPU name ('local' on a TPU VM); implies --strategy=tpu.",
    required=("config", "workdir"))


def main(argv):
    del argv  # cli.run rejects stray arguments
    # Imported here so that `--help` and flag errors do not pay for TensorFlow's start-up.
    from tf_mocov3.evaluation import demo  # pylint: disable=import-outside-toplevel
    from tf_mocov3.evaluation import knn  # pylint: disable=import-outside-toplevel
    from tf_mocov3.training import pretrain  # pylint: disable=import-outside-toplevel

    config = cli.configure(cli.FLAGS.config)
    pretrain.run_pretraining(config, cli.FLAGS.workdir, tpu=cli.FLAGS.tpu, make_callbacks=knn.monitor_callbacks)
    if config.demo_eval:  # kNN and a linear probe beside raw pixels and a random backbone (configs/demo.py)
        demo.evaluate_demo(cli.FLAGS.workdir, config)


if __name__ == "__main__":
    cli.run(main)
