"""The demo report after a tiny pre-training: kNN, probe, raw-pixel kNN, random-backbone baselines."""

import json
import os

from PIL import Image
import pytest

from conftest import needs_fmnist
from tf_mocov3.evaluation import demo as demo_eval


@needs_fmnist
def test_evaluate_demo_reports_all_numbers(pretrained_run, pretrained_workdir):
    _, config, _ = pretrained_run  # the session's tiny 4-step run; the demo writes into a private copy of it
    workdir = pretrained_workdir
    lines = []
    result = demo_eval.evaluate_demo(workdir, config, train_examples=600, test_examples=300, probe_epochs=5,
                                     print_fn=lines.append)
    for key in ("knn_top1", "linear_top1", "pixel_knn_top1", "random_knn_top1", "random_linear_top1"):
        assert 10.0 < result[key] <= 100.0, (key, result[key])  # above chance (10 classes)
    assert result["train_examples"] == 600 and result["test_examples"] == 300 and result["step"] == 4
    assert result["linear_lr"] in [lr * demo_eval.PROBE_BATCH / 256 for lr in demo_eval.PROBE_BASE_LRS]
    saved = json.loads(open(os.path.join(workdir, "metrics.json")).read())["demo_eval"]
    assert saved["knn_top1"] == pytest.approx(result["knn_top1"])
    assert saved["random_linear_top1"] == pytest.approx(result["random_linear_top1"])
    with Image.open(os.path.join(workdir, "demo_eval.png")) as image:
        assert image.format == "PNG"
    text = "\n".join(lines)
    assert "raw pixels" in text and "random vit_micro" in text and "knn_top1" in text
