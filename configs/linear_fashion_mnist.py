r"""Linear probe of the demo model on Fashion-MNIST, offline, on cached features (a few minutes on a CPU).

  python -m tf_mocov3.linear_probe --config=configs/linear_fashion_mnist.py --pretrained=runs/demo \
      --workdir=runs/demo_linear

The official protocol scaled down: a linear layer (N(0, 0.01), zero bias) on the frozen [CLS] feature, SGD momentum
0.9, wd 0, cosine per epoch, no warmup; the lr is swept and chosen on 10% of the TRAINING split; the test split
gives the reported top-1. Features are computed once with eval preprocessing (config.cache_features=True);
`--config.cache_features=False` trains with RandomResizedCrop + flip as the official probe does (much slower).
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 1024
    c.eval_batch_size = 512
    c.epochs = 90
    c.base_lrs = (0.1, 0.3, 1.0, 3.0)  # lr = base_lr * batch_size / 256
    c.momentum = 0.9
    c.holdout_examples = 0
    c.holdout_fraction = 0.1           # 6000 of the 60000 training images choose the lr
    c.train_examples = 0               # > 0: a seeded subset of the training split (quick probes, tests)
    c.eval_examples = 0                # > 0: a seeded subset of the evaluation split (smoke tests only)
    c.cache_features = True
    c.jit_compile = "false"
    c.log_every_steps = 100
    c.keep_checkpoints = 3

    c.model = ml_collections.ConfigDict()
    c.model.arch = ""                  # "" = any
    c.model.pretrain_image_size = 0    # 0 = any

    c.dataset = ml_collections.ConfigDict()
    c.dataset.name = "fashion_mnist_idx"
    c.dataset.path = "/usr/share/datasets/fashion-mnist"
    c.dataset.data_dir = ""
    c.dataset.train_split = "train"
    c.dataset.eval_split = "test"
    c.dataset.image_size = 0           # 0 = the pre-training size (32 for configs/demo.py)
    c.dataset.crop_min = 0.08
    return c
