r"""Paper Table 5: the position embedding of a ViT-B/16 (MoCo v3, 300 epochs, linear top-1 on ImageNet).

One run per row, each the configs/vit_base.py recipe with one override (config.model.pos_embed):

  | pos_embed | paper | command
  | sin-cos   | 76.5  | python -m tf_mocov3.train --config=configs/ablation_posemb.py --workdir=/tmp/posemb_sincos
  | learned   | 76.1  | python -m tf_mocov3.train --config=configs/ablation_posemb.py --workdir=/tmp/posemb_learned \
  |           |       |     --config.model.pos_embed=learned
  | none      | 74.9  | python -m tf_mocov3.train --config=configs/ablation_posemb.py --workdir=/tmp/posemb_none \
  |           |       |     --config.model.pos_embed=none

(add --config.dataset.data_dir=/path/to/tensorflow_datasets to each). "learned" is a trained weight
cls_pos_embed/pos_embed drawn from N(0, 0.02) (timm's trunc_normal_(std=.02): its bounds +-2 are absolute, 100 std
away, so it is a plain normal); "none" adds nothing to the tokens. Evaluate each run
like any other (the linear probe and kNN rebuild the backbone from the run's config.json):

  python -m tf_mocov3.linear_probe --config=configs/linear_imagenet.py --pretrained=/tmp/posemb_learned \
      --workdir=/tmp/posemb_learned_probe
"""

from tf_mocov3 import config_lib


def get_config():
    config = config_lib.base_config()
    config.model.arch = "vit_base"
    config.model.pos_embed = "sincos"      # the row: sincos | learned | none
    return config
