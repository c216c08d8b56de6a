r"""MoCo v3 ResNet-50, the official 300-epoch recipe (linear probe 72.8% top-1 on ImageNet, official CONFIG.md).

  python -m tf_mocov3.train --config=configs/r50_300ep.py --workdir=/tmp/mocov3_r50_300ep \
      --config.dataset.data_dir=/path/to/tensorflow_datasets

As configs/r50_100ep.py (LARS momentum 0.9 / trust 0.001, batch 4096, warmup 10 epochs, tau 1.0, crop_min 0.2,
MoCo_ResNet heads) with base lr 0.3 (lr 4.8 at batch 4096), wd 1e-6, cosine momentum from 0.99, 300 epochs.
"""

from tf_mocov3 import config_lib


def get_config():
    config = config_lib.resnet50_config()     # LARS, batch 4096, warmup 10, tau 1.0, crop_min 0.2 (config_lib.py)
    config.epochs = 300
    config.model.momentum = 0.99             # m0 of the cosine schedule (--moco-m-cos)
    config.optim.base_lr = 0.3                # lr = base_lr * batch_size / 256
    config.optim.weight_decay = 1e-6
    return config
