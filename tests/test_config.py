"""Config validation: unknown keys and wrong types name the key; overrides parse."""

from __future__ import annotations

import pytest

from marl_two_tower.config import (
    ConfigError,
    apply_overrides,
    config_from_dict,
    load_config,
    parse_override,
    with_overrides,
)


def test_defaults_and_nested_override():
    cfg = load_config(None, ["train.lr=1e-3", "model.normalize=false", "eval.ks=[1,2]"])
    assert cfg.train.lr == 0.001 and cfg.model.normalize is False and cfg.eval.ks == [1, 2]
    assert cfg.train.epochs == 20


def test_unknown_key_names_the_key():
    with pytest.raises(ConfigError, match="unknown key 'train.lrr'"):
        config_from_dict({"train": {"lrr": 1}})


@pytest.mark.parametrize("key,value,msg", [
    ("train.epochs", "ten", "train.epochs: expected int"),
    ("train.lr", "fast", "train.lr: expected float"),
    ("model.normalize", 1, "model.normalize: expected bool"),
    ("data.tail_by", "users", "data.tail_by: expected one of"),
    ("eval.ks", 10, "eval.ks: expected a list"),
])
def test_wrong_type_names_the_key(key, value, msg):
    section, name = key.split(".")
    with pytest.raises(ConfigError, match=msg):
        config_from_dict({section: {name: value}})


def test_int_accepted_for_float_but_not_bool_for_int():
    assert config_from_dict({"train": {"lr": 1}}).train.lr == 1.0
    with pytest.raises(ConfigError):
        config_from_dict({"train": {"epochs": True}})


def test_bare_name_resolves_in_configs_and_extends():
    cfg = load_config("movielens.yaml")
    assert cfg.data.source == "ml-1m" and cfg.model.dim == 64  # dim comes from base.yaml


def test_yaml_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml:"):
        load_config(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("train:\n  bogus: 1\n")
    with pytest.raises(ConfigError, match="train.bogus"):
        load_config(wrong)


def test_parse_override():
    assert parse_override("a.b=3") == {"a": {"b": 3}}
    assert parse_override("x=hello") == {"x": "hello"}
    with pytest.raises(ConfigError):
        parse_override("novalue")


def test_overrides_merge_in_order_without_touching_the_input():
    base = {"train": {"lr": 0.1, "epochs": 3}, "name": "a"}
    out = apply_overrides(base, ["train.lr=0.5", "model.dim=8", "train.lr=0.25"])
    assert out == {"train": {"lr": 0.25, "epochs": 3}, "name": "a", "model": {"dim": 8}}
    assert base == {"train": {"lr": 0.1, "epochs": 3}, "name": "a"}
    assert apply_overrides(base, None) == base
    # the stored config of a checkpoint and a fresh load go through the same merge
    stored = load_config(None, ["train.epochs=3"])
    assert with_overrides(stored, ["train.lr=0.5"]) == load_config(None, ["train.epochs=3",
                                                                          "train.lr=0.5"])


def test_configs_are_found_as_package_data_when_installed(tmp_path, monkeypatch):
    """An installed wheel has no repository beside it: the configs are the package data
    marl_two_tower/configs (setup.py maps the top-level configs/ there), found through
    importlib.resources; a source checkout falls back to the top-level configs/."""
    import importlib.resources
    import shutil
    from pathlib import Path

    from marl_two_tower import config as C

    repo_configs = Path(C.__file__).resolve().parent.parent / "configs"
    assert C.find_config_dir() == repo_configs  # this checkout: no package-data folder
    site = tmp_path / "site-packages" / "marl_two_tower"
    shutil.copytree(repo_configs, site / "configs")  # what the wheel holds
    monkeypatch.setattr(importlib.resources, "files", lambda pkg: site if pkg == "marl_two_tower" else None)
    found = C.find_config_dir()
    assert found == site / "configs"
    monkeypatch.setattr(C, "CONFIG_DIR", found)
    assert C.resolve_config_path("base.yaml") == site / "configs" / "base.yaml"
    assert load_config("ablation.yaml").name == "ablation"  # extends ml100k.yaml there too
    (site / "configs" / "only_in_the_wheel.yaml").write_text("name: from_wheel\n")
    assert load_config("only_in_the_wheel").name == "from_wheel"
