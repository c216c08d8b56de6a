r"""End-to-end fine-tuning of a MoCo v3 ViT-S/16 on ImageNet-1k (paper: 81.4 top-1), DeiT's main.py recipe.

  python -m tf_mocov3.finetune --config=configs/finetune_imagenet_vit_small.py --pretrained=/tmp/mocov3_vit_small \
      --workdir=/tmp/ft_imagenet_vit_small --config.dataset.data_dir=/path/to/tensorflow_datasets

The recipe of configs/finetune_imagenet_vit_base.py (its docstring lists it) with arch vit_small, drop-path 0.1 and
DeiT's default length, 300 epochs. The official README (facebookresearch/moco-v3, "ViT, end-to-end fine-tuning")
says: "The end-to-end fine-tuning results are obtained using the DeiT repo, using all the default DeiT configs.
ViT-B is fine-tuned for 150 epochs (vs DeiT-B's 300ep, which has 81.8% accuracy)." It names a shorter run for ViT-B
only, so ViT-S keeps DeiT's default --epochs 300 (the paper gives no ViT-S length either).
"""

import importlib.util
import os


def get_config():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "finetune_imagenet_vit_base.py")
    spec = importlib.util.spec_from_file_location("finetune_imagenet_vit_base", path)
    base = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(base)
    return base.recipe("vit_small", epochs=300, drop_path_rate=0.1)
