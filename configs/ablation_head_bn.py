r"""Paper Table 7: batch normalization in the MLP heads of a ViT-B/16 (MoCo v3, 300 epochs, linear top-1).

One run per row, each the configs/vit_base.py recipe with one override (config.model.head_bn):

  | BN in the heads                        | paper | command
  | projector and predictor (all)          | 76.5  | python -m tf_mocov3.train --config=configs/ablation_head_bn.py \
  |                                        |       |     --workdir=/tmp/head_bn_all
  | none                                   | 74.4  | python -m tf_mocov3.train --config=configs/ablation_head_bn.py \
  |                                        |       |     --workdir=/tmp/head_bn_none --config.model.head_bn=none \
  |                                        |       |     --config.batch_size=2048

(add --config.dataset.data_dir=/path/to/tensorflow_datasets to each). The paper's run without BN needs batch 2048
to converge (SPEC.md, "Ablations"), hence the second row's batch. Two more settings are available, without a paper
number: --config.model.head_bn=projector (BN in the projector only) and --config.model.head_bn=hidden (BN on the
hidden layers of both heads, none on an output layer: BYOL's heads).
"""

from tf_mocov3 import config_lib


def get_config():
    config = config_lib.base_config()
    config.model.arch = "vit_base"
    config.model.head_bn = "all"           # the row: all | none (also: projector | hidden)
    return config
