"""Command: python -m tf_mocov3.demo_eval (see tf_mocov3/evaluation/demo.py)."""

import runpy

if __name__ == "__main__":
    runpy.run_module("tf_mocov3.evaluation.demo", run_name="__main__", alter_sys=True)
