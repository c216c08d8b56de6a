"""Wrote tests/data/before_layout/{pretrain,finetune}: tiny workdirs made by the code BEFORE the layout change.

Run from a checkout of commit 9be4d01 (the last one with the flat tf_mocov3/ modules) as
`python make_fixture.py OUT`; it imports that code's module names, so it does not run against today's tree.
tests/test_checkpoint_compat.py restores what it wrote.
"""
import os, sys, json, shutil
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
sys.path.insert(0, os.getcwd())
import keras
from tf_mocov3 import config_lib, training, finetune, linear_probe
out = sys.argv[1]
shutil.rmtree(out, ignore_errors=True)

class StopAt(keras.callbacks.Callback):
    def __init__(self, step): super().__init__(); self.step = step
    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) >= self.step: self.model.stop_training = True

def pre_config():
    c = config_lib.base_config()
    c.batch_size = 8; c.max_steps = 4; c.jit_compile = "false"; c.log_every_steps = 1; c.checkpoint_every_steps = 2
    c.keep_checkpoints = 1; c.strategy = "one_device"
    c.model.arch = "vit_micro"; c.model.overrides.embed_dim = 16; c.model.overrides.depth = 1
    c.model.overrides.num_heads = 2; c.model.mlp_dim = 16; c.model.moco_dim = 8
    c.optim.base_lr = 1.5e-3; c.optim.warmup_epochs = 0.0
    c.dataset.name = "fashion_mnist_idx"; c.dataset.path = "/usr/share/datasets/fashion-mnist"
    c.dataset.image_size = 16; c.dataset.crop_min = 0.2
    return c
pre = os.path.join(out, "pretrain")
training.run_pretraining(pre_config(), pre, extra_callbacks=[StopAt(2)], print_fn=lambda s: None)

c = finetune.base_config()
c.batch_size = 8; c.max_steps = 4; c.image_size = 16; c.strategy = "one_device"; c.jit_compile = "false"
c.log_every_steps = 1; c.checkpoint_every_steps = 2; c.keep_checkpoints = 1
c.model.arch = "vit_micro"; c.optim.warmup_epochs = 0
c.dataset.name = "fashion_mnist_idx"; c.dataset.path = "/usr/share/datasets/fashion-mnist"
c.dataset.train_split = "train"; c.dataset.eval_split = "test"; c.eval.max_examples = 16; c.eval.batch_size = 8
finetune.run_finetune(c, os.path.join(out, "finetune"), pre, extra_callbacks=[StopAt(2)], print_fn=lambda s: None)
for d in ("pretrain", "finetune"):
    for junk in ("tensorboard", "pretrain.png", "finetune.png"):
        p = os.path.join(out, d, junk)
        shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else (os.path.exists(p) and os.remove(p))
print(os.popen(f"du -a {out}").read())
