r"""SimCLR with a ViT-B/16 (paper Table 4 and Fig. 6): the MoCo v3 recipe with config.method="simclr".

  python -m tf_mocov3.train --config=configs/simclr_vit_base.py --workdir=/tmp/simclr_vit_base \
      --config.dataset.data_dir=/path/to/tensorflow_datasets

What the method changes (models/moco.METHODS): no momentum encoder, no predictor; the loss is NT-Xent over the 2N
views of the global batch (2N - 2 negatives per anchor, projections gathered from every replica, tau below). The
backbone, the 3-layer projector with BN, the data, AdamW and the schedule are those of MoCo v3.

Settings: batch 4096, AdamW base lr 2e-4 (lr = base_lr * batch / 256), wd 0.1 (the paper's Fig. 6 settings),
300 epochs with 40 of warmup, random frozen patch projection. The paper gives no SimCLR temperature: tau = 0.1 is
the SimCLR paper's ImageNet value (its range is 0.1-0.2).

The paper's numbers (linear top-1 on ImageNet; SPEC.md "Other frameworks"):
  Table 4, ViT-B/16 300 ep: SimCLR 73.9 (MoCo v3 76.5); ViT-S/16 300 ep: 69.0 (72.5) with
      --config.model.arch=vit_small. The 300-epoch runs swept lr and wd; these are the Fig. 6 values.
  Fig. 6, ViT-B/16 100 ep: the random patch projection is +0.8 over a learned one:
      --config.epochs=100                                   (random frozen patch projection)
      --config.epochs=100 --config.model.train_patch_embed=True   (learned patch projection)
"""

from tf_mocov3 import config_lib


def get_config():
    config = config_lib.base_config()
    config.method = "simclr"
    config.model.arch = "vit_base"
    config.model.temperature = 0.1     # SimCLR paper (ImageNet); the MoCo v3 paper gives none
    config.optim.base_lr = 2e-4
    config.optim.weight_decay = 0.1
    return config
