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

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 1024
    c.eval_batch_size = 256
    c.epochs = 90
    c.base_lrs = (1.0, 3.0, 10.0)      # lr = base_lr * batch_size / 256; the official ViT value is 3
    c.momentum = 0.9
    c.holdout_examples = 10000         # > 0: this many training images choose the lr (wins over the fraction)
    c.holdout_fraction = 0.0
    c.train_examples = 0               # > 0: a seeded subset of the training split (quick probes, tests)
    c.eval_examples = 0                # > 0: a seeded subset of the evaluation split (smoke tests only)
    c.cache_features = False           # True: embed once without augmentation (fast, not the official protocol)
    c.jit_compile = "false"
    c.log_every_steps = 100
    c.keep_checkpoints = 3

    c.model = ml_collections.ConfigDict()
    c.model.arch = ""                  # "" = any; e.g. "vit_base" refuses weights of another architecture
    c.model.pretrain_image_size = 0    # 0 = any; else refuse weights pre-trained at another size

    c.dataset = ml_collections.ConfigDict()
    c.dataset.name = "imagenet2012"
    c.dataset.path = ""
    c.dataset.data_dir = ""
    c.dataset.train_split = "train"
    c.dataset.eval_split = "validation"
    c.dataset.image_size = 224         # 0 = the pre-training size
    c.dataset.crop_min = 0.08          # RandomResizedCrop scale (0.08, 1), torchvision's default
    c.dataset.validate_files = True
    c.dataset.in_memory = False        # imagenet2012 is streamed
    c.dataset.shuffle_buffer = 10000
    return c
