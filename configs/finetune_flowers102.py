r"""Transfer fine-tune of a MoCo v3 ViT-B/16 on Oxford Flowers-102 (paper: 97.7 top-1), the official recipe.

  python -m tf_mocov3.finetune --config=configs/finetune_flowers102.py --pretrained=/tmp/mocov3_vit_base \
      --workdir=/tmp/ft_flowers102

moco-v3 transfer/README.md: DeiT's main.py on 8 GPUs, `--batch-size 128 --epochs 100 --lr 3e-4 --weight-decay 0.3
--warmup-epochs 3 --reprob 0.25 --drop-path 0.1 --mixup 0 --cutmix 0`, DeiT's defaults otherwise
(config_lib.transfer_config): global batch 1024; AdamW lr 3e-4 * 1024 / 512 = 6e-4; lr per epoch as DeiT steps
timm's cosine (warmup 3 epochs from 1e-6, cosine to 1e-5, stepped after each epoch); wd 0.3; drop-path 0.1; no
mixup, no cutmix (label smoothing 0.1 stays); no random erasing (the command's --reprob 0.25 is never read: moco-v3's
transfer/datasets.py builds its own transform); RandomResizedCrop(224, scale 0.05-1) + flip. Trains on
train+validation (2,040 images; the 6,149-image test split is the eval set): 1 step per epoch at batch 1024 (the
remainder is dropped each epoch, as DeiT's drop_last; DeiT's 8 GPUs also take one batch of 128 each from their 255
images), so the per-epoch lr is one value per step: 1e-6 for the first two steps, then 2.007e-4, 4.003e-4,
5.987e-4 (timm's cosine counts from epoch 0, so it never reaches 6e-4) and on down the cosine to 1.058e-5 at the
last step (timm's value for epoch 98). Needs TFDS oxford_flowers102 prepared in --config.dataset.data_dir.
"""

from tf_mocov3 import config_lib


def get_config():
    config = config_lib.transfer_config()
    config.dataset.name = "oxford_flowers102"
    config.dataset.train_split = "train+validation"
    config.dataset.eval_split = "test"
    config.optim.weight_decay = 0.3
    config.model.drop_path_rate = 0.1
    # The official command passes --reprob 0.25, but transfer/datasets.py replaces DeiT's build_transform (the only
    # reader of --reprob) with RandomResizedCrop + flip, so the official Flowers run has no random erasing.
    config.aug.random_erasing = 0.0
    config.aug.mixup_alpha = 0.0
    config.aug.cutmix_alpha = 0.0
    return config
