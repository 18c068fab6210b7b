"""Business-impact simulation: a hand-computed case, uncertainty, config validation."""

from __future__ import annotations

import numpy as np
import pytest

from marl_two_tower.config import ConfigError
from marl_two_tower.study.business import MetricDeltas, format_text, load_business_config, simulate

NO_UNCERTAINTY = ["arpu_sd=0", "engagement_revenue_share_sd=0", "baseline_churn_sd=0",
                  "elasticity_hr_sd=0", "elasticity_coverage_sd=0", "elasticity_tail_hr_sd=0",
                  "churn_elasticity_sd=0", "infra_cost_sd=0", "metric_uncertainty=false"]


def hand_cfg(*extra):
    return load_business_config(None, NO_UNCERTAINTY + [
        "n_users=1000", "arpu_month=10", "horizon_months=2", "baseline_churn_month=0.1",
        "elasticity_hr=0.02", "elasticity_coverage=0.01", "elasticity_tail_hr=0.005",
        "engagement_revenue_share=0.5", "churn_elasticity=1.0", "implementation_cost=100",
        "infra_cost_month=10", "sessions_per_user_month=10", "n_samples=50", *extra])


def exact(v: float):
    """Equal up to float rounding (the computation is the hand formula)."""
    return pytest.approx(v, rel=1e-12, abs=1e-12)


def test_hand_computed_case_without_uncertainty():
    # dHR = +1 point, dCoverage = +2 points, dTailHR = +2 points:
    # U = 0.02*1 + 0.01*2 + 0.005*2 = 0.05
    # c1 = 0.1 * (1 - 0.05) = 0.095; a1 = 10 * (1 + 0.5*0.05) = 10.25
    # R0 = 1000 * 10 * (1 + 0.9) = 19000; R1 = 1000 * 10.25 * (1 + 0.905) = 19526.25
    # dR = 526.25; cost = 100 + 10*2 = 120; net = 406.25; ROI = 406.25 / 120
    res = simulate(hand_cfg(), MetricDeltas(hr=0.01, coverage=0.02, tail_hr=0.02,
                                            hr_se=0.5, coverage_se=0.5, tail_hr_se=0.5))
    p = res["point"]
    assert p["engagement_uplift"] == exact(0.05)
    assert p["extra_sessions_per_user_month"] == exact(0.5)
    assert p["churn_month_new"] == exact(0.095)
    assert p["churn_change_points"] == exact(-0.5)
    assert p["revenue_base"] == exact(19000.0)
    assert p["revenue_new"] == exact(19526.25)
    assert p["incremental_revenue"] == exact(526.25)
    assert p["cost"] == exact(120.0)
    assert p["net_benefit"] == exact(406.25)
    assert p["roi"] == exact(406.25 / 120)
    # retained after 2 months: 1000 * (0.905^2 - 0.9^2) = 9.025
    assert p["retained_users_change"] == exact(9.025)
    # no uncertainty: every Monte Carlo draw equals the point value (se ignored)
    for k, v in p.items():
        mc = res["monte_carlo"][k]
        assert mc["mean"] == exact(v) and mc["lo"] == exact(v)
        assert mc["hi"] == exact(v), k


def test_uncertainty_widens_intervals_and_is_seeded():
    d = MetricDeltas(hr=0.01, coverage=0.02, tail_hr=0.02, hr_se=0.003)
    cfg = hand_cfg("elasticity_hr_sd=0.01", "metric_uncertainty=true", "n_samples=4000")
    a, b = simulate(cfg, d), simulate(cfg, d)
    assert a["monte_carlo"] == b["monte_carlo"]
    mc = a["monte_carlo"]["incremental_revenue"]
    assert mc["lo"] < a["point"]["incremental_revenue"] < mc["hi"]
    # uplift is linear in the draws: its MC mean stays near the point value
    assert mc["mean"] == pytest.approx(a["point"]["incremental_revenue"], rel=0.05)
    # zero deltas: nothing changes but the cost
    z = simulate(hand_cfg(), MetricDeltas(0.0, 0.0, 0.0))
    assert z["point"]["incremental_revenue"] == 0.0 and z["point"]["roi"] == -1.0


def test_output_is_labelled_simulated_and_prints_every_assumption():
    res = simulate(hand_cfg(), MetricDeltas(0.01, 0.0, 0.0))
    assert res["label"].startswith("SIMULATED")
    text = format_text(res)
    assert text.count("SIMULATED") >= 3
    for key, value in res["assumptions"].items():
        assert f"{key} = {value}" in text


def test_business_yaml_loads_and_bad_keys_are_named():
    cfg = load_business_config("business.yaml")
    assert cfg.horizon_months == 12 and cfg.metric_uncertainty
    with pytest.raises(ConfigError, match="elasticity_foo"):
        load_business_config(None, ["elasticity_foo=1"])
    with pytest.raises(ConfigError, match="arpu_month"):
        load_business_config(None, ["arpu_month=abc"])
    with pytest.raises(ConfigError, match="interval"):
        load_business_config(None, ["interval=1.5"])


def test_defaults_give_finite_results():
    res = simulate(load_business_config("business.yaml"), MetricDeltas(0.005, 0.05, 0.01, 0.002,
                                                                       0.01, 0.004))
    assert all(np.isfinite(v["mean"]) for v in res["monte_carlo"].values())
