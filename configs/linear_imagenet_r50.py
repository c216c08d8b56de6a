r"""Linear probe of a MoCo v3 ResNet-50 on ImageNet-1k, the official protocol (main_lincls.py defaults, CONFIG.md).

  python -m tf_mocov3.linear_probe --config=configs/linear_imagenet_r50.py --pretrained=/tmp/mocov3_r50_100ep \
      --workdir=/tmp/linear_r50_100ep

Frozen backbone in inference mode (BN with its moving statistics); a linear layer on the globally average-pooled
2048-d feature (N(0, 0.01), zero bias); SGD momentum 0.9, wd 0, batch 1024, base lr 0.1 (lr 0.4 = 0.1 * 1024 / 256),
cosine per epoch, 90 epochs, no warmup; RandomResizedCrop(224) + flip for training, resize 256 + centre crop 224 for
evaluation on the validation split. Official results: 68.9 / 72.8 / 74.6% top-1 after 100 / 300 / 1000 epochs of
pre-training (configs/r50_100ep.py, r50_300ep.py, r50_1000ep.py; converted weights: linear-100ep.pth.tar etc.).

As configs/linear_imagenet.py does for ViTs, this config trains heads at base lr 0.03, 0.1 and 0.3 side by side and
picks one on 10000 held-out TRAINING images. The official single run on the whole training split:
`--config.base_lrs="(0.1,)" --config.holdout_examples=0`.
"""

from tf_mocov3 import config_lib


def get_config():
    c = config_lib.probe_config()      # the official protocol: batch 1024, 90 epochs, SGD 0.9, cosine per epoch
    c.base_lrs = (0.03, 0.1, 0.3)      # lr = base_lr * batch_size / 256; the official ResNet-50 value is 0.1
    c.holdout_examples = 10000         # > 0: this many training images choose the lr (wins over the fraction)
    c.model.arch = "resnet50"          # refuse weights of another architecture
    c.dataset.name = "imagenet2012"
    c.dataset.eval_split = "validation"
    c.dataset.image_size = 224
    return c
