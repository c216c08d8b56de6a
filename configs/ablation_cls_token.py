r"""Paper Table 6: the [CLS] token and the final LayerNorm of a ViT-B/16 (MoCo v3, 300 epochs, linear top-1).

One run per row, each the configs/vit_base.py recipe with one override (config.model.pooling):

  | pooling                                | paper | command
  | [CLS] (after the final LN)             | 76.5  | python -m tf_mocov3.train --config=configs/ablation_cls_token.py \
  |                                        |       |     --workdir=/tmp/pool_cls
  | no [CLS], final LN, average pool       | 69.7  | python -m tf_mocov3.train --config=configs/ablation_cls_token.py \
  |                                        |       |     --workdir=/tmp/pool_gap_ln --config.model.pooling=gap_ln
  | no [CLS], no final LN, average pool    | 76.3  | python -m tf_mocov3.train --config=configs/ablation_cls_token.py \
  |                                        |       |     --workdir=/tmp/pool_gap --config.model.pooling=gap

(add --config.dataset.data_dir=/path/to/tensorflow_datasets to each). Without [CLS] the backbone has no cls_token
weight and its feature is the mean of the patch tokens (layer "pool"); gap_ln first applies the final LayerNorm
("norm") to every token. The linear probe, kNN, fine-tuning and export rebuild this backbone from config.json.
"""

from tf_mocov3 import config_lib


def get_config():
    config = config_lib.base_config()
    config.model.arch = "vit_base"
    config.model.pooling = "cls"           # the row: cls | gap_ln | gap
    return config
