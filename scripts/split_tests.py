"""Prints the test files of one half (argument 0 or 1) of the suite, halves balanced by cost (scripts/test.sh);
with the argument `roundoff`, the half (0 or 1) that also runs the second round-off pass.

COST: rough seconds per file, estimated from a full run's --durations on the 2-core development machine; a file not
listed counts DEFAULT_COST. ROUNDOFF_PASS_COST: the tests marked `roundoff` run again under TF_ENABLE_ONEDNN_OPTS=0
(TensorFlow's own kernels instead of oneDNN's), about this long. The split is greedy: the most expensive item first,
each into the lighter half.
"""

import glob
import os
import sys

DEFAULT_COST = 10
ROUNDOFF_PASS = "roundoff pass"
ROUNDOFF_PASS_COST = 200
COST = {
    "test_training.py": 150, "test_knn.py": 130, "test_precision.py": 100, "test_resnet.py": 100,
    "test_methods.py": 190, "test_export.py": 80, "test_finetune.py": 95, "test_prepared_data.py": 45,
    "test_stability.py": 35, "test_finetune_deit.py": 40, "test_convert_official.py": 40, "test_moco.py": 45,
    "test_ablations.py": 40, "test_linear_probe.py": 60, "test_export_client.py": 30, "test_cli.py": 30,
    "test_demo.py": 20, "test_checkpoint_compat.py": 25, "test_data.py": 25, "test_augment.py": 20,
    "test_tfds_transfer.py": 60, "test_streamed_data.py": 45, "test_order.py": 25, "test_cloud_paths.py": 45,
    "test_preemption.py": 60, "test_data_service.py": 35, "test_skipped_records.py": 20,
    "test_backbones.py": 10, "test_package.py": 5, "test_loop.py": 2, "test_config_lib.py": 1,
    ROUNDOFF_PASS: ROUNDOFF_PASS_COST,
}


def halves(items):
    parts, loads = ([], []), [0, 0]
    for item in sorted(items, key=lambda p: (-COST.get(os.path.basename(p), DEFAULT_COST), p)):
        light = 0 if loads[0] <= loads[1] else 1
        parts[light].append(item)
        loads[light] += COST.get(os.path.basename(item), DEFAULT_COST)
    return parts


if __name__ == "__main__":
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = sorted(os.path.relpath(p, root) for p in glob.glob(os.path.join(root, "tests", "test_*.py")))
    parts = halves(files + [ROUNDOFF_PASS])
    if sys.argv[1] == "roundoff":
        print(0 if ROUNDOFF_PASS in parts[0] else 1)
    else:
        print(" ".join(p for p in parts[int(sys.argv[1])] if p != ROUNDOFF_PASS))
