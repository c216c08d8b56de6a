r"""A tiny ResNet (resnet_tiny) pre-trained with the MoCo v3 ResNet recipe on Fashion-MNIST, on a CPU.

  python -m tf_mocov3.train --config=configs/r50_demo_fashion_mnist.py --workdir=runs/r50_demo

The ResNet-50 recipe of configs/r50_100ep.py scaled down to one CPU epoch: the same MoCo_ResNet heads (2-layer
projector, predictor without a last BN), BN statistics per view, LARS (momentum 0.9, trust coefficient 0.001, no decay
or adaptation for biases and BN), tau 1.0, cosine momentum from 0.99, crop scale (0.2, 1); the backbone is
`resnet_tiny` (one bottleneck per stage, width 16, 512-d feature) at the native 28 px. Reads the offline
Fashion-MNIST IDX files of the Debian package dataset-fashion-mnist, and ends with the demo's report (kNN and a linear
probe beside raw pixels and a randomly initialised resnet_tiny). The larger lr than the recipe's makes up for the
short run and the small batch (LARS scales each layer's step to eta * ||w||, so lr sets the relative step size).
"""

from tf_mocov3 import config_lib


def get_config():
    config = config_lib.base_config()
    config.seed = 0
    config.batch_size = 256
    config.epochs = 1                         # 234 steps over the 60,000 training images
    config.strategy = "one_device"
    config.log_every_steps = 20
    config.checkpoint_every_steps = 200

    config.model.arch = "resnet_tiny"         # [1, 1, 1, 1] bottlenecks, width 16 -> 512 features
    config.model.moco_dim = 128
    config.model.mlp_dim = 1024
    config.model.temperature = 1.0
    config.model.momentum = 0.99

    config.optim.name = "lars"
    config.optim.base_lr = 4.0                # lr = 4.0 * 256 / 256
    config.optim.weight_decay = 1e-6
    config.optim.warmup_epochs = 0.2
    config.optim.momentum = 0.9
    config.optim.trust_coefficient = 0.001

    config.demo_eval = True                   # at the end: kNN + linear probe vs raw pixels and a random backbone
    config.knn.enabled = True
    config.knn.every_steps = 100
    config.knn.eval_split = "test"
    config.knn.train_fraction = 0.05

    config.dataset.name = "fashion_mnist_idx"
    config.dataset.path = "/usr/share/datasets/fashion-mnist"
    config.dataset.image_size = 28
    config.dataset.crop_min = 0.2
    return config
