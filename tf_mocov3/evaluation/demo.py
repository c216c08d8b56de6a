r"""The demo's evaluation report: what the pre-trained backbone learned, next to two baselines.

  python -m tf_mocov3.demo_eval --workdir=runs/demo

After `python -m tf_mocov3.train --config=configs/demo.py --workdir=runs/demo`, on the Fashion-MNIST test split:
  * weighted kNN (k=200, T=0.07) of the pre-trained backbone's [CLS] features, memory bank from the train split;
  * a linear probe of the same features (cached, no augmentation; lr swept, chosen on a holdout of the bank);
  * the raw-pixel kNN baseline (flattened eval-preprocessed, normalised pixels);
  * the same kNN and probe for a randomly initialised backbone of the same architecture.
The sizes keep the report to a minute or two for the demo model on 2 CPU cores: TRAIN_EXAMPLES (5000) training
images (a seeded subset; 10% of them held out to choose the probe's lr) and TEST_EXAMPLES (5000) test images
(a seeded subset; `--test_examples=0` for all 10000).
Writes WORKDIR/metrics.json (key "demo_eval") and WORKDIR/demo_eval.png.
"""

import os
import time

import keras
import numpy as np

from tf_mocov3 import config_lib
from tf_mocov3.data import order
from tf_mocov3.data import pipelines
from tf_mocov3.data import sources
from tf_mocov3.evaluation import features as features_lib
from tf_mocov3.evaluation import knn
from tf_mocov3.models import backbones
from tf_mocov3.models import vit
from tf_mocov3.training import linear_probe
from tf_mocov3.training import reports
from tf_mocov3.weights import pretrained

REPORT_NAME = "demo_eval"
# Sizes: the demo backbone embeds ~150-400 images/s on 2 busy CPU cores, and each of the two backbones embeds
# TRAIN_EXAMPLES + TEST_EXAMPLES images; 5000 + 5000 keeps the report near a minute or two.
TRAIN_EXAMPLES = 5000       # memory bank and probe training set (seeded subset of the train split)
TEST_EXAMPLES = 5000        # seeded subset of the test split (0 = all 10000)
HOLDOUT_FRACTION = 0.1      # of the TRAIN_EXAMPLES, to choose the probe's lr
PROBE_BASE_LRS = (0.1, 0.3, 1.0, 3.0)
PROBE_BATCH = 256
PROBE_EPOCHS = 20


def _random_backbone(config, image_size):
    keras.utils.set_random_seed(int(config.seed) + 1)
    overrides = vit.config_overrides(config.model)
    return backbones.build_backbone(config.model.arch, image_size,
                                    train_patch_embed=bool(config.model.train_patch_embed),
                                    name="random_backbone", **overrides)


def _evaluate_features(name, train, test, num_classes, *, k, temperature, seed, epochs, print_fn):
    """kNN + cached-feature probe of one backbone's features."""
    t0 = time.perf_counter()
    knn_acc = knn.knn_top1(train[0], train[1], test[0], test[1], num_classes, k=k, temperature=temperature)
    train_idx, hold_idx = order.holdout_split(len(train[1]), holdout_fraction=HOLDOUT_FRACTION, seed=seed)
    probe = linear_probe.probe_on_features(
        (train[0][train_idx], train[1][train_idx]), (train[0][hold_idx], train[1][hold_idx]), test, num_classes,
        base_lrs=PROBE_BASE_LRS, batch_size=PROBE_BATCH, epochs=epochs, seed=seed)
    print_fn(f"  {name}: kNN {knn_acc:.2f}%, linear {probe['top1']:.2f}% (lr {probe['lr']:g}) "
             f"[{time.perf_counter() - t0:.1f}s]")
    lr = probe["lr"]
    curve = probe["curves"].get(f"holdout top-1, lr {lr:g}", [])
    return knn_acc, probe, curve


