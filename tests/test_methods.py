"""SimCLR and BYOL beside MoCo v3 (config.method): losses against numpy, the parts each method builds, one step on
2 replicas equal to one replica, and a short Fashion-MNIST run of each method that beats its random initialisation."""

import keras
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from conftest import needs_fmnist
from conftest import tiny_model_config
import roundoff
from tf_mocov3 import config_lib
from tf_mocov3.models import losses
from tf_mocov3.models import moco
from tf_mocov3.training import distribute
from tf_mocov3.training import optim

IMAGE = 16
BATCH = 8
EQUALITY_EPS = 1e-3  # as tests/test_moco.py: a gradient's round-off moves Adam's step by at most lr / eps times it


def _np_normalize(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def np_nt_xent(z1, z2, tau):
    """SimCLR's NT-Xent written from its paper: mean over the 2N anchors of -log softmax of the positive among the
    2N - 1 other views."""
    z = _np_normalize(np.concatenate([z1, z2], 0).astype(np.float64))
    n = len(z1)
    sim = z @ z.T / tau
    total = 0.0
    for a in range(2 * n):
        positive = (a + n) % (2 * n)
        others = [b for b in range(2 * n) if b != a]
        logits = sim[a, others]
        total += -(sim[a, positive] - (np.log(np.sum(np.exp(logits - logits.max()))) + logits.max()))
    return total / (2 * n)


def np_byol(q1, q2, k1, k2):
    cos = lambda a, b: np.sum(_np_normalize(a.astype(np.float64)) * _np_normalize(b.astype(np.float64)), -1)
    return np.mean(2 - 2 * cos(q1, k2)) + np.mean(2 - 2 * cos(q2, k1))


def _fixed_batch(n=6, c=5, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n, c)).astype(np.float32) for _ in range(4)]


def test_nt_xent_equals_the_numpy_reference_on_one_and_on_two_replicas():
    z1, z2, _, _ = _fixed_batch()
    expected = np_nt_xent(z1, z2, 0.1)
    assert float(losses.nt_xent_loss(z1, z2, z1, z2, 0.1)) == pytest.approx(expected, rel=1e-5)
    # Two replicas of 3 rows each, all views gathered: the mean of the local losses is the global loss.
    local = [float(losses.nt_xent_loss(z1[r * 3:(r + 1) * 3], z2[r * 3:(r + 1) * 3], z1, z2, 0.1, r))
             for r in range(2)]
    assert np.mean(local) == pytest.approx(expected, rel=1e-5)
    assert expected > 1.0


def test_nt_xent_has_2n_minus_2_negatives():
    # Identical views and orthogonal samples: every anchor's positive has similarity 1, its 2N - 2 negatives 0 and
    # itself is excluded, so the loss is log(e^(1/tau) + (2N - 2)) - 1/tau exactly.
    n, tau = 4, 0.5
    z = np.eye(n, dtype=np.float32)
    expected = np.log(np.exp(1 / tau) + 2 * n - 2) - 1 / tau
    assert float(losses.nt_xent_loss(z, z, z, z, tau)) == pytest.approx(expected, rel=1e-6)


def test_byol_loss_equals_the_numpy_reference():
    q1, q2, k1, k2 = _fixed_batch(seed=1)
    assert float(losses.byol_loss(q1, q2, k1, k2)) == pytest.approx(np_byol(q1, q2, k1, k2), rel=1e-6)
    # Queries parallel to the other view's keys: loss 0.
    assert float(losses.byol_loss(2 * k2, 3 * k1, k1, k2)) == pytest.approx(0.0, abs=1e-6)


def build(method, epsilon=EQUALITY_EPS, model_config=None):
    keras.utils.set_random_seed(0)
    model = moco.build_moco(model_config or tiny_model_config(), image_size=IMAGE, total_steps=10, method=method)
    c = ml_collections.ConfigDict(dict(name="adamw", base_lr=1e-2, weight_decay=0.1, warmup_epochs=0, beta_1=0.9,
                                       beta_2=0.999, epsilon=epsilon, decay_convention="lr_scaled",
                                       decay_exclude="none"))
    model.compile(optimizer=optim.build_optimizer(c, global_batch=BATCH, steps_per_epoch=5, total_steps=10),
                  jit_compile=False)
    model.optimizer.build(model.trainable_variables)
    return model


