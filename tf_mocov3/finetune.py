r"""Fine-tuning command: the pre-trained ViT with a classification head, trained end to end (DeiT's recipe).

  python -m tf_mocov3.finetune --config=configs/finetune_cifar10.py --pretrained=/tmp/mocov3_vit_base \
      --workdir=/tmp/ft_c10 [--config.batch_size=512] [--strategy=mirrored] [--tpu=NAME]

Running the same command again resumes from the last checkpoint in --workdir (see tf_mocov3/training/finetune.py).
"""

from tf_mocov3 import cli

cli.define_flags(
    config="Config file (configs/finetune_*.py).",
    workdir="Directory for checkpoints, logs and metrics.",
    pretrained="Pre-training workdir, checkpoint prefix or converted official directory.",
    strategy="Overrides config.strategy.",
    tpu="Cloud TPU name; implies --strategy=tpu.",
    required=("config", "workdir", "pretrained"))


def main(argv):
    del argv  # cli.run rejects stray arguments
    from tf_mocov3.training import finetune  # pylint: disable=import-outside-toplevel

    config = cli.configure(cli.FLAGS.config)
    finetune.run_finetune(config, cli.FLAGS.workdir, cli.FLAGS.pretrained, tpu=cli.FLAGS.tpu)


if __name__ == "__main__":
    cli.run(main)