def evaluate_demo(workdir, config=None, *, train_examples=TRAIN_EXAMPLES, test_examples=TEST_EXAMPLES,
                  probe_epochs=PROBE_EPOCHS, print_fn=None):
    """Runs the four evaluations (module docstring) on the latest checkpoint of `workdir`; returns the metrics.

    Args:
      workdir: a pre-training workdir (configs/demo.py or any labelled data set).
      config: its pre-training ConfigDict; None reads WORKDIR/config.json (either completed: config_lib.complete).
      train_examples: memory-bank / probe size; test_examples: 0 = the whole test split.

    Returns:
      dict: knn_top1, linear_top1, linear_lr, pixel_knn_top1, random_knn_top1, random_linear_top1,
      random_linear_lr, train_examples, test_examples, step, seconds, table (rows of the printed table).
    """
    say = print_fn or (lambda line: print(line, flush=True))
    t0 = time.perf_counter()
    resolved = pretrained.resolve(workdir)  # reads WORKDIR/config.json through tf.io.gfile
    config = resolved.config if config is None else config_lib.complete(config, "pretrain")
    step = int(resolved.prefix.rsplit("-", 1)[-1])
    image_size = int(config.dataset.image_size)
    backbone = pretrained.load_backbone(workdir)
    k, temperature = int(config.knn.k), float(config.knn.temperature)
    seed = int(config.seed)
    say(f"Demo evaluation of {workdir} (step {step}) on {config.dataset.name}: bank/probe {train_examples} train "
        f"images, {'all' if not test_examples else test_examples} test images, kNN k={k} T={temperature}.")

    splits = {split: sources.open_labelled(config.dataset, split) for split in ("train", "test")}
    subsets = {split: order.subset_indices(splits[split].num_examples, seed=seed, max_examples=count or None)
               for split, count in (("train", train_examples), ("test", test_examples))}

    def extract(model, split, _count):
        return features_lib.features_of_source(model, splits[split], image_size=image_size, indices=subsets[split],
                                               title=f"features of {split}")

    train_f = extract(backbone, "train", train_examples)
    test_f = extract(backbone, "test", test_examples)
    num_classes = int(max(train_f[1].max(), test_f[1].max()) + 1)
    num_classes = max(num_classes, splits["test"].num_classes)
    knn_acc, probe, curve = _evaluate_features("pre-trained", train_f, test_f, num_classes, k=k,
                                               temperature=temperature, seed=seed,
                                               epochs=probe_epochs, print_fn=say)

    random = _random_backbone(config, image_size)
    rtrain_f = extract(random, "train", train_examples)
    rtest_f = extract(random, "test", test_examples)
    rknn_acc, rprobe, rcurve = _evaluate_features("random init", rtrain_f, rtest_f, num_classes, k=k,
                                                  temperature=temperature, seed=seed,
                                                  epochs=probe_epochs, print_fn=say)

    pixels = []
    for split in ("train", "test"):
        images, labels = [], []
        for x, y in pipelines.eval_dataset(splits[split], image_size, 1000, subsets[split]).as_numpy_iterator():
            images.append(x.reshape(len(x), -1))
            labels.append(y)
        pixels.append((np.concatenate(images), np.concatenate(labels)))
    pixel_acc = knn.knn_top1(pixels[0][0], pixels[0][1], pixels[1][0], pixels[1][1], num_classes, k=k,
                             temperature=temperature)
    say(f"  raw pixels: kNN {pixel_acc:.2f}%")

    table = [
        {"features": f"MoCo v3 {config.model.arch} (step {step})", "knn_top1": knn_acc,
         "linear_top1": probe["top1"], "linear_lr": probe["lr"]},
        {"features": f"random {config.model.arch}", "knn_top1": rknn_acc, "linear_top1": rprobe["top1"],
         "linear_lr": rprobe["lr"]},
        {"features": f"raw pixels ({image_size}x{image_size}x3)", "knn_top1": pixel_acc},
    ]
    metrics = {"knn_top1": knn_acc, "linear_top1": probe["top1"], "linear_lr": probe["lr"],
               "pixel_knn_top1": pixel_acc, "random_knn_top1": rknn_acc, "random_linear_top1": rprobe["top1"],
               "random_linear_lr": rprobe["lr"], "train_examples": int(len(train_f[1])),
               "test_examples": int(len(test_f[1])), "holdout_fraction": HOLDOUT_FRACTION,
               "probe_epochs": probe_epochs, "probe_base_lrs": list(PROBE_BASE_LRS), "k": k,
               "temperature": temperature, "step": step, "linear_table": probe["table"],
               "random_linear_table": rprobe["table"]}
    metrics["seconds"] = time.perf_counter() - t0
    curves = {f"pre-trained: holdout top-1 (lr {probe['lr']:g})": curve,
              f"random init: holdout top-1 (lr {rprobe['lr']:g})": rcurve}
    summary = reports.write_report(workdir, name=REPORT_NAME, metrics={REPORT_NAME: metrics}, curves=curves,
                                   table=table)
    say(summary)
    say(f"Demo evaluation took {metrics['seconds']:.0f}s; written to {os.path.join(workdir, 'metrics.json')} "
        f"and {os.path.join(workdir, REPORT_NAME + '.png')}.")
    metrics["table"] = table
    return metrics

