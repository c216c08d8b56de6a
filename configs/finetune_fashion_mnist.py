r"""A small, offline fine-tune: the demo's vit_micro (configs/demo.py) on Fashion-MNIST at 32 px, on a CPU.

  python -m tf_mocov3.train --config=configs/demo.py --workdir=runs/demo
  python -m tf_mocov3.finetune --config=configs/finetune_fashion_mnist.py --pretrained=runs/demo \
      --workdir=runs/demo_finetune

Reads the Fashion-MNIST IDX files of the Debian package dataset-fashion-mnist (no download). Transfer-style, on
`config_lib.finetune_config()`'s defaults rather than the transfer recipe's DeiT schedule (a few hundred steps, not
100 epochs of 1024): AdamW with warmup + cosine per step, one mixup lambda per batch, drop-path 0.1,
mixup 0.8 / cutmix 1.0 with label smoothing 0.1,
RandomResizedCrop(32, scale 0.05-1) + flip of the 28 px images, eval resize 36 + centre crop 32. For an image
folder instead: --config.dataset.name=image_folder --config.dataset.path=DIR (one sub-folder per class; DIR/train
and DIR/val are used when present, with --config.dataset.eval_split=val).
"""

from tf_mocov3 import config_lib


def get_config():
    config = config_lib.finetune_config()
    config.model.train_pos_embed = True   # DeiT trains pos_embed from the sin-cos start (not decayed)
    config.batch_size = 256
    config.epochs = 3
    config.image_size = 32
    config.strategy = "one_device"
    config.log_every_steps = 20
    config.checkpoint_every_steps = 200
    config.model.arch = "vit_micro"
    config.optim.base_lr = 5e-4           # short runs take a larger rate (lr = 5e-4 * 256 / 256)
    config.optim.weight_decay = 0.05
    config.optim.warmup_epochs = 1
    config.dataset.name = "fashion_mnist_idx"
    config.dataset.path = "/usr/share/datasets/fashion-mnist"
    config.dataset.train_split = "train"
    config.dataset.eval_split = "test"
    config.eval.max_examples = 2000       # a quick per-epoch estimate; set 0 for the full 10,000
    return config