def batch(seed=3):
    x = np.random.default_rng(seed).normal(size=(2, BATCH, IMAGE, IMAGE, 3)).astype(np.float32)
    return x[0], x[1]


def _fit_one(model, dataset):
    logged = []
    cb = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: logged.append(
        {k: float(v) for k, v in logs.items()}))
    model.fit(dataset, epochs=1, steps_per_epoch=1, verbose=0, callbacks=[cb])
    return logged[0], [v.numpy() for v in model.weights]


def test_method_parts():
    simclr = build("simclr")
    assert simclr.momentum_backbone is None and simclr.momentum_projector is None and simclr.predictor is None
    byol = build("byol")
    assert byol.momentum_backbone is not None and byol.predictor is not None
    for head in (byol.projector, byol.predictor, byol.momentum_projector):
        names = [layer.name for layer in head.layers]
        last = max(int(n.split("_")[1]) for n in names if n.startswith("linear_"))
        bns = [n for n in names if n.startswith("bn_")]
        assert bns and f"bn_{last}" not in bns, (head.name, names)  # BN on hidden layers only (appendix A)
    mocov3 = build("mocov3")
    assert "bn_2" in [layer.name for layer in mocov3.projector.layers]
    assert "bn_1" in [layer.name for layer in mocov3.predictor.layers]


@pytest.mark.roundoff
@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_one_step_logs_the_method_loss_and_two_replicas_equal_one(method):
    x1, x2 = batch()
    data = tf.data.Dataset.from_tensors((x1, x2))
    # By hand, on a twin (its BN moving statistics move): the method's loss of the queries (and, for BYOL, of the
    # momentum encoder's keys, which at step 1 equal the online encoder's whatever m is).
    twin = build(method)
    q1, q2 = twin.queries(x1, x2, training=True)
    if method == "simclr":
        expected = np_nt_xent(q1.numpy(), q2.numpy(), 0.2)
    else:
        k1, k2 = twin.keys(x1, x2)
        expected = np_byol(q1.numpy(), q2.numpy(), k1.numpy(), k2.numpy())
    one_logs, one_w = _fit_one(build(method), data)
    assert one_logs["loss"] == pytest.approx(expected, rel=1e-4)
    two = distribute.mirrored_strategy(["/cpu:0", "/cpu:1"])
    with two.scope():
        model = build(method)
    two_logs, two_w = _fit_one(model, two.experimental_distribute_dataset(data))  # 2 x 4 rows, in order
    assert two_logs["loss"] == pytest.approx(one_logs["loss"], abs=1e-5)
    for key in ("grad_norm_first_block", "grad_norm_last_block"):
        assert two_logs[key] == pytest.approx(one_logs[key], rel=1e-4)
    assert len(one_w) == len(two_w) == len(model.weights)
    # Weights to 1e-5, except the entries whose gradient is zero by construction (the qkv key bias; the final norm's
    # beta before the projector's BN), which Adam moves by up to +-lr on round-off alone: tests/roundoff.py.
    roundoff.assert_runs_agree(dict(enumerate(one_w)), dict(enumerate(two_w)), dict(enumerate(model.weights)),
                               model=model, lrs=roundoff.learning_rates(model, 1),
                               what=f"{method}: one step, 2 replicas vs 1")


def test_config_validation_names_a_bad_method():
    config = config_lib.base_config()
    config.method = "swav"
    with pytest.raises(config_lib.ConfigError, match=r"config.method='swav' is unknown; choose one of "
                                                     r"mocov3, simclr, byol\."):
        config_lib.validate(config)


