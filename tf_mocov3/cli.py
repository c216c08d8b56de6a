"""What every `python -m tf_mocov3.<command>` shares: its common flags, their effect on the config, its errors.

A command module defines its flags at import and runs one library function:

    from tf_mocov3 import cli

    cli.define_flags(config="Config file (configs/*.py).", workdir="Where the run writes.",
                     required=("config", "workdir"))

    def main(argv):
        from tf_mocov3.training import pretrain   # TensorFlow is imported only once the flags are good
        pretrain.run_pretraining(cli.configure(cli.FLAGS.config), cli.FLAGS.workdir)

    if __name__ == "__main__":
        cli.run(main)

`run` gives every command the same behaviour: `--help` prints the command's docstring and flags and exits 0
without importing TensorFlow; a flag that is missing or wrong, and any user error the library raises (a bad
config, a missing path, a diverged run, a failed checkpoint write), is one line `error: ...` on stderr and exit
status 1; a bug still shows its traceback. A run stopped by SIGTERM (preemption; training/trainer.py) prints one line
`Preempted by SIGTERM at step N; saved CHECKPOINT, ...` on stderr and exits with PREEMPTED_EXIT_CODE, 143: a
scheduler should run the same command again, which resumes from that checkpoint. Before `main` runs,
`quiet_tensorflow` imports TensorFlow without its start-up noise.

This module imports no TensorFlow and nothing of the library at import time (only config_lib for the names).
"""

import contextlib
import os
import re
import sys
import traceback
import warnings

from absl import app
from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

from tf_mocov3 import config_lib

FLAGS = flags.FLAGS
STRATEGIES = config_lib.STRATEGIES  # training/distribute.py builds these (distribute.STRATEGIES is this tuple)
HELP_FLAGS = ("--help", "-help", "--helpshort", "-?", "-h", "--helpfull")
# The exit status of a run stopped by SIGTERM after saving its checkpoint: 128 + SIGTERM, what a shell reports for a
# process that SIGTERM ended and what TensorFlow's PreemptionCheckpointHandler exits with on GCE, so that a scheduler's
# rule to rerun a preempted job covers it.
PREEMPTED_EXIT_CODE = 143

# Flags defined through this module are reported (in --help) as the command module's own.
flags.disclaim_key_flags()

_required = []


def define_flags(*, config=None, workdir=None, pretrained=None, strategy=None, tpu=None, required=(),
                 flag_values=FLAGS):
    """Defines the shared flags a command uses; each argument that is given is that flag's help text.

    Args:
      config: --config, a config file (configs/*.py) whose keys the command line overrides (--config.KEY=VALUE).
      workdir: --workdir, the directory the command writes.
      pretrained: --pretrained, a pre-training workdir, checkpoint prefix or converted official directory.
      strategy: --strategy, one of STRATEGIES (config_lib.STRATEGIES = distribute.STRATEGIES).
      tpu: --tpu, a Cloud TPU name ('local' on a TPU VM).
      required: names of flags (shared or the command's own) that must be given; a missing one is an error line.
      flag_values: the FlagValues to define them in (tests use their own).
    """
    if config is not None:
        config_flags.DEFINE_config_file("config", None, config, flag_values=flag_values, lock_config=True)
    if workdir is not None:
        flags.DEFINE_string("workdir", None, workdir, flag_values=flag_values)
    if pretrained is not None:
        flags.DEFINE_string("pretrained", None, pretrained, flag_values=flag_values)
    if strategy is not None:
        flags.DEFINE_enum("strategy", None, list(STRATEGIES), strategy, flag_values=flag_values)
    if tpu is not None:
        flags.DEFINE_string("tpu", "", tpu, flag_values=flag_values)
    _required.extend(name for name in required if name not in _required)


def _value(name, flag_values):
    return flag_values[name].value if name in flag_values else None


