r"""Transfer fine-tune of a MoCo v3 ViT-B/16 on Oxford-IIIT Pets (paper: 93.2 top-1), the official recipe.

  python -m tf_mocov3.finetune --config=configs/finetune_pets.py --pretrained=/tmp/mocov3_vit_base \
      --workdir=/tmp/ft_pets

moco-v3 transfer/README.md: DeiT's main.py on 8 GPUs, `--batch-size 128 --epochs 100 --lr 3e-4 --weight-decay 0.1
--warmup-epochs 3 --reprob 0 --drop-path 0 --mixup 0.8 --cutmix 0`, DeiT's defaults otherwise
(config_lib.transfer_config): global batch 1024; AdamW lr 3e-4 * 1024 / 512 = 6e-4; lr per epoch as DeiT steps
timm's cosine (warmup 3 epochs from 1e-6, cosine to 1e-5, stepped after each epoch); wd 0.1; drop-path 0; mixup 0.8,
no cutmix, one lambda per 128 images (DeiT's per-GPU batch); label smoothing 0.1; no random erasing;
RandomResizedCrop(224, scale 0.05-1) + flip. Trains on trainval (TFDS split "train", 3,680 images: 3 steps per
epoch), evaluates on "test". Needs TFDS oxford_iiit_pet prepared in --config.dataset.data_dir.
"""

from tf_mocov3 import config_lib


def get_config():
    config = config_lib.transfer_config()
    config.dataset.name = "oxford_iiit_pet"
    config.dataset.train_split = "train"   # TFDS's "train" is the official trainval list
    config.dataset.eval_split = "test"
    config.optim.weight_decay = 0.1
    config.model.drop_path_rate = 0.0
    config.aug.mixup_alpha = 0.8
    config.aug.cutmix_alpha = 0.0
    return config
