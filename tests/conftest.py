"""Test set-up shared by every test: two logical CPU devices (for the replica tests), quiet TensorFlow.

`tf_mocov3` and `export` come from the package that scripts/setup.sh installs editable (`python -m pytest` from the
root finds the same folders first through the current directory). The helpers here and in this folder (roundoff.py,
finetune_helpers.py, ...) are imported by their bare names (`from conftest import ...`), as pytest puts this folder
on sys.path (its default "prepend" import mode, tests/ having no __init__.py). Test data writers shared with the
benchmarks are in tf_mocov3/testing/fixtures_data.py.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import ml_collections  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
if tf.config.get_logical_device_configuration(_cpu) is None:
    tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import importlib.util  # noqa: E402
import shutil  # noqa: E402
import textwrap  # noqa: E402

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "roundoff: the result depends on float round-off (an equality of two runs within a tolerance, a "
                   "threshold on a short run); scripts/test.sh runs these again on other kernels "
                   "(TF_ENABLE_ONEDNN_OPTS=0 ONEDNN_MAX_CPU_ISA=AVX), as another CPU would (tests/roundoff.py)")
FMNIST = "/usr/share/datasets/fashion-mnist"
needs_fmnist = pytest.mark.skipif(not os.path.exists(os.path.join(FMNIST, "train-images-idx3-ubyte.gz")),
                                  reason="scripts/setup.sh installs dataset-fashion-mnist")

TINY_CONFIG = textwrap.dedent("""
    import importlib.util, os
    _spec = importlib.util.spec_from_file_location("demo", os.path.join({root!r}, "configs", "demo.py"))
    _demo = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(_demo)

    def get_config():
        c = _demo.get_config()
        c.batch_size = 8
        c.max_steps = 4
        c.jit_compile = "false"
        c.log_every_steps = 1
        c.checkpoint_every_steps = 2
        c.model.overrides.embed_dim = 32
        c.model.overrides.depth = 2
        c.model.overrides.num_heads = 2
        c.model.mlp_dim = 32
        c.model.moco_dim = 16
        c.dataset.image_size = 16
        c.knn.enabled = False
        c.demo_eval = False
        return c
""")


class StopAt(keras.callbacks.Callback):
    """Stops fit() once the optimizer has made `step` updates (the first half of a resume test)."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) >= self.step:
            self.model.stop_training = True


def tiny_model_config(arch="vit_micro"):
    """config.model of a tiny MoCo v3 (2 blocks of width 32 for vit_micro, 1 for another ViT arch), for model tests
    that build `moco.build_moco` directly; the keys not set here take base_config's (config_lib.complete)."""
    from tf_mocov3 import config_lib  # pylint: disable=import-outside-toplevel

    c = ml_collections.ConfigDict()
    c.arch = arch
    c.overrides = ({"embed_dim": 32, "depth": 2, "num_heads": 2} if arch == "vit_micro"
                   else {"depth": 1, "embed_dim": 32, "num_heads": 2})
    c.train_patch_embed = False
    c.moco_dim = 16
    c.mlp_dim = 32
    c.temperature = 0.2
    c.momentum = 0.99
    c.momentum_cosine = True
    c.monitor_grad_norms = True
    return config_lib.complete(c, part="model")


def checkpoint_tensors(workdir):
    """Every tensor of the latest checkpoint in WORKDIR/checkpoints, by key: the model, the optimizer (Keras 3 keeps
    the trainable weights under optimizer/_trainable_variables), the data position and the save counter."""
    reader = tf.train.load_checkpoint(os.path.join(workdir, "checkpoints"))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map() if k != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def make_tiny_config(tmp_path):
    """The tiny MoCo v3 pre-training config (configs/demo.py, 32 wide, 2 blocks, 16 px, 4 steps of 8).

    Writes it as a config file into tmp_path (for the command line) and returns (config, path of that file).
    """
    path = tmp_path / "tiny_config.py"
    path.write_text(TINY_CONFIG.format(root=ROOT))
    spec = importlib.util.spec_from_file_location("tiny_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(), str(path)


@pytest.fixture(scope="session")
def tiny_config():
    """make_tiny_config: call it with a folder, get (config, config file path)."""
    return make_tiny_config


@pytest.fixture(scope="session")
def pretrained_run(tmp_path_factory):
    """ONE tiny pre-training run for the whole session: (workdir, config, run_pretraining's result).

    For tests that need "some pre-trained workdir" of the tiny config (4 steps on Fashion-MNIST, checkpoints at
    steps 2 and 4). Treat it as read-only; a test that writes into a workdir takes `pretrained_workdir`.
    """
    if not os.path.exists(os.path.join(FMNIST, "train-images-idx3-ubyte.gz")):
        pytest.skip("scripts/setup.sh installs dataset-fashion-mnist")
    from tf_mocov3.training import pretrain  # pylint: disable=import-outside-toplevel

    tmp = tmp_path_factory.mktemp("pretrained_run")
    config, _ = make_tiny_config(tmp)
    workdir = str(tmp / "run")
    result = pretrain.run_pretraining(config, workdir, print_fn=lambda line: None)
    return workdir, config, result


@pytest.fixture
def pretrained_workdir(pretrained_run, tmp_path):
    """A private copy of the session's pre-trained workdir, free to write into (reports, metrics.json)."""
    workdir = str(tmp_path / "pretrained_run")
    shutil.copytree(pretrained_run[0], workdir)
    return workdir
