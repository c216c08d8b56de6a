"""A multi-host TPU slice started a process per host (the JAX / PyTorch-XLA way) stops at start: TensorFlow drives a
slice from one client on worker 0 (training/distribute.check_tpu_launch)."""

import pytest

from tf_mocov3.training import distribute

SLICE = {"TPU_WORKER_HOSTNAMES": "t1v-n-0,t1v-n-1,t1v-n-2,t1v-n-3"}


def test_local_tpu_on_one_host_of_a_slice_is_refused(monkeypatch):
    for name, value in {**SLICE, "TPU_WORKER_ID": "0"}.items():
        monkeypatch.setenv(name, value)
    # make_strategy checks before it touches a TPU, so this runs on a machine without one
    with pytest.raises(ValueError, match=r"^--tpu=local drives only this VM's chips, but this VM is one of the 4 "
                                         r"hosts of a pod slice \(TPU_WORKER_HOSTNAMES\): .* run the command once, on "
                                         r"worker 0, with TPU_LOAD_LIBRARY=0 and --tpu=SLICE_NAME"):
        distribute.make_strategy("tpu", tpu="local")


def test_a_second_host_of_a_slice_is_told_to_stop():
    with pytest.raises(ValueError, match=r"^This VM is worker 2 of a 4-host pod slice, .* run it once on worker 0"):
        distribute.check_tpu_launch("my-slice", {**SLICE, "TPU_WORKER_ID": "2"})


@pytest.mark.parametrize("tpu, env", [
    ("my-slice", {**SLICE, "TPU_WORKER_ID": "0"}),          # the one client, on worker 0, naming the slice
    ("local", {"TPU_WORKER_HOSTNAMES": "t1v-n-0", "TPU_WORKER_ID": "0"}),  # a one-host TPU VM
    ("local", {}),                                           # nothing exported: TensorFlow's own checks apply
])
def test_the_right_starts_pass(tpu, env):
    assert distribute.check_tpu_launch(tpu, env) is None
