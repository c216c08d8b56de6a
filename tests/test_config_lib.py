"""config_lib.complete: every key of a config, a partial one or an old config.json record, from the one set of
defaults (and what runs recorded before a key existed ran with)."""

import glob
import importlib.util
import json
import os

import ml_collections
import pytest

from conftest import ROOT
from tf_mocov3 import config_lib

OLD_PRETRAIN = os.path.join(ROOT, "tests", "data", "before_layout", "pretrain", "config.json")


def keys(tree, prefix=""):
    """The dotted keys of the leaves of a nested dict."""
    out = set()
    for key, value in tree.items():
        out |= keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
    return out


def leaf(tree, dotted):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def test_an_old_record_reads_with_every_key_and_keeps_what_it_recorded():
    with open(OLD_PRETRAIN) as f:
        record = json.load(f)
    completed = config_lib.as_record(config_lib.complete(record))
    default = config_lib.as_record(config_lib.base_config())
    missing = keys(default) - keys(record)
    # The fixture predates the methods, the ablation switches and the queue bank: those keys are filled.
    assert {"method", "model.pos_embed", "model.pooling", "model.head_bn", "model.predictor", "knn.bank",
            "steps_per_execution"} <= missing
    assert keys(completed) == keys(default) | keys(record)
    assert all(leaf(completed, key) == leaf(default, key) for key in missing)
    assert all(leaf(completed, key) == leaf(record, key) for key in keys(record))
    assert (completed["model"]["arch"], completed["method"], completed["model"]["pooling"]) == (
        "vit_micro", "mocov3", "cls")


def test_what_an_old_run_ran_with_wins_over_a_changed_default(monkeypatch):
    today = config_lib.as_record(config_lib.base_config())

    def changed():
        c = ml_collections.ConfigDict(today)
        c.model.pooling = "gap"  # a default that a later version might choose
        return c

    monkeypatch.setattr(config_lib, "base_config", changed)
    old = config_lib.as_record(config_lib.complete({"model": {"arch": "vit_small"}}))
    assert (old["model"]["pooling"], old["model"]["pos_embed"], old["method"]) == ("cls", "sincos", "mocov3")
    assert config_lib.complete({"model": {"pooling": "gap_ln"}}).model.pooling == "gap_ln"  # recorded: kept
    assert config_lib.defaults("pretrain").model.pooling == "gap"


def test_complete_copies_fills_parts_and_knows_the_kind():
    config = config_lib.base_config()
    config.knn = ml_collections.ConfigDict({"enabled": True})   # a test's few keys
    config.source = "official:x.pth"                            # a key no default has (convert_official's)
    config.lock()
    completed = config_lib.complete(config)
    assert (completed.knn.enabled, completed.knn.k, completed.knn.eval_split) == (True, 200, "validation")
    assert completed.source == "official:x.pth" and completed.is_locked
    assert "k" not in config.knn                                # the argument is left as it was
    dataset = config_lib.complete({"name": "image_folder", "path": "/d"}, part="dataset")
    expected = config_lib.base_config().dataset
    expected.update(name="image_folder", path="/d")
    assert dataset == expected
    assert [config_lib.kind_of(config_lib.defaults(kind)) for kind in config_lib.KINDS] == list(config_lib.KINDS)
    with pytest.raises(ValueError, match=r"kind='eval' is unknown; choose one of pretrain, finetune, probe\."):
        config_lib.complete({}, "eval")


def test_a_probe_record_from_before_bn_before_head_resumes_as_off(tmp_path):
    record = config_lib.as_record(config_lib.probe_config())
    del record["model"]["bn_before_head"]
    (tmp_path / "config.json").write_text(json.dumps(record))
    current = config_lib.probe_config()
    config_lib.check_resume_compatible(str(tmp_path), current, ["model.bn_before_head"], kind="probe")
    current.model.bn_before_head = True
    with pytest.raises(config_lib.ConfigError, match=r"holds a probe with config.model.bn_before_head=False, not True"):
        config_lib.check_resume_compatible(str(tmp_path), current, ["model.bn_before_head"], kind="probe")


def test_every_recipe_has_every_key_of_its_kind():
    for path in sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))):
        spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config()
        assert config_lib.complete(config) == config, path
