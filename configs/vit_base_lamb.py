r"""MoCo v3 ViT-B/16 with LAMB instead of AdamW (the paper's optimizer comparison).

  python -m tf_mocov3.train --config=configs/vit_base_lamb.py --workdir=/tmp/mocov3_vit_base_lamb \
      --config.dataset.data_dir=/path/to/tensorflow_datasets

LAMB as You et al. define it (weight decay inside the trust ratio), wd 1e-3 as in the paper. The paper gives no
base learning rate for this run in our SPEC, so the AdamW value (1.5e-4) is kept: sweep it with
--config.optim.base_lr.
"""

from tf_mocov3 import config_lib


def get_config():
    config = config_lib.base_config()
    config.model.arch = "vit_base"
    config.optim.name = "lamb"
    config.optim.weight_decay = 1e-3
    return config
