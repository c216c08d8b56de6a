"""The backbone contract (tests/backbone_contract.py) over every arch of the registry, tf_mocov3.models.backbones.

Every arch's full-size parameter count is checked. Each small model is built once (the module-scoped `small`
fixture) and runs the other checks; archs whose small models are the same model share it (test ids name them all,
e.g. vit_base+vit_small). An arch added to the registry runs them all without a line here, once
backbone_contract.FEATURE_WIDTH names its width.
"""

import numpy as np
import pytest

import backbone_contract as contract
from tf_mocov3.models import backbones

# The counts this project recorded before the contract (SPEC.md: ResNet-50 without fc; ViT-S/B from the formula):
# the published figures (contract.PUBLISHED) must land on them too.
RECORDED_PARAMETERS = {"vit_small": 21_590_016, "vit_base": 85_647_360, "resnet50": 23_508_032}


GROUPS = contract.small_model_groups()


@pytest.fixture(scope="module", params=GROUPS, ids=["+".join(group) for group in GROUPS])
def small(request):
    """(the group's first arch, its small float32 model): contract.build_small, seed 0."""
    return request.param[0], contract.build_small(request.param[0])


def test_every_registered_arch_has_a_reference_width_and_a_small_model():
    assert sorted(contract.FEATURE_WIDTH) == sorted(backbones.ARCHS)
    assert sorted(arch for group in GROUPS for arch in group) == sorted(backbones.ARCHS)
    assert ["vit_base", "vit_small"] in GROUPS and ["vit_conv_base", "vit_conv_small"] in GROUPS
    assert set(contract.PUBLISHED) <= set(backbones.ARCHS)
    assert backbones.feature_dim("resnet50") == 2048 and backbones.feature_dim("resnet_tiny") == 512


def test_build(small):
    contract.check_build(*small)


@pytest.mark.parametrize("arch", backbones.ARCHS)
def test_parameter_count(arch):
    counts = contract.check_parameter_count(arch)
    if arch in RECORDED_PARAMETERS:
        assert counts["params"] == RECORDED_PARAMETERS[arch]
    if arch == "resnet50":
        assert counts["moving"] == contract.RESNET50_MOVING_STATISTICS == 53_120


def test_keras_file_round_trip(small, tmp_path):
    arch, model = small
    loaded = contract.check_keras_file(model, str(tmp_path / f"{arch}.keras"))
    if arch == "vit_micro":  # the per-block stochastic-depth rates come back (0 in block_0 up to 0.1 in block_3)
        rates = [loaded.get_layer(f"block_{i}").drop_path_rate for i in range(4)]
        np.testing.assert_allclose(rates, np.linspace(0.0, 0.1, 4))
        assert not loaded.get_layer("patch_embed").trainable


def test_checkpoint_round_trip(small, tmp_path):
    arch, model = small
    contract.check_checkpoint(model, contract.build_small(arch, seed=1), str(tmp_path / "ckpt"))


def test_mixed_precision(small):
    contract.check_mixed_precision(*small)
