r"""Linear probe of the demo model on Fashion-MNIST, offline, on cached features (a few minutes on a CPU).

  python -m tf_mocov3.linear_probe --config=configs/linear_fashion_mnist.py --pretrained=runs/demo \
      --workdir=runs/demo_linear

The official protocol scaled down: a linear layer (N(0, 0.01), zero bias) on the frozen [CLS] feature, SGD momentum
0.9, wd 0, cosine per epoch, no warmup; the lr is swept and chosen on 10% of the TRAINING split; the test split
gives the reported top-1. Features are computed once with eval preprocessing (config.cache_features=True);
`--config.cache_features=False` trains with RandomResizedCrop + flip as the official probe does (much slower).
"""

from tf_mocov3 import config_lib


def get_config():
    c = config_lib.probe_config()
    c.eval_batch_size = 512
    c.base_lrs = (0.1, 0.3, 1.0, 3.0)  # lr = base_lr * batch_size / 256
    c.holdout_fraction = 0.1           # 6000 of the 60000 training images choose the lr
    c.cache_features = True

    c.dataset.name = "fashion_mnist_idx"
    c.dataset.path = "/usr/share/datasets/fashion-mnist"
    c.dataset.eval_split = "test"
    c.dataset.image_size = 0           # 0 = the pre-training size (28 for configs/demo.py)
    c.dataset.in_memory = "true"
    return c