def configure(config, flag_values=FLAGS):
    """Applies --strategy, --tpu and --pretrained (those the command defines) to `config`; returns `config`.

    --strategy sets config.strategy; --tpu alone implies config.strategy = "tpu"; --pretrained sets
    config.pretrained where the config has that key (pre-training; the evaluation commands take the path as an
    argument instead).
    """
    strategy, tpu, pretrained = (_value(name, flag_values) for name in ("strategy", "tpu", "pretrained"))
    with config.unlocked():
        if strategy:
            config.strategy = strategy
        elif tpu:
            config.strategy = "tpu"
        if pretrained is not None and "pretrained" in config:
            config.pretrained = pretrained
    return config


# === Errors ===


def one_line(err):
    """The message of `err` on one line (a multi-line message is joined with spaces)."""
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return text or type(err).__name__


def fail(message):
    """Prints `error: message` on stderr and exits with status 1."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _raised_here(err):
    """Whether `err` was raised by the project's own code (the innermost frame is a file of tf_mocov3/)."""
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(_PACKAGE_DIR + os.sep)


def is_user_error(err, extra=()):
    """Whether `err` is a problem the user can fix from the message alone (then no traceback is shown).

    The project's ValueError subclasses (config_lib.ConfigError, FinetuneError, ProbeError, ConversionError) and the
    plain ValueErrors its code raises on purpose (weights/pretrained.py's and data/'s one-sentence errors), OSError
    (a path that does not exist or cannot be written, a failed checkpoint write: checkpointing.CheckpointWriteError),
    TrainingDiverged and the classes in `extra`. A ValueError raised inside Keras, TensorFlow or NumPy is a bug here
    and keeps its traceback.
    """
    if isinstance(err, (OSError,) + tuple(extra)):
        return True
    if isinstance(err, ValueError):
        return type(err).__module__.startswith("tf_mocov3.") or _raised_here(err)
    trainer = sys.modules.get("tf_mocov3.training.trainer")  # loaded by then if training ran at all
    return trainer is not None and isinstance(err, trainer.TrainingDiverged)


# The sentence an input pipeline's in-graph check raises for a damaged data file (data/sources.py: a TFRecord shard
# with fewer records than its metadata lists); TensorFlow wraps it in an InvalidArgumentError with the graph's trace.
_DATA_FAULT = re.compile(r"\[(TFRecord file .*? \(a truncated or damaged copy\): .*?\.)\]", re.S)


def data_fault(err):
    """The one-sentence message of a data file found damaged inside an input pipeline (None for other errors)."""
    found = _DATA_FAULT.search(str(err)) if type(err).__name__ == "InvalidArgumentError" else None
    return one_line(found.group(1)) if found else None


def _is_preempted(err):
    trainer = sys.modules.get("tf_mocov3.training.trainer")
    return trainer is not None and isinstance(err, trainer.Preempted)


def _parse_flags(argv):
    """absl's parser with one error line (exit status 1) for a bad, unknown or missing flag or a stray argument."""
    try:
        rest = FLAGS(argv)
    except flags.Error as err:
        fail(f"{one_line(err).rstrip('.')}; see --help for the flags.")
    except (AttributeError, KeyError) as err:
        if not _from_config_override(err):
            raise
        key = re.search(r"'([^'\\]+)", str(err))
        guess = re.search(r'Did you mean "([^"]+)"', str(err))
        fail(f"a --config.KEY=VALUE override names the key {key.group(1) if key else str(err)!r}, which the config "
             f"does not have{f' (did you mean {guess.group(1)!r}?)' if guess else ''}; fix its spelling (the config "
             f"file lists the keys).")
    missing = [f"--{name}" for name in _required if FLAGS[name].value in (None, "")]
    if missing:
        fail(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required; add "
             f"{' '.join(m + '=...' for m in missing)} to the command line (--help lists the flags).")
    if len(rest) > 1:
        fail(f"unexpected arguments {' '.join(rest[1:])!r}; flags are written --name=value (--help lists them).")
    return rest


def _from_config_override(err):
    """Whether `err` is ml_collections' complaint about a --config.KEY override naming a key the config lacks."""
    frames = traceback.extract_tb(err.__traceback__)
    return any(os.path.join("config_flags", "config_path.py") in frame.filename for frame in frames)


def _print_help(argv):
    app.usage(shorthelp="--helpfull" not in argv, writeto_stdout=True)
    sys.exit(0)


