"""Command: python -m tf_mocov3.convert_official (see tf_mocov3/weights/convert_official.py)."""

import runpy

if __name__ == "__main__":
    runpy.run_module("tf_mocov3.weights.convert_official", run_name="__main__", alter_sys=True)
