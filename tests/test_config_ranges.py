"""Config values are checked against their allowed ranges at load time (issue 13,
point 14): the error names the key and the allowed values."""

from __future__ import annotations

import dataclasses

import pytest

from marl_two_tower.config import (
    CHECKS,
    CONFIG_DIR,
    Config,
    ConfigError,
    Range,
    SyntheticConfig,
    load_config,
    validate,
)

BAD = [
    ("train.batch_size=0", "train.batch_size: expected a value >= 1, got 0"),
    ("train.batch_size=-5", "train.batch_size: expected a value >= 1, got -5"),
    ("train.eval_every=0", "train.eval_every: expected a value >= 1"),  # was a ZeroDivisionError
    ("train.epochs=0", "train.epochs: expected a value >= 1"),
    ("train.patience=0", "train.patience: expected a value >= 1"),
    ("model.dim=0", "model.dim: expected a value >= 1, got 0"),
    ("model.dim=-4", "model.dim: expected a value >= 1, got -4"),
    ("eval.ks=[]", "eval.ks: expected at least 1 value(s), got []"),
    ("eval.ks=[10, 0]", "eval.ks[1]: expected a value >= 1, got 0"),
    ("train.num_negatives=-1", "train.num_negatives: expected a value >= 0, got -1"),
    ("seed=-1", "seed: expected a value in [0, 4294967295], got -1"),
    ("data.tail_fraction=1.5", "data.tail_fraction: expected a value in [0, 1], got 1.5"),
    ("data.tail_fraction=-0.1", "data.tail_fraction: expected a value in [0, 1], got -0.1"),
    ("model.dropout=2", "model.dropout: expected a value in [0, 1), got 2.0"),
    ("model.dropout=1", "model.dropout: expected a value in [0, 1), got 1.0"),
    ("train.lr=0", "train.lr: expected a value > 0, got 0.0"),
    ("train.lr=-0.1", "train.lr: expected a value > 0, got -0.1"),
    ("train.lr=1e400", "train.lr: expected a finite float, got inf"),
    ("train.lr=.nan", "train.lr: expected a finite float, got nan"),
    ("train.lr=-.inf", "train.lr: expected a finite float, got -inf"),
    ("serving.max_k=0", "serving.max_k: expected a value >= 1, got 0"),
    ("serving.port=99999", "serving.port: expected a value in [1, 65535], got 99999"),
    ("train.device=bogus", "train.device: expected auto, cpu, cuda, cuda:N or mps, got 'bogus'"),
    ("train.device=cuda:x", "train.device: expected auto"),
    ("name=../../x", "name: expected a relative folder name inside output_dir"),
    ("name=/tmp/x", "name: expected a relative folder name inside output_dir"),
    ("name=", "name: expected a relative folder name"),
    ("context_gnn.layers=4", "context_gnn.layers: expected a value in [1, 3], got 4"),
    ("data.synthetic.n_users=0", "data.synthetic.n_users: expected a value >= 1"),
    ("gini.target=1.2", "gini.target: expected a value in [0, 1]"),
]


@pytest.mark.parametrize("override,message", BAD)
def test_out_of_range_values_name_the_key_and_the_range(override, message):
    with pytest.raises(ConfigError) as exc:
        load_config(None, [override])
    assert str(exc.value) == message or str(exc.value).startswith(message), str(exc.value)


@pytest.mark.parametrize("override", [
    "data.tail_fraction=0", "data.tail_fraction=1", "model.dropout=0", "model.dropout=0.99",
    "eval.ks=[1]", "seed=0", "train.lr=1e-9", "train.num_negatives=0", "serving.port=1",
    "train.device=cuda:1", "train.device=cpu", "name=ablation/base/seed1", "context_gnn.layers=1",
])
def test_boundary_values_are_accepted(override):
    load_config(None, [override])


def test_every_check_names_a_real_field():
    for cls, checks in CHECKS.items():
        names = {f.name for f in dataclasses.fields(cls)}
        assert set(checks) <= names, (cls.__name__, set(checks) - names)


def test_defaults_and_shipped_configs_are_valid():
    validate(Config())
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        if path.name != "business.yaml":  # another schema (study/business.py)
            load_config(path)


def test_range_alone():
    r = Range(0, 1, open_hi=True)
    r(0, "x")
    r(0.5, "x")
    with pytest.raises(ConfigError, match=r"x: expected a value in \[0, 1\), got 1"):
        r(1, "x")
    with pytest.raises(ConfigError, match="n_users"):
        validate(SyntheticConfig(n_users=0), "data.synthetic.")
