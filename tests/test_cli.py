"""The commands' shared command line (tf_mocov3/cli.py): help without TensorFlow, one error line, a quiet console.

Most checks run `python -m tf_mocov3.<command>` with a `tensorflow` (and `keras`) package on PYTHONPATH that raises
when imported, so they prove that the step under test does not import TensorFlow, and cost well under a second.
"""

import os
import re
import subprocess
import sys
import textwrap

from absl import flags
import pytest

from tf_mocov3 import cli
from tf_mocov3.training import distribute

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ("train", "finetune", "linear_probe", "knn", "convert_official", "demo_eval", "stability")
DEMO_CONFIG = os.path.join(ROOT, "configs", "demo.py")


@pytest.fixture(scope="module")
def no_tensorflow(tmp_path_factory):
    """A PYTHONPATH entry whose `tensorflow` and `keras` raise on import."""
    path = tmp_path_factory.mktemp("no_tf")
    for name in ("tensorflow", "keras"):
        os.makedirs(path / name)
        (path / name / "__init__.py").write_text(f"raise ImportError('{name} was imported')\n")
    return str(path)


def _command(name, *args, pythonpath=None, env=None, timeout=120):
    env = dict(os.environ, **(env or {}))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, ROOT) if p)
    return subprocess.run([sys.executable, "-m", f"tf_mocov3.{name}", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _one_error_line(proc):
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("name", COMMANDS)
def test_help_exits_0_without_importing_tensorflow(name, no_tensorflow):
    proc = _command(name, "--help", pythonpath=no_tensorflow)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"python -m tf_mocov3.{name}" in proc.stdout  # the docstring's command line
    assert "was imported" not in proc.stderr


def test_strategy_choices_are_distribute_strategies(no_tensorflow):
    assert cli.STRATEGIES == distribute.STRATEGIES
    for name in ("train", "finetune"):
        proc = _command(name, "--help", pythonpath=no_tensorflow)
        choices = re.search(r"--strategy: <([^>]*)>", proc.stdout).group(1)
        assert tuple(choices.split("|")) == distribute.STRATEGIES


@pytest.mark.parametrize("name,args,missing", [
    ("train", [f"--config={DEMO_CONFIG}"], "--workdir"),
    ("knn", [], "--pretrained"),
    ("linear_probe", ["--workdir=/tmp/x"], "--config and --pretrained"),
    ("convert_official", ["--output=/tmp/x"], "--input"),
    ("demo_eval", [], "--workdir"),
    ("stability", [f"--config={os.path.join(ROOT, 'configs', 'stability_fashion_mnist.py')}"], "--workdir"),
])
def test_missing_flag_is_one_error_line(name, args, missing, no_tensorflow):
    line = _one_error_line(_command(name, *args, pythonpath=no_tensorflow))
    assert line.startswith(f"error: {missing} ") and "required" in line, line


def test_bad_config_key_is_one_error_line(tmp_path, no_tensorflow):
    proc = _command("train", f"--config={DEMO_CONFIG}", f"--workdir={tmp_path}", "--config.batch_sie=8",
                    pythonpath=no_tensorflow)
    line = _one_error_line(proc)
    assert "'batch_sie'" in line and "'batch_size'" in line, line
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("args,expected", [
    (["--strategy=one_gpu"], "value should be one of <auto|one_device|mirrored|multi_worker|tpu>"),
    (["--config.batch_size=eight"], "--config.batch_size=eight"),
    (["--wrokdir=/tmp/x"], "Unknown command line flag 'wrokdir'"),
    (["stray"], "unexpected arguments 'stray'"),
])
def test_bad_flags_are_one_error_line(args, expected, tmp_path, no_tensorflow):
    line = _one_error_line(_command("train", f"--config={DEMO_CONFIG}", f"--workdir={tmp_path}", *args,
                                    pythonpath=no_tensorflow))
    assert expected in line, line


def test_configure_applies_strategy_tpu_and_pretrained():
    import ml_collections  # pylint: disable=import-outside-toplevel

    def configured(*args, **defined):
        flag_values = flags.FlagValues()
        cli.define_flags(flag_values=flag_values, **defined)
        flag_values(["prog", *args])
        config = ml_collections.ConfigDict({"strategy": "auto", "pretrained": ""})
        config.lock()
        return cli.configure(config, flag_values)

    everything = dict(pretrained="p", strategy="s", tpu="t")
    assert configured("--tpu=local", **everything).strategy == "tpu"
    assert configured("--tpu=local", "--strategy=mirrored", **everything).strategy == "mirrored"
    assert configured("--pretrained=/w", **everything).pretrained == "/w"
    assert configured(**everything).to_dict() == {"strategy": "auto", "pretrained": ""}
    assert configured(workdir="w").to_dict() == {"strategy": "auto", "pretrained": ""}


def test_drop_startup_noise_keeps_errors():
    stub = ("I0000 00:00:1795976833.418937    6747 cudart_stub.cc:31] Could not find cuda drivers on your machine, "
            "GPU will not be used.\n")
    cuinit = ("E0000 00:00:1795976837.305057    6747 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA "
              "error: Failed call to cuInit: UNKNOWN ERROR (303)\n")
    before = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    real = "E0000 00:00:1795976837.305057    6747 some_kernel.cc:1] a real error\n"
    assert cli.drop_startup_noise(before + stub + before + stub + real + cuinit) == real
    # With a driver installed (no stub line) a failing cuInit is a real error and stays.
    assert cli.drop_startup_noise(cuinit + real) == cuinit + real


QUIET_COMMAND = textwrap.dedent("""
    import logging
    import warnings

    from absl import flags
    from absl import logging as absl_logging

    from tf_mocov3 import cli

    flags.DEFINE_string("mode", "user", "user | bug")


    def main(argv):
        import tensorflow as tf
        print("tf", int(tf.constant(2).numpy()), flush=True)
        absl_logging.info("an absl INFO line")
        logging.getLogger("tf_mocov3.data.sources").warning("Skipping bad image x.png: not an image.")
        warnings.warn("`shuffle=True` was passed, but will be ignored since the data `x` was provided as a "
                      "tf.data.Dataset. The Dataset is expected to already be shuffled (via `.shuffle(buffer_size)`).")
        warnings.warn("a warning of our own")
        if cli.FLAGS.mode == "user":  # a plain ValueError that the project raises on purpose
            from tf_mocov3.weights import pretrained
            pretrained.resolve("/nowhere")
        import numpy as np
        np.reshape(np.zeros(3), (2, 2))  # a ValueError raised inside NumPy: a bug, so a traceback


    if __name__ == "__main__":
        cli.run(main)
""")


def test_console_is_quiet_and_errors_are_one_line_or_a_traceback(tmp_path):
    """One command that imports TensorFlow (two subprocesses, ~5 s each on 2 cores)."""
    script = tmp_path / "quiet_command.py"
    script.write_text(QUIET_COMMAND)
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = ROOT
    run = lambda *args: subprocess.run([sys.executable, str(script), *args], cwd=ROOT, env=env,  # noqa: E731
                                       capture_output=True, text=True, timeout=300)
    user = run("--mode=user")
    assert user.stdout == "tf 2\n"
    for noise in ("cudart_stub", "cuInit", "absl::InitializeLog", "shuffle=True", "an absl INFO line", "Traceback"):
        assert noise not in user.stderr, user.stderr
    assert "Skipping bad image x.png" in user.stderr and "a warning of our own" in user.stderr
    errors = [line for line in user.stderr.splitlines() if line.startswith("error: ")]
    assert user.returncode == 1 and len(errors) == 1 and errors[0].startswith(
        "error: Pretrained path /nowhere does not exist; pass a pre-training workdir"), user.stderr

    bug = run("--mode=bug")
    assert bug.returncode == 1 and "Traceback" in bug.stderr and "ValueError: cannot reshape" in bug.stderr
    assert "error: " not in bug.stderr
