r"""Linear probe on ImageNet-1k exactly as the official code runs it for ViTs (main_lincls.py, CONFIG.md).

  python -m tf_mocov3.linear_probe --config=configs/linear_imagenet_official.py --pretrained=/tmp/mocov3_vit_base \
      --workdir=/tmp/linear_official_vit_base

One head at base lr 3 (lr 12 = 3 * 1024 / 256, `main_lincls.py -a vit_base --lr=3`) trained on the whole training
split (no held-out images, no lr selection); frozen backbone in inference mode; linear layer N(0, 0.01) with zero
bias, no BatchNorm before it; SGD momentum 0.9, wd 0, batch 1024, 90 epochs, cosine per epoch, no warmup;
RandomResizedCrop(224) + flip for training, resize 256 + centre crop 224 on the validation split. The reported
top-1 is that of the final epoch's head (main_lincls.py keeps the best epoch's, evaluating on the validation
split every epoch). configs/linear_imagenet.py is the same protocol with an lr sweep chosen on held-out training
images.
"""

from tf_mocov3 import config_lib


def get_config():
    c = config_lib.probe_config()      # batch 1024, 90 epochs, SGD 0.9, cosine per epoch, base lr 3
    c.base_lrs = (3.0,)                # the official ViT value
    c.holdout_examples = 0             # the full training split, no lr selection
    c.holdout_fraction = 0.0
    c.model.bn_before_head = False     # the official plain linear layer
    c.dataset.name = "imagenet2012"
    c.dataset.train_split = "train"
    c.dataset.eval_split = "validation"
    c.dataset.image_size = 224
    return c
