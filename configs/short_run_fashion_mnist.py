r"""The test suite's short Fashion-MNIST runs: a few hundred steps of each method on a tiny ViT, kNN before and after.

  python -m tf_mocov3.train --config=configs/short_run_fashion_mnist.py:mocov3 --workdir=/tmp/short_mocov3
  (simclr or byol after the colon; mocov3 without one)

`tests/test_methods.py::test_short_fashion_mnist_run_improves_knn_over_random_init` runs these and asserts that the
kNN top-1 of the backbone rises over its random initialisation; `benchmarks/knn_gain_spread.py` measures that gain
over seeds and CPU kernel settings (BUILD_NOTES.md, "Round-off across CPUs"), which is where the thresholds come from.

ViT 32 wide, 2 blocks, 4 x 4 patches of 16 px images, heads 256 -> 64, batch 64, AdamW base lr 1e-2 (lr 2.5e-3)
without warmup, cosine momentum from 0.9 (0.99 barely moves the key encoder in a short run). kNN (k 20) on a
6,000-image bank (10% of the training split) and all 10,000 test images: on the same weights a 1,200 / 1,000 measure
differs from this one by up to 3-5 points, more than the effect it would have to resolve.
MoCo v3 runs 250 steps (in 120 one seed of four gained 0.3 points), SimCLR 120; BYOL 1,000 steps at crop_min 0.35
(its target network starts as a copy of the online one and its kNN curve starts later: BUILD_NOTES.md, issue 12).
"""

import importlib.util
import os

_METHODS = {"mocov3": dict(steps=250, crop_min=0.2), "simclr": dict(steps=120, crop_min=0.2),
            "byol": dict(steps=1000, crop_min=0.35)}


def _demo():
    spec = importlib.util.spec_from_file_location("demo", os.path.join(os.path.dirname(__file__), "demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config(method="mocov3"):
    method = method or "mocov3"
    if method not in _METHODS:
        raise ValueError(f"configs/short_run_fashion_mnist.py:{method}: choose one of {', '.join(_METHODS)}.")
    run = _METHODS[method]
    config = _demo()
    config.method = method
    config.batch_size = 64
    config.max_steps = run["steps"]
    config.jit_compile = "false"
    config.log_every_steps = 20
    config.checkpoint_every_steps = run["steps"]
    config.demo_eval = False

    config.model.overrides.embed_dim = 32
    config.model.overrides.depth = 2
    config.model.overrides.num_heads = 2
    config.model.overrides.patch_size = 4
    config.model.mlp_dim = 256
    config.model.moco_dim = 64
    config.model.momentum = 0.9

    config.optim.base_lr = 1e-2
    config.optim.warmup_epochs = 0.0

    config.dataset.image_size = 16
    config.dataset.crop_min = run["crop_min"]

    config.knn.enabled = True
    config.knn.every_steps = run["steps"]
    config.knn.train_fraction = 0.1       # a 6,000-image bank
    config.knn.max_eval_examples = 0      # all 10,000 test images
    config.knn.k = 20
    return config
