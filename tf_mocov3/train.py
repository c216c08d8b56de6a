r"""MoCo v3 pre-training command.

  python -m tf_mocov3.train --config=configs/vit_small.py --workdir=/tmp/mocov3_vit_small \
      [--config.batch_size=1024] [--strategy=mirrored] [--tpu=NAME]

Running the same command again resumes from the last checkpoint in --workdir.
"""

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.")
_STRATEGY = flags.DEFINE_enum("strategy", None, ["auto", "one_device", "mirrored", "multi_worker", "tpu"],
                              "Overrides config.strategy.")
_TPU = flags.DEFINE_string("tpu", "", "Cloud TPU name ('local' on a TPU VM); implies --strategy=tpu.")
_PRETRAINED = flags.DEFINE_string("pretrained", None, "Start from these weights (continued pre-training): a workdir, "
                                  "a checkpoint or a tf_mocov3.convert_official directory. Overrides config.pretrained.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    # Imported here so that `--help` and flag errors do not pay for TensorFlow's start-up.
    from tf_mocov3 import config_lib  # pylint: disable=import-outside-toplevel
    from tf_mocov3.training import pretrain as training  # pylint: disable=import-outside-toplevel

    config = _CONFIG.value
    with config.unlocked():
        if _STRATEGY.value:
            config.strategy = _STRATEGY.value
        elif _TPU.value:
            config.strategy = "tpu"
        if _PRETRAINED.value is not None:
            config.pretrained = _PRETRAINED.value
    try:
        training.run_pretraining(config, _WORKDIR.value, tpu=_TPU.value)
    except (config_lib.ConfigError, training.TrainingDiverged, ValueError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
