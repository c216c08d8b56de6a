r"""The paper's stability finding (Figures 4-5) in miniature, on Fashion-MNIST on a CPU: random frozen vs trained
patch projection at a high learning rate.

  python -m tf_mocov3.stability --config=configs/stability_fashion_mnist.py --workdir=/tmp/stability

Runs the short MoCo v3 pre-training below twice from the same seed (same initial weights, same batches): once with
the random frozen patch projection (config.model.train_patch_embed=False, the paper's trick) and once with a trained
one (True). The kNN monitor (bank of 1,200 training images, 1,000 test images, k 20) runs before the first step and
every 10 steps; the first- and last-block gradient norms are logged every 2 steps. The command writes
WORKDIR/stability.png (both kNN curves and both runs' gradient-norm curves, log scale) and WORKDIR/stability.json,
and prints each run's final and best kNN top-1 and its largest dip (the largest fall below the best so far).

The paper (ViT-B, batch 4096, ImageNet) sees dips in the kNN curve with a trained patch projection at a large
learning rate, preceded by gradient-norm spikes in the first block that reach the last block later; a random frozen
projection removes most of them. This run is 1/1000 of that setting; BUILD_NOTES.md reports what it showed.
Settings: vit_micro with 2 blocks of width 64 at 28 px (7 x 7 patches of 4 x 4), batch 128, 200 steps, AdamW base
lr 5e-3 (lr = 2.5e-3, 3.3x the demo's), 20 warmup steps, wd 0.05, cosine momentum from 0.99.
"""

from tf_mocov3 import config_lib


def get_config():
    config = config_lib.base_config()
    config.seed = 0
    config.batch_size = 128
    config.max_steps = 200
    config.strategy = "one_device"
    config.jit_compile = "true"
    config.log_every_steps = 2                 # gradient norms every 2 steps
    config.checkpoint_every_steps = 200

    config.model.arch = "vit_micro"
    config.model.overrides.embed_dim = 64
    config.model.overrides.depth = 2
    config.model.overrides.num_heads = 4
    config.model.moco_dim = 64
    config.model.mlp_dim = 256
    config.model.train_patch_embed = False    # the command runs both False and True

    config.optim.base_lr = 5e-3               # high on purpose: the regime where the paper sees instability
    config.optim.weight_decay = 0.05
    config.optim.warmup_epochs = 20 * 128 / 60000   # 20 steps

    config.knn.enabled = True
    config.knn.every_steps = 10
    config.knn.eval_split = "test"
    config.knn.train_fraction = 0.02          # 1,200 training images
    config.knn.max_eval_examples = 1000
    config.knn.k = 20
    config.knn.dip_margin = 5.0

    config.dataset.name = "fashion_mnist_idx"
    config.dataset.path = "/usr/share/datasets/fashion-mnist"
    config.dataset.image_size = 28
    config.dataset.crop_min = 0.2
    return config
