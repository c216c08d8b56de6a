r"""End-to-end fine-tuning of a MoCo v3 ViT-B/16 on ImageNet-1k (paper: 83.2 top-1), DeiT's main.py recipe.

  python -m tf_mocov3.finetune --config=configs/finetune_imagenet_vit_base.py --pretrained=/tmp/mocov3_vit_base \
      --workdir=/tmp/ft_imagenet_vit_base --config.dataset.data_dir=/path/to/tensorflow_datasets

The paper's numbers come from DeiT's main.py with the converted official checkpoint (convert_to_deit.py); its
defaults (../shared/SPEC.md, "ImageNet end-to-end fine-tuning") are what `recipe()` sets: 150 epochs, batch 1024,
AdamW (eps 1e-8) lr 5e-4 * batch / 512, wd 0.05 (none on biases, norms, cls_token and pos_embed), lr per epoch:
warmup 5 epochs from 1e-6, cosine to 1e-5, stepped after each epoch; drop-path 0.1; label smoothing 0.1 with
mixup 0.8 / cutmix 1.0 (prob 1, switch 0.5), one lambda per 128 images (DeiT's per-GPU batch); RandAugment
rand-m9-mstd0.5-inc1; random erasing 0.25 (pixel mode); repeated augmentation x3; RandomResizedCrop(224, 0.08-1)
+ flip with bicubic resizing; eval resize 256 bicubic + centre crop 224 (crop 0.875); trainable position
embedding from the sin-cos table. Model EMA (0.99996) is off: DeiT keeps one but reports the model; turn it on
with --config.ema.enabled=True (logged as eval_top1_ema). Reads imagenet2012 from TFDS by index when it is built
as array_record (`tfds build imagenet2012 --file_format=array_record`), else through the streamed input path
(each host its own files, in a new seeded order every epoch, through config.dataset.shuffle_buffer); or a
prepared set with --config.dataset.name=prepared --config.dataset.path=DIR (README "Pre-training on ImageNet").
"""

from tf_mocov3 import config_lib


def recipe(arch, *, epochs, drop_path_rate):
    """DeiT's ImageNet fine-tuning defaults for `arch` (shared by configs/finetune_imagenet_vit_*.py)."""
    c = config_lib.finetune_config()
    c.batch_size = 1024
    c.epochs = epochs
    c.image_size = 224
    c.model.arch = arch
    c.model.drop_path_rate = drop_path_rate
    c.model.train_pos_embed = True
    c.optim.base_lr = 2.5e-4          # per 256 = DeiT's 5e-4 per 512
    c.optim.weight_decay = 0.05
    c.optim.warmup_epochs = 5
    c.optim.epsilon = 1e-8
    c.optim.decay_exclude = "bias_norm_cls"
    c.optim.schedule = "per_epoch"
    c.optim.warmup_lr_init = 1e-6
    c.optim.min_lr = 1e-5
    c.aug.crop_min = 0.08
    c.aug.interpolation = "bicubic"
    c.aug.rand_augment = "rand-m9-mstd0.5-inc1"
    c.aug.random_erasing = 0.25
    c.aug.repeated_aug = 3
    c.aug.mixup_alpha = 0.8
    c.aug.cutmix_alpha = 1.0
    c.aug.mix_prob = 1.0
    c.aug.switch_prob = 0.5
    c.aug.label_smoothing = 0.1
    c.aug.mixup_group = 128
    c.ema.enabled = False
    c.ema.decay = 0.99996
    c.eval.crop_pct = 0.875
    c.eval.batch_size = 256
    c.dataset.name = "imagenet2012"
    c.dataset.train_split = "train"
    c.dataset.eval_split = "validation"
    c.dataset.in_memory = "auto"      # an array_record build is read from disk, a TFRecord build streamed
    c.dataset.shuffle_buffer = 10000
    c.checkpoint_every_steps = 1250   # one epoch of 1,281,167 images at batch 1024 is 1251 steps
    return c


def get_config():
    return recipe("vit_base", epochs=150, drop_path_rate=0.1)
