r"""Paper Table 9: the momentum coefficient m of a ViT-B/16 (MoCo v3, 300 epochs, linear top-1 on ImageNet).

One run per row, each the configs/vit_base.py recipe with one override (config.model.momentum, the m0 of the cosine
schedule to 1):

  | m     | paper | command
  | 0     | 74.3  | python -m tf_mocov3.train --config=configs/ablation_momentum.py --workdir=/tmp/m_0 \
  |       |       |     --config.model.momentum=0.0
  | 0.9   | 75.6  | python -m tf_mocov3.train --config=configs/ablation_momentum.py --workdir=/tmp/m_0.9 \
  |       |       |     --config.model.momentum=0.9
  | 0.99  | 76.5  | python -m tf_mocov3.train --config=configs/ablation_momentum.py --workdir=/tmp/m_0.99
  | 0.999 | 75.0  | python -m tf_mocov3.train --config=configs/ablation_momentum.py --workdir=/tmp/m_0.999 \
  |       |       |     --config.model.momentum=0.999

(add --config.dataset.data_dir=/path/to/tensorflow_datasets to each). m = 0 makes the key encoder a copy of the
query encoder of the same step (the update runs before the keys are computed). --config.model.momentum_cosine=False
keeps m constant instead of raising it to 1.
"""

from tf_mocov3 import config_lib


def get_config():
    config = config_lib.base_config()
    config.model.arch = "vit_base"
    config.model.momentum = 0.99           # the row: 0 | 0.9 | 0.99 | 0.999
    return config
