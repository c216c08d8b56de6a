"""Command: python -m tf_mocov3.knn (see tf_mocov3/evaluation/knn.py)."""

import runpy

if __name__ == "__main__":
    runpy.run_module("tf_mocov3.evaluation.knn", run_name="__main__", alter_sys=True)
