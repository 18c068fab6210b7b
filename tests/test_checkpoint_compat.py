"""A checkpoint written before a config key existed still resumes when the key holds
its default (the value that reproduces the old behaviour), and is refused otherwise."""

from __future__ import annotations

import json

import pytest

from marl_two_tower import checkpoint as ckpt_io
from marl_two_tower.config import Config, fingerprint_config


def _old_checkpoint(cfg: Config, drop: tuple[str, str]) -> dict:
    fp = fingerprint_config(cfg)
    del fp[drop[0]][drop[1]]  # the key did not exist when this checkpoint was written
    return {"data_fingerprint": "d", "config_fingerprint": json.dumps(fp)}


def test_a_key_added_later_at_its_default_is_no_difference():
    cfg = Config()
    ckpt_io.check_compatible(_old_checkpoint(cfg, ("data", "repeats")), "d", fingerprint_config(cfg))


def test_a_key_added_later_away_from_its_default_is_refused():
    old = _old_checkpoint(Config(), ("data", "repeats"))
    cfg = Config()
    cfg.data.repeats = "keep"
    with pytest.raises(ckpt_io.CheckpointMismatch, match="data.repeats"):
        ckpt_io.check_compatible(old, "d", fingerprint_config(cfg))


def test_a_changed_value_is_refused():
    cfg = Config()
    old = {"data_fingerprint": "d", "config_fingerprint": json.dumps(fingerprint_config(cfg))}
    cfg.model.dim = cfg.model.dim + 1
    with pytest.raises(ckpt_io.CheckpointMismatch, match="model.dim"):
        ckpt_io.check_compatible(old, "d", fingerprint_config(cfg))


def test_a_real_data_run_ignores_the_synthetic_generators_settings():
    """A checkpoint trained on real data stays resumable when the synthetic generator's
    defaults change (they read no real data), including one whose stored fingerprint
    still has them."""
    cfg = Config()
    cfg.data.source = "ml-100k"
    old = fingerprint_config(cfg) | {"data": fingerprint_config(cfg)["data"] | {
        "synthetic": {"n_users": 1, "taste_drift": 0.5}}}
    ckpt = {"data_fingerprint": "d", "config_fingerprint": json.dumps(old)}
    cfg.data.synthetic.taste_drift = 9.0
    ckpt_io.check_compatible(ckpt, "d", fingerprint_config(cfg))
    # on synthetic data they are the data: a change is refused
    syn = Config()
    stored = {"data_fingerprint": "d", "config_fingerprint": json.dumps(fingerprint_config(syn))}
    syn.data.synthetic.taste_drift = 9.0
    with pytest.raises(ckpt_io.CheckpointMismatch, match="taste_drift"):
        ckpt_io.check_compatible(stored, "d", fingerprint_config(syn))
