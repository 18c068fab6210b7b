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
