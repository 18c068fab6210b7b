"""The config is the one source of defaults: component constructors either have no
default for a configured value or take the config's own, and the components built
from a config carry its values."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from marl_two_tower.config import Config, GiniConfig, MARLConfig, ServingConfig
from marl_two_tower.data.split import leave_one_out
from marl_two_tower.data.synthetic import generate
from marl_two_tower.fairness.exposure import (
    ExposureBudget,
    OnlineExposureBudget,
    allocate_in_order,
    budget_from_config,
)
from marl_two_tower.fairness.fair_sampler import FairSampler
from marl_two_tower.model.components import FairSamplerComponent
from marl_two_tower.model.marl.env import GenreRecEnv
from marl_two_tower.serving.index import IndexSettings

EMPTY = inspect.Parameter.empty

# (constructor, parameter, the config default it stands for or EMPTY = must have none)
PARAMS = [
    (FairSampler, "beta", EMPTY),
    (FairSampler, "max_per_batch", EMPTY),
    (ExposureBudget, "k", EMPTY),
    (ExposureBudget, "n_candidates", EMPTY),
    (ExposureBudget, "floor", EMPTY),
    (OnlineExposureBudget, "k", EMPTY),
    (OnlineExposureBudget, "window", EMPTY),
    (allocate_in_order, "k", EMPTY),  # the online budget's k, offline
    (IndexSettings, "nlist", ServingConfig.ivf_nlist),
    (IndexSettings, "nprobe", ServingConfig.ivf_nprobe),
    (IndexSettings, "hnsw_m", ServingConfig.hnsw_m),
    (IndexSettings, "ef_search", ServingConfig.hnsw_ef_search),
    (GenreRecEnv, "batch_users", None),  # None = marl.rl_batch_users
]


@pytest.mark.parametrize(("cls", "name", "want"), PARAMS,
                         ids=[f"{c.__name__}.{n}" for c, n, _ in PARAMS])
def test_constructor_defaults_are_the_configs(cls, name, want):
    assert inspect.signature(cls).parameters[name].default == want


def test_components_built_from_a_config_carry_its_values():
    cfg = Config()
    cfg.model.user_encoder = "pooled"  # the Fair Sampler draws positives (not weights)
    cfg.data.synthetic.n_users, cfg.data.synthetic.n_items = 120, 60
    cfg.fair_sampler.beta, cfg.fair_sampler.max_per_batch = 0.37, 3
    cfg.exposure_budget.enabled = True
    g = cfg.gini
    g.exposure_cap, g.cap_k, g.cap_candidates, g.cover_floor = 2.5, 7, 123, 2
    split = leave_one_out(generate(cfg.data.synthetic))

    sampler = FairSamplerComponent(cfg, split).sampler
    assert (sampler.beta, sampler.cap) == (0.37, 3)
    assert budget_from_config(cfg) == ExposureBudget(factor=2.5, k=7, n_candidates=123, floor=2)
    s = ServingConfig(ivf_nlist=9, ivf_nprobe=5, hnsw_m=8, hnsw_ef_search=40)
    assert IndexSettings.from_config(s, 10) == IndexSettings("flat", 9, 5, 8, 40)

    # and the defaults themselves: the budget of Config() is the GINI section's
    d = GiniConfig()
    assert ExposureBudget.from_config(d) == ExposureBudget(d.exposure_cap, d.cap_k, d.cap_candidates,
                                                           d.cover_floor)
    pooled = Config()
    pooled.model.user_encoder = "pooled"
    assert d.cover_floor == 1 and FairSamplerComponent(pooled, split).sampler.beta == 0.1
    # under the sequence tower (the default) the same beta sets the positives' weights
    weighted = FairSamplerComponent(Config(), split)
    pop = np.maximum(split.item_pop, 1).astype(np.float64)
    np.testing.assert_allclose(weighted.item_weight.numpy(), pop ** -0.1, rtol=1e-6)


def test_genre_env_batch_defaults_to_the_rl_batch():
    """GenreRecEnv without ``batch_users`` draws marl.rl_batch_users users a step."""

    class Probe:
        obs, state = np.zeros((1, 2, 5)), np.zeros((1, 3))

    class Core:  # the three things GenreRecEnv reads from its RecEnvCore
        cfg = MARLConfig(rl_batch_users=9)
        eligible = np.arange(50)

        def observe(self, users):
            return Probe()

    assert GenreRecEnv(Core(), ["a", "b"]).batch_users == 9
    assert GenreRecEnv(Core(), ["a", "b"], batch_users=4).batch_users == 4
