r"""Paper Table 8: the prediction MLP head of a ViT-B/16 (MoCo v3, 300 epochs, linear top-1 on ImageNet).

One run per row, each the configs/vit_base.py recipe with one override (config.model.predictor):

  | predictor | paper | command
  | yes       | 76.5  | python -m tf_mocov3.train --config=configs/ablation_predictor.py --workdir=/tmp/pred_yes
  | no        | 75.5  | python -m tf_mocov3.train --config=configs/ablation_predictor.py --workdir=/tmp/pred_no \
  |           |       |     --config.model.predictor=False

(add --config.dataset.data_dir=/path/to/tensorflow_datasets to each). Without a predictor the queries are the
projector's outputs and the checkpoint has no model/predictor.
"""

from tf_mocov3 import config_lib


def get_config():
    config = config_lib.base_config()
    config.model.arch = "vit_base"
    config.model.predictor = True          # the row: True | False
    return config
