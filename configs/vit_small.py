r"""MoCo v3 ViT-S/16, the official 300-epoch recipe (linear probe 73.2% top-1 on ImageNet in the official code).

  python -m tf_mocov3.train --config=configs/vit_small.py --workdir=/tmp/mocov3_vit_small \
      --config.dataset.data_dir=/path/to/tensorflow_datasets

AdamW, base lr 1.5e-4 (lr = base_lr * batch / 256), wd 0.1, 300 epochs with 40 of warmup, tau 0.2, cosine momentum
from 0.99, random frozen patch projection. The released weights use batch 4096; the official single-node (8 GPU)
variant is `--config.batch_size=1024`. The data: imagenet2012 built by TFDS as array_record, or a folder prepared with
`python -m tf_mocov3.prepare_data` and read with --config.dataset.name=prepared --config.dataset.path=DIR (README,
"Pre-training on ImageNet").
"""

from tf_mocov3 import config_lib


def get_config():
    config = config_lib.base_config()
    config.model.arch = "vit_small"
    return config
