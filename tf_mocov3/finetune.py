"""Command: python -m tf_mocov3.finetune (see tf_mocov3/evaluation/finetune.py)."""

import runpy

if __name__ == "__main__":
    runpy.run_module("tf_mocov3.evaluation.finetune", run_name="__main__", alter_sys=True)
