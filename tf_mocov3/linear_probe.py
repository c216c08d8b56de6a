"""Command: python -m tf_mocov3.linear_probe (see tf_mocov3/evaluation/linear_probe.py)."""

import runpy

if __name__ == "__main__":
    runpy.run_module("tf_mocov3.evaluation.linear_probe", run_name="__main__", alter_sys=True)
