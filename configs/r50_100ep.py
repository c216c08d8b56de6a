r"""MoCo v3 ResNet-50, the official 100-epoch recipe (linear probe 68.9% top-1 on ImageNet, official CONFIG.md).

  python -m tf_mocov3.train --config=configs/r50_100ep.py --workdir=/tmp/mocov3_r50_100ep \
      --config.dataset.data_dir=/path/to/tensorflow_datasets

main_moco.py with `--moco-m-cos --crop-min=.2`: LARS (momentum 0.9, trust coefficient 0.001; biases and BN
parameters get neither decay nor adaptation), base lr 0.6 (lr = base_lr * batch / 256 = 9.6 at batch 4096),
wd 1e-6, 100 epochs with 10 of warmup, tau 1.0, cosine momentum from 0.99, crop scale (0.2, 1). MoCo_ResNet heads:
projector 2048 -> 4096 -> 256 (last BN without affine), predictor 256 -> 4096 -> 256 (no last BN); BN statistics
per view. Linear probe of the result: configs/linear_imagenet_r50.py.
"""

from tf_mocov3 import config_lib


def get_config():
    config = config_lib.resnet50_config()     # LARS, batch 4096, warmup 10, tau 1.0, crop_min 0.2 (config_lib.py)
    config.epochs = 100
    config.model.momentum = 0.99             # m0 of the cosine schedule (--moco-m-cos)
    config.optim.base_lr = 0.6                # lr = base_lr * batch_size / 256
    config.optim.weight_decay = 1e-6
    return config
