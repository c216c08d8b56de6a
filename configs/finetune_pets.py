r"""Transfer fine-tune of a MoCo v3 ViT-B/16 on Oxford-IIIT Pets (paper: 93.2 top-1), the official DeiT recipe.

  python -m tf_mocov3.finetune --config=configs/finetune_pets.py --pretrained=/tmp/mocov3_vit_base \
      --workdir=/tmp/ft_pets

Trains on trainval (TFDS split "train", 3,680 images), evaluates on "test". drop-path 0 , mixup 0.8, no cutmix,
label smoothing 0.1, no random erasing; AdamW lr 3e-4 * batch / 512, batch 1024, 100 epochs (3 warmup), wd 0.1,
RandomResizedCrop(224, scale 0.05-1) + flip. Needs TFDS oxford_iiit_pet prepared in --config.dataset.data_dir.
"""

from tf_mocov3 import config_lib


def get_config():
    config = config_lib.finetune_config()
    config.model.train_pos_embed = True   # DeiT trains pos_embed from the sin-cos start (not decayed)
    config.dataset.name = "oxford_iiit_pet"
    config.dataset.train_split = "train"   # TFDS's "train" is the official trainval list
    config.dataset.eval_split = "test"
    config.model.drop_path_rate = 0.0
    config.aug.mixup_alpha = 0.8
    config.aug.cutmix_alpha = 0.0
    return config
