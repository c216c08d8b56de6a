"""The stability command (configs/stability_fashion_mnist.py): the dip measure, and a tiny pair of runs that writes
the plot and the table."""

import os

import pytest

from conftest import needs_fmnist
from tf_mocov3.evaluation import stability


def test_largest_dip_is_the_largest_fall_below_the_running_best():
    curve = [(0, 50.0), (10, 60.0), (20, 52.0), (30, 65.0), (40, 58.0), (50, 66.0)]
    assert stability.largest_dip(curve) == (8.0, 20)
    assert stability.largest_dip([(0, 1.0), (1, 2.0), (2, 3.0)]) == (0.0, None)
    assert stability.largest_dip([]) == (0.0, None)


def test_refuses_a_config_without_the_knn_monitor(tiny_config, tmp_path):
    config, _ = tiny_config(tmp_path)
    with pytest.raises(ValueError, match=r"The stability run needs the kNN monitor: set config.knn.enabled=True"):
        stability.run_stability(config, str(tmp_path / "out"))


@needs_fmnist
def test_two_tiny_runs_write_the_plot_and_one_row_each(tiny_config, tmp_path):
    config, _ = tiny_config(tmp_path)
    config.max_steps = 2
    config.checkpoint_every_steps = 2
    config.knn.enabled = True
    config.knn.every_steps = 1
    config.knn.train_fraction = 0.01
    config.knn.max_eval_examples = 100
    config.knn.k = 10
    config.knn.eval_split = "test"
    lines = []
    out = stability.run_stability(config, str(tmp_path / "out"), print_fn=lines.append)
    assert os.path.getsize(out["plot"]) > 10_000
    assert [row["run"] for row in out["rows"]] == [label for label, _, _ in stability.RUNS]
    for label, curves in out["curves"].items():
        assert [step for step, _ in curves["knn_top1"]] == [0, 1, 2], label  # before training, then every step
        assert len(curves["grad_norm_first_block"]) == 2 and len(curves["grad_norm_last_block"]) == 2
    # The trained run's patch projection moved, the frozen one's did not (the only difference between the runs).
    import numpy as np  # pylint: disable=import-outside-toplevel

    from tf_mocov3.weights import pretrained  # pylint: disable=import-outside-toplevel
    kernels = {name: pretrained.load_backbone(str(tmp_path / "out" / name)).get_layer("patch_embed").kernel.numpy()
               for _, name, _ in stability.RUNS}
    assert not np.array_equal(kernels["random_patch"], kernels["trained_patch"])
    assert any("largest dip" in line for line in lines)