def run(main, *, errors=()):
    """Runs `main(argv)` as the command: parses the flags, quiets TensorFlow, turns user errors into one line.

    Args:
      main: the command's main(argv); argv holds only the program name (stray arguments are an error).
      errors: more exception classes to report as one line (e.g. the converter's missing-PyTorch ImportError).
    """
    if any(arg in HELP_FLAGS for arg in sys.argv[1:]):
        _print_help(sys.argv[1:])

    def guarded(argv):
        if not FLAGS["verbosity"].present:  # absl turns INFO on after parsing; the user can still pass -v 0
            absl_logging.set_verbosity(absl_logging.WARNING)
        quiet_tensorflow()
        try:
            return main(argv)
        except Exception as err:  # pylint: disable=broad-except
            if data_fault(err):
                fail(data_fault(err))
            if _is_preempted(err):
                print(one_line(err), file=sys.stderr, flush=True)
                sys.exit(PREEMPTED_EXIT_CODE)
            if not is_user_error(err, errors):
                raise
            fail(one_line(err))

    app.run(guarded, flags_parser=_parse_flags)


# === A quiet console ===

# What TensorFlow prints on a machine without a GPU driver, at `import tensorflow` (the CUDA runtime stub, linked
# into libtensorflow_framework.so.2 and the profiler plugin, each log once through absl's C++ logging before
# absl::InitializeLog runs, so that TF_CPP_MIN_LOG_LEVEL cannot filter them) and at the first device listing
# (the CUDA platform's cuInit; an ERROR line, so level 2 keeps it).
_STARTUP_NOISE = (
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"),
    re.compile(r"^I\d{4} [\d:.]+ +\d+ cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine, "
               r"GPU will not be used\.$"),
)
# cuInit failing is an error where a GPU driver exists; it is dropped only after the stub said there is none.
_NO_DRIVER_CUINIT = re.compile(r"^E\d{4} [\d:.]+ +\d+ cuda_platform\.cc:\d+\] failed call to cuInit: ")
# Keras warns on every fit(tf.data.Dataset) with the default shuffle=True; our datasets are ordered on purpose.
_KERAS_SHUFFLE = r"`shuffle=True` was passed, but will be ignored since the data `x` was provided as a tf\.data"


def drop_startup_noise(text):
    """`text` (captured stderr) without TensorFlow's start-up lines for a machine without a GPU driver."""
    lines = text.splitlines(keepends=True)
    no_driver = any(_STARTUP_NOISE[1].match(line.rstrip("\n")) for line in lines)
    kept = [line for line in lines
            if not any(p.match(line.rstrip("\n")) for p in _STARTUP_NOISE)
            and not (no_driver and _NO_DRIVER_CUINIT.match(line))]
    return "".join(kept)


@contextlib.contextmanager
def _filtered_stderr():
    """Captures file descriptor 2 (C++ logs included) for the block, then writes back all but the start-up noise."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a replaced sys.stderr (a notebook, pytest's capture): leave it
        yield
        return
    import tempfile  # pylint: disable=import-outside-toplevel
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            capture.seek(0)
            kept = drop_startup_noise(capture.read().decode("utf-8", errors="replace"))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def quiet_tensorflow():
    """Imports TensorFlow without its start-up noise; leaves errors and the project's own warnings alone.

    * TF_CPP_MIN_LOG_LEVEL defaults to 2 (C++ INFO and WARNING lines off, errors on) when the user has not set it;
    * the CUDA stub's "Could not find cuda drivers" lines (and the cuInit error that follows on a machine without
      a driver) are dropped from stderr while TensorFlow loads and lists its devices; anything else printed then
      is passed on;
    * Keras' "`shuffle=True` was passed, but will be ignored" warning for tf.data input is filtered.
    absl's Python INFO lines (the checkpoint saver's "Sharding callback duration") are turned off by `run`, which
    sets absl's verbosity to WARNING unless --verbosity is given. Idempotent; returns the tensorflow module.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    warnings.filterwarnings("ignore", message=_KERAS_SHUFFLE, category=UserWarning)
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    with _filtered_stderr():
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        tf.config.list_physical_devices()  # runs cuInit now, inside the filter; the runtime is not started yet
    return tf
