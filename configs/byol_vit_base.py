r"""BYOL with a ViT-B/16 (paper Table 4 and Fig. 6): the MoCo v3 recipe with config.method="byol".

  python -m tf_mocov3.train --config=configs/byol_vit_base.py --workdir=/tmp/byol_vit_base \
      --config.dataset.data_dir=/path/to/tensorflow_datasets

What the method changes (models/moco.METHODS): the momentum encoder and the predictor stay, the heads have BN on
their hidden layers only, none on an output layer (paper appendix A; config.model.head_bn "auto" = "hidden" for
BYOL), and the loss is 2 - 2 cos(q, k') symmetrized over the two views, without negatives.

Settings: batch 4096, AdamW base lr 1e-4 (lr = base_lr * batch / 256), wd 0.03 (the paper's Fig. 6 settings),
300 epochs with 40 of warmup, random frozen patch projection. The paper gives no BYOL momentum: m = 0.996 rising to
1 with a half cosine is the BYOL paper's.

The paper's numbers (linear top-1 on ImageNet; SPEC.md "Other frameworks"):
  Table 4, ViT-B/16 300 ep: BYOL 73.9 (MoCo v3 76.5); ViT-S/16 300 ep: 71.0 (72.5) with
      --config.model.arch=vit_small. The 300-epoch runs swept lr and wd; these are the Fig. 6 values.
  Fig. 6, ViT-B/16 100 ep: the random patch projection is +1.3 over a learned one:
      --config.epochs=100                                   (random frozen patch projection)
      --config.epochs=100 --config.model.train_patch_embed=True   (learned patch projection)
"""

from tf_mocov3 import config_lib


def get_config():
    config = config_lib.base_config()
    config.method = "byol"
    config.model.arch = "vit_base"
    config.model.head_bn = "auto"      # BYOL's heads: BN on hidden layers only (models/moco.head_settings)
    config.model.momentum = 0.996      # BYOL paper; cosine to 1
    config.model.momentum_cosine = True
    config.optim.base_lr = 1e-4
    config.optim.weight_decay = 0.03
    return config
