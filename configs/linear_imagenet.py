r"""Linear probe on ImageNet-1k, the official ViT recipe (main_lincls.py, CONFIG.md).

  python -m tf_mocov3.linear_probe --config=configs/linear_imagenet.py --pretrained=/tmp/mocov3_vit_base \
      --workdir=/tmp/linear_vit_base

Frozen backbone; a linear layer on the [CLS] feature (N(0, 0.01), zero bias); SGD momentum 0.9, wd 0, batch 1024,
base lr 3 (lr 12 = 3 * 1024 / 256), cosine per epoch, 90 epochs, no warmup; RandomResizedCrop(224) + flip for
training, resize 256 + centre crop 224 for evaluation on the validation split.

The paper sweeps the lr: this config trains heads at base lr 1, 3 and 10 side by side (the sweep costs almost
nothing next to the backbone) and picks one on 10000 held-out TRAINING images. The official single run on the
whole training split: `--config.base_lrs="(3.0,)" --config.holdout_examples=0`.
"""

from tf_mocov3 import config_lib


def get_config():
    c = config_lib.probe_config()      # the official protocol: batch 1024, 90 epochs, SGD 0.9, cosine per epoch
    c.base_lrs = (1.0, 3.0, 10.0)      # lr = base_lr * batch_size / 256; the official ViT value is 3
    c.holdout_examples = 10000         # > 0: this many training images choose the lr (wins over the fraction)
    c.dataset.name = "imagenet2012"
    c.dataset.eval_split = "validation"
    c.dataset.image_size = 224
    return c
