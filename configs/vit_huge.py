r"""MoCo v3 ViT-H/14 as in the paper (Table 1: 78.1% linear probe), on a Cloud TPU.

  python -m tf_mocov3.train --config=configs/vit_huge.py --workdir=gs://BUCKET/mocov3_vit_huge \
      --tpu=local --config.dataset.data_dir=gs://BUCKET/tfds

The ViT-S/B recipe with the 32-block, 1280-wide backbone and 14x14 patches, in bfloat16. The paper's TPU v3 cost:
9.8 hours per 100 epochs on 512 cores.
"""

from tf_mocov3 import config_lib


def get_config():
    config = config_lib.base_config()
    config.model.arch = "vit_huge"
    config.mixed_precision = "mixed_bfloat16"
    return config
