r"""Transfer fine-tune of a MoCo v3 ViT-B/16 on CIFAR-10 (paper: 98.9 top-1), the official DeiT recipe.

  python -m tf_mocov3.finetune --config=configs/finetune_cifar10.py --pretrained=/tmp/mocov3_vit_base \
      --workdir=/tmp/ft_cifar10

AdamW lr 3e-4 * batch / 512, batch 1024, 100 epochs (3 warmup), wd 0.1, drop-path 0.1, mixup 0.8, cutmix 1.0
(one of the two per batch, p 0.5 each), label smoothing 0.1, no random erasing, RandomResizedCrop(224, scale
0.05-1) + flip of the 32 px images; eval: resize 256, centre crop 224. Needs TFDS cifar10 prepared in
--config.dataset.data_dir (training never downloads).
"""

from tf_mocov3 import config_lib


def get_config():
    config = config_lib.finetune_config()
    config.model.train_pos_embed = True   # DeiT trains pos_embed from the sin-cos start (not decayed)
    config.dataset.name = "cifar10"
    config.dataset.train_split = "train"
    config.dataset.eval_split = "test"
    config.aug.mixup_alpha = 0.8
    config.aug.cutmix_alpha = 1.0
    return config
