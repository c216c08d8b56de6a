r"""A tiny ViT pre-trained with MoCo v3 on Fashion-MNIST, on a 2-core CPU in about 12 minutes (10 with AVX-512).

  python -m tf_mocov3.train --config=configs/demo.py --workdir=runs/demo

(`bash scripts/demo.sh` sets everything up first and runs exactly this.) Reads the offline Fashion-MNIST IDX files of
the Debian package dataset-fashion-mnist; on a machine with internet `--config.dataset.name=fashion_mnist` reads the
same data through TFDS. Everything else is the paper's recipe scaled down: the same two asymmetric views (at 28 px),
random frozen patch projection, BN heads, cosine momentum, symmetrized loss with 2*tau, AdamW with warmup + cosine.
"""

from tf_mocov3 import config_lib


def get_config():
    config = config_lib.base_config()
    config.seed = 0
    config.batch_size = 256
    config.epochs = 1                         # 234 steps over the 60,000 training images
    config.strategy = "one_device"
    config.jit_compile = "true"               # XLA: for this tiny model it is as fast as TF's CPU kernels
    config.log_every_steps = 20
    config.checkpoint_every_steps = 200

    config.model.arch = "vit_micro"           # 4 blocks, width 128, 4 heads, 4x4 patches
    config.model.moco_dim = 128
    config.model.mlp_dim = 1024

    config.optim.base_lr = 1.5e-3             # lr = 1.5e-3 * 256 / 256; short runs take a larger rate
    config.optim.weight_decay = 0.05
    config.optim.warmup_epochs = 0.2

    config.demo_eval = True                   # at the end: kNN + linear probe vs raw pixels and a random backbone
    config.knn.enabled = True                 # kNN top-1 on the Fashion-MNIST test images every 100 steps
    config.knn.every_steps = 100
    config.knn.eval_split = "test"
    config.knn.train_fraction = 0.05          # a 3,000-image memory bank keeps each evaluation to seconds

    config.dataset.name = "fashion_mnist_idx"
    config.dataset.path = "/usr/share/datasets/fashion-mnist"
    config.dataset.image_size = 28            # the native size: 7 x 7 patches of 4 x 4 pixels
    config.dataset.crop_min = 0.2
    return config
