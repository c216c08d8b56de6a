r"""Transfer fine-tune of a MoCo v3 ViT-B/16 on CIFAR-100 (paper: 90.5 top-1), the official recipe.

  python -m tf_mocov3.finetune --config=configs/finetune_cifar100.py --pretrained=/tmp/mocov3_vit_base \
      --workdir=/tmp/ft_cifar100

moco-v3 transfer/README.md: DeiT's main.py on 8 GPUs, `--batch-size 128 --epochs 100 --lr 3e-4 --weight-decay 0.1
--warmup-epochs 3 --reprob 0.0 --drop-path 0.1 --mixup 0.5 --cutmix 1`, DeiT's defaults otherwise
(config_lib.transfer_config): global batch 1024; AdamW lr 3e-4 * 1024 / 512 = 6e-4; lr per epoch as DeiT steps
timm's cosine (warmup 3 epochs from 1e-6, cosine to 1e-5, stepped after each epoch); wd 0.1; drop-path 0.1;
mixup 0.5 / cutmix 1.0 (one of the two per group, p 0.5 each), one lambda per 128 images (DeiT's per-GPU batch);
label smoothing 0.1; no random erasing; RandomResizedCrop(224, scale 0.05-1) + flip of the 32 px images; eval:
resize 256, centre crop 224. 48 steps per epoch (50,000 // 1024). Needs TFDS cifar100 prepared in
--config.dataset.data_dir.
"""

from tf_mocov3 import config_lib


def get_config():
    config = config_lib.transfer_config()
    config.dataset.name = "cifar100"
    config.dataset.train_split = "train"
    config.dataset.eval_split = "test"
    config.optim.weight_decay = 0.1
    config.model.drop_path_rate = 0.1
    config.aug.mixup_alpha = 0.5
    config.aug.cutmix_alpha = 1.0
    return config
