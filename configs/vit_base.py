r"""MoCo v3 ViT-B/16, the official 300-epoch recipe (linear probe 76.7% top-1 on ImageNet in the official code).

  python -m tf_mocov3.train --config=configs/vit_base.py --workdir=/tmp/mocov3_vit_base \
      --config.dataset.data_dir=/path/to/tensorflow_datasets

Batch 4096, AdamW, base lr 1.5e-4, wd 0.1, 300 epochs (40 warmup), tau 0.2, cosine momentum from 0.99,
random frozen patch projection.
"""

from tf_mocov3 import config_lib


def get_config():
    config = config_lib.base_config()
    config.model.arch = "vit_base"
    return config
