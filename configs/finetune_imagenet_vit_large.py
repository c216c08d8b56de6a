r"""End-to-end fine-tuning of a MoCo v3 ViT-L/16 on ImageNet-1k (paper: 84.1 top-1), DeiT's main.py recipe.

  python -m tf_mocov3.finetune --config=configs/finetune_imagenet_vit_large.py --pretrained=/tmp/mocov3_vit_large \
      --workdir=/tmp/ft_imagenet_vit_large --config.dataset.data_dir=/path/to/tensorflow_datasets

The recipe of configs/finetune_imagenet_vit_base.py (its docstring lists it) with arch vit_large, 100 epochs and
drop-path 0.5, as the paper runs ViT-L. On TPU add --config.mixed_precision=mixed_bfloat16.
"""

import importlib.util
import os


def get_config():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "finetune_imagenet_vit_base.py")
    spec = importlib.util.spec_from_file_location("finetune_imagenet_vit_base", path)
    base = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(base)
    return base.recipe("vit_large", epochs=100, drop_path_rate=0.5)