def test_byol_recipe_heads_and_momentum():
    import importlib.util  # pylint: disable=import-outside-toplevel
    import os  # pylint: disable=import-outside-toplevel

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    recipes = {}
    for name in ("byol_vit_base", "simclr_vit_base"):
        spec = importlib.util.spec_from_file_location(name, os.path.join(root, "configs", f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        recipes[name] = module.get_config()
        config_lib.validate(recipes[name])
    byol, simclr = recipes["byol_vit_base"], recipes["simclr_vit_base"]
    # Paper Fig. 6 settings (SPEC.md): BYOL lr 1e-4 wd 0.03, SimCLR lr 2e-4 wd 0.1; ViT-B/16, batch 4096.
    assert (byol.method, byol.optim.base_lr, byol.optim.weight_decay) == ("byol", 1e-4, 0.03)
    assert (simclr.method, simclr.optim.base_lr, simclr.optim.weight_decay) == ("simclr", 2e-4, 0.1)
    for c in (byol, simclr):
        assert (c.model.arch, c.batch_size) == ("vit_base", 4096)
    assert (byol.model.momentum, byol.model.momentum_cosine) == (0.996, True)
    assert moco.resolved_head_bn(byol.model, "byol") == "hidden"
    assert not moco.resolved_predictor(simclr.model, "simclr")


# === A short run of each method learns something ===
# configs/short_run_fashion_mnist.py: a tiny ViT on Fashion-MNIST, MoCo v3 250 steps, SimCLR 120, BYOL 1,000, kNN on
# a 6,000-image bank and all 10,000 test images. benchmarks/knn_gain_spread.py measured these runs' gain over the
# random initialisation on seeds 0-3 with oneDNN's default and AVX-capped kernels (BUILD_NOTES.md, "Round-off across
# CPUs"): MoCo v3 +5.2 to +9.2 (seed 0, the test's: +9.2 / +8.6), SimCLR +7.6 to +10.4 (seed 0: +10.3 / +10.4);
# BYOL (seed 0) +13.2, on seeds 1-3 and 6 +3.5 to +7.0 (issue 12). Other kernels moved a gain by up to 1 point,
# another seed by up to 4: each threshold sits at least 2 points below the smallest gain measured for its method.
# Not marked roundoff (a second pass would cost minutes): the benchmark is that check.
GAIN = {"mocov3": 3.0, "simclr": 3.0, "byol": 1.5}


class _KNNAtStart(keras.callbacks.Callback):
    """Evaluates the kNN monitor on the randomly initialised backbone before the first step."""

    def __init__(self, monitor):
        super().__init__()
        self.monitor = monitor
        self.at_start = None

    def on_train_begin(self, logs=None):
        self.at_start = self.monitor.evaluate(self.model.backbone)


@needs_fmnist
@pytest.mark.parametrize("method", ["mocov3", "simclr", "byol"])
def test_short_fashion_mnist_run_improves_knn_over_random_init(method, tmp_path):
    import importlib.util  # pylint: disable=import-outside-toplevel
    import os  # pylint: disable=import-outside-toplevel

    from tf_mocov3.evaluation import knn  # pylint: disable=import-outside-toplevel
    from tf_mocov3.training import pretrain  # pylint: disable=import-outside-toplevel

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("short", os.path.join(root, "configs", "short_run_fashion_mnist.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(method)
    made = {}

    def make_callbacks(cfg, trainer):
        monitors = knn.monitor_callbacks(cfg, trainer)
        made["start"] = _KNNAtStart(monitors[0])
        return [made["start"], *monitors]

    result = pretrain.run_pretraining(config, str(tmp_path / "run"), make_callbacks=make_callbacks,
                                      print_fn=lambda line: None)
    start = made["start"].at_start
    end = result["callbacks"][1].history[-1][1]
    print(f"{method}: kNN {start:.2f} at random init, {end:.2f} after {config.max_steps} steps")
    assert result["step"] == config.max_steps
    assert end > start + GAIN[method], (method, start, end)
