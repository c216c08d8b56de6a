r"""MoCo v3 ViT-L/16 as in the paper (Table 1: 77.6% linear probe), on a Cloud TPU.

  python -m tf_mocov3.train --config=configs/vit_large.py --workdir=gs://BUCKET/mocov3_vit_large \
      --tpu=local --config.mixed_precision=mixed_bfloat16 --config.dataset.data_dir=gs://BUCKET/tfds

The ViT-S/B recipe (batch 4096, AdamW, base lr 1.5e-4, wd 0.1, 300 epochs, 40 warmup, tau 0.2, cosine momentum from
0.99) with the 24-block, 1024-wide backbone. The paper's TPU v3 cost: 6.1 hours per 100 epochs on 256 cores.
"""

from tf_mocov3 import config_lib


def get_config():
    config = config_lib.base_config()
    config.model.arch = "vit_large"
    config.mixed_precision = "mixed_bfloat16"
    return config
