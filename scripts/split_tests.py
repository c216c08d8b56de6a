"""Prints the test files of one half (argument 0 or 1) of the suite, halves balanced by cost (scripts/test.sh).

COST: rough seconds per file, estimated from a full run's --durations on the 2-core development machine; a file not
listed counts DEFAULT_COST. The split is greedy: the most expensive file first, each into the lighter half.
"""

import glob
import os
import sys

DEFAULT_COST = 10
COST = {
    "test_training.py": 150, "test_knn.py": 130, "test_precision.py": 100, "test_resnet.py": 100,
    "test_methods.py": 190, "test_export.py": 80, "test_finetune.py": 95, "test_prepared_data.py": 45,
    "test_stability.py": 35, "test_finetune_deit.py": 40, "test_convert_official.py": 40, "test_moco.py": 45,
    "test_ablations.py": 40, "test_linear_probe.py": 60, "test_export_client.py": 30, "test_cli.py": 30,
    "test_demo.py": 20, "test_checkpoint_compat.py": 25, "test_data.py": 25, "test_augment.py": 20,
    "test_tfds_transfer.py": 60, "test_streamed_data.py": 45, "test_order.py": 25,
}


def halves(paths):
    parts, loads = ([], []), [0, 0]
    for path in sorted(paths, key=lambda p: (-COST.get(os.path.basename(p), DEFAULT_COST), p)):
        light = 0 if loads[0] <= loads[1] else 1
        parts[light].append(path)
        loads[light] += COST.get(os.path.basename(path), DEFAULT_COST)
    return parts


if __name__ == "__main__":
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = sorted(os.path.relpath(p, root) for p in glob.glob(os.path.join(root, "tests", "test_*.py")))
    print(" ".join(halves(files)[int(sys.argv[1])]))
