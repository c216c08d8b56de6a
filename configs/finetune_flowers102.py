r"""Transfer fine-tune of a MoCo v3 ViT-B/16 on Oxford Flowers-102 (paper: 97.7 top-1), the official DeiT recipe.

  python -m tf_mocov3.finetune --config=configs/finetune_flowers102.py --pretrained=/tmp/mocov3_vit_base \
      --workdir=/tmp/ft_flowers102

Trains on train+validation (2,040 images; the 6,149-image test split is the eval set). wd 0.3, no random
erasing (the official command passes --reprob 0.25, but moco-v3's transfer/datasets.py builds its own transform
and never reads it), no mixup, no cutmix (label smoothing 0.1 stays); trainable position embedding; otherwise
AdamW lr 3e-4 * batch / 512, batch 1024, 100 epochs (3 warmup), drop-path 0.1, RandomResizedCrop(224, scale 0.05-1) + flip. With batch 1024 an epoch is
only 1 step (the remainder of 2,040 is dropped each epoch, as with DeiT's drop_last). Needs TFDS
oxford_flowers102 prepared in --config.dataset.data_dir.
"""

from tf_mocov3 import config_lib


def get_config():
    config = config_lib.finetune_config()
    config.model.train_pos_embed = True   # DeiT trains pos_embed from the sin-cos start (not decayed)
    config.dataset.name = "oxford_flowers102"
    config.dataset.train_split = "train+validation"
    config.dataset.eval_split = "test"
    config.optim.weight_decay = 0.3
    # The official command passes --reprob 0.25, but transfer/datasets.py replaces DeiT's build_transform (the only
    # reader of --reprob) with RandomResizedCrop + flip, so the official Flowers run has no random erasing.
    config.aug.random_erasing = 0.0
    config.aug.mixup_alpha = 0.0
    config.aug.cutmix_alpha = 0.0
    return config
