"""Business-impact SIMULATION (DESIGN §7): metric deltas -> engagement, churn, revenue, ROI.

This is a transparent what-if model, not a measurement. Every number it prints is
**SIMULATED** from the measured offline metric deltas and the assumptions of
:class:`BusinessConfig` (``configs/business.yaml``), all of which are printed with
the result. The model (deltas in absolute metric units, e.g. +0.01 = +1 point):

    engagement uplift   U  = e_hr * 100 dHR@K + e_cov * 100 dCoverage@K + e_tail * 100 dTailHR@K
                             (relative change of sessions per user; e_* per percentage point)
    monthly churn       c1 = clip(c0 * (1 - e_churn * U), 0, 1)
    ARPU                a1 = a0 * (1 + s_eng * U)       (s_eng: share of ARPU that scales
                                                         with engagement, e.g. ads)
    revenue over H months of a cohort of N users retained with monthly churn c:
                        R(c, a) = N * a * sum_{m=0}^{H-1} (1 - c)^m
    incremental revenue dR = R(c1, a1) - R(c0, a0)
    cost                C  = implementation_cost + infra_cost_month * H
    net benefit         dR - C;   ROI = (dR - C) / C

Uncertainty (Monte Carlo, ``n_samples`` draws, seed ``seed``): each assumption with a
``*_sd`` draws from Normal(value, sd) (clipped at 0; shares and churn also at 1), and
with ``metric_uncertainty`` each metric delta draws from Normal(delta, se) with se
from its measured 95% CI (se = CI width / 3.92) when one is available. Results give
the mean and the central ``interval`` (default 90%) of every output. With every sd
at 0 and ``metric_uncertainty: false`` all draws equal the deterministic point value.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from marl_two_tower.config import ConfigError, _build, apply_overrides, load_yaml

LABEL = "SIMULATED"


@dataclass
class BusinessConfig:
    """Assumptions of the simulation; every one is printed with the result."""

    k: int = 10  # list length whose metrics (HR@K, Coverage@K, TailHR@K) drive the model
    n_users: float = 1_000_000.0  # active users in the cohort (N)
    arpu_month: float = 10.0  # average revenue per user per month (a0, currency units)
    arpu_sd: float = 0.0  # uncertainty (sd) of arpu_month
    sessions_per_user_month: float = 12.0  # baseline sessions per user per month (for reporting)
    engagement_revenue_share: float = 0.3  # s_eng: share of ARPU that scales with engagement
    engagement_revenue_share_sd: float = 0.1
    baseline_churn_month: float = 0.05  # c0: monthly churn without the change
    baseline_churn_sd: float = 0.0
    horizon_months: int = 12  # H: months over which revenue is counted
    elasticity_hr: float = 0.02  # e_hr: relative engagement uplift per +1 point of HR@K
    elasticity_hr_sd: float = 0.01
    elasticity_coverage: float = 0.002  # e_cov: per +1 point of Coverage@K (discovery)
    elasticity_coverage_sd: float = 0.002
    elasticity_tail_hr: float = 0.01  # e_tail: per +1 point of TailHR@K (niche satisfaction)
    elasticity_tail_hr_sd: float = 0.01
    churn_elasticity: float = 0.5  # e_churn: relative churn reduction per relative engagement
    churn_elasticity_sd: float = 0.25
    implementation_cost: float = 200_000.0  # one-off cost of building and launching
    infra_cost_month: float = 5_000.0  # extra serving cost per month
    infra_cost_sd: float = 0.0  # uncertainty (sd) of infra_cost_month
    metric_uncertainty: bool = True  # draw metric deltas from their measured CIs
    n_samples: int = 10_000  # Monte Carlo draws
    seed: int = 0  # Monte Carlo seed
    interval: float = 0.9  # central interval reported for every output


def load_business_config(path: str | Path | None = None,
                         overrides: list[str] | None = None) -> BusinessConfig:
    """Defaults <- YAML (optional) <- ``key=value`` overrides, validated by key and type."""
    cfg = _build(BusinessConfig, apply_overrides(load_yaml(path) if path else {}, overrides))
    if not 0 < cfg.interval < 1:
        raise ConfigError(f"interval: expected a value in (0, 1), got {cfg.interval}")
    if cfg.horizon_months < 1 or cfg.n_samples < 1:
        raise ConfigError("horizon_months and n_samples must be >= 1")
    return cfg


@dataclass
class MetricDeltas:
    """Measured deltas (candidate - base) with optional standard errors."""

    hr: float
    coverage: float
    tail_hr: float
    hr_se: float = 0.0
    coverage_se: float = 0.0
    tail_hr_se: float = 0.0
    source: str = "given"


def _cohort_revenue(n: np.ndarray, arpu: np.ndarray, churn: np.ndarray, months: int) -> np.ndarray:
    # sum_{m=0}^{H-1} (1-c)^m, written as a sum so c = 0 needs no special case
    keep = np.ones_like(churn)
    total = np.zeros_like(churn)
    for _ in range(months):
        total = total + keep
        keep = keep * (1.0 - churn)
    return n * arpu * total


def simulate_arrays(cfg: BusinessConfig, d_hr: np.ndarray, d_cov: np.ndarray, d_tail: np.ndarray,
                    p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model of the module docstring, vectorised over draws."""
    uplift = (p["elasticity_hr"] * 100 * d_hr + p["elasticity_coverage"] * 100 * d_cov
              + p["elasticity_tail_hr"] * 100 * d_tail)
    c0 = p["baseline_churn_month"]
    c1 = np.clip(c0 * (1.0 - p["churn_elasticity"] * uplift), 0.0, 1.0)
    a0 = p["arpu_month"]
    a1 = a0 * (1.0 + p["engagement_revenue_share"] * uplift)
    h = cfg.horizon_months
    r0 = _cohort_revenue(cfg.n_users, a0, c0, h)
    r1 = _cohort_revenue(cfg.n_users, a1, c1, h)
    cost = cfg.implementation_cost + p["infra_cost_month"] * h
    net = r1 - r0 - cost
    return {
        "engagement_uplift": uplift,
        "extra_sessions_per_user_month": uplift * cfg.sessions_per_user_month,
        "churn_month_new": c1,
        "churn_change_points": (c1 - c0) * 100,
        "retained_users_change": cfg.n_users * ((1 - c1) ** h - (1 - c0) ** h),
        "revenue_base": r0,
        "revenue_new": r1,
        "incremental_revenue": r1 - r0,
        "cost": np.broadcast_to(cost, np.shape(r0)).astype(np.float64),
        "net_benefit": net,
        "roi": net / cost,
    }


_SD = {"arpu_month": "arpu_sd", "engagement_revenue_share": "engagement_revenue_share_sd",
       "baseline_churn_month": "baseline_churn_sd", "elasticity_hr": "elasticity_hr_sd",
       "elasticity_coverage": "elasticity_coverage_sd", "elasticity_tail_hr": "elasticity_tail_hr_sd",
       "churn_elasticity": "churn_elasticity_sd", "infra_cost_month": "infra_cost_sd"}
_UNIT_INTERVAL = ("engagement_revenue_share", "baseline_churn_month")


def simulate(cfg: BusinessConfig, deltas: MetricDeltas) -> dict[str, Any]:
    """Point value (assumptions at their means) and Monte Carlo summary of every output."""
    point_p = {k: np.asarray(getattr(cfg, k), dtype=np.float64) for k in _SD}
    point = simulate_arrays(cfg, np.float64(deltas.hr), np.float64(deltas.coverage),
                            np.float64(deltas.tail_hr), point_p)
    rng = np.random.default_rng(cfg.seed)
    n = cfg.n_samples
    draws: dict[str, np.ndarray] = {}
    for k, sd_key in _SD.items():
        mean, sd = float(getattr(cfg, k)), float(getattr(cfg, sd_key))
        x = rng.normal(mean, sd, n) if sd > 0 else np.full(n, mean)
        draws[k] = np.clip(x, 0.0, 1.0 if k in _UNIT_INTERVAL else None)

    def metric(mean: float, se: float) -> np.ndarray:
        use = cfg.metric_uncertainty and se > 0
        return rng.normal(mean, se, n) if use else np.full(n, mean)

    mc = simulate_arrays(cfg, metric(deltas.hr, deltas.hr_se),
                         metric(deltas.coverage, deltas.coverage_se),
                         metric(deltas.tail_hr, deltas.tail_hr_se), draws)
    a = (1 - cfg.interval) / 2
    summary = {k: {"mean": float(np.mean(v)), "lo": float(np.quantile(v, a)),
                   "hi": float(np.quantile(v, 1 - a)), "p_positive": float(np.mean(v > 0))}
               for k, v in mc.items()}
    return {
        "label": f"{LABEL}: business impact simulated from offline metric deltas and the "
                 "assumptions below; not a measurement",
        "model": "see marl_two_tower/business.py and docs/business.md",
        "assumptions": dataclasses.asdict(cfg),
        "inputs": dataclasses.asdict(deltas),
        "point": {k: float(v) for k, v in point.items()},
        "monte_carlo": summary,
        "interval": cfg.interval,
    }


# ---------------------------------------------------------------------------
# Where the deltas come from
# ---------------------------------------------------------------------------


def _se(ci: list[float] | None) -> float:
    return (ci[1] - ci[0]) / 3.92 if ci else 0.0


def deltas_from_report(path: str | Path, variant: str | None = None, k: int = 10) -> MetricDeltas:
    """Deltas of ``variant`` (default: the last ablation variant, the full model) vs Base."""
    from marl_two_tower.study.report import read_report

    doc = read_report(path)
    rows = [r for r in doc["rows"] if r["label"] != doc["base"]]
    if variant is not None:
        rows = [r for r in rows if variant in (r["label"], r["key"])]
    else:
        rows = [r for r in rows if r["kind"] != "baseline"][-1:]
    if not rows:
        raise ValueError(f"{path}: no variant {variant!r} to compare with {doc['base']!r}")
    m = rows[0]["metrics"]

    def get(name: str) -> tuple[float, float]:
        e = m.get(f"{name}@{k}")
        if e is None or e.get("delta") is None:
            raise ValueError(f"{path}: the report has no delta for {name}@{k}")
        return float(e["delta"]), _se(e.get("delta_ci95"))

    (hr, hr_se), (cov, cov_se), (tail, tail_se) = get("HR"), get("Coverage"), get("TailHR")
    return MetricDeltas(hr, cov, tail, hr_se, cov_se, tail_se,
                        source=f"{path}: {rows[0]['label']} vs {doc['base']}")


def deltas_from_runs(base: str | Path, candidate: str | Path, k: int = 10) -> MetricDeltas:
    """Deltas of two run folders' test metrics (CIs from their per_user.npz if present)."""
    from marl_two_tower.eval.arrays import load_eval_arrays
    from marl_two_tower.eval.significance import compare
    from marl_two_tower.study.results import read_results

    b, c = read_results(base)["metrics"]["test"]["full"], read_results(candidate)["metrics"]["test"]["full"]
    names = [f"HR@{k}", f"Coverage@{k}", f"TailHR@{k}"]
    for n in names:
        if b.get(n) is None or c.get(n) is None:
            raise ValueError(f"{n} missing in {base} or {candidate}")
    se = dict.fromkeys(names, 0.0)
    ab, ac = load_eval_arrays(base), load_eval_arrays(candidate)
    if ab is not None and ac is not None:
        sig = compare([ac], [ab], names, n_boot=1000, seed=0)
        se = {n: _se(sig[n]["delta_ci95"]) for n in names}
    return MetricDeltas(c[names[0]] - b[names[0]], c[names[1]] - b[names[1]],
                        c[names[2]] - b[names[2]], se[names[0]], se[names[1]], se[names[2]],
                        source=f"{candidate} vs {base}")


# ---------------------------------------------------------------------------
# Text output
# ---------------------------------------------------------------------------

_OUT_LABELS = {
    "engagement_uplift": ("engagement uplift (relative)", "pct"),
    "extra_sessions_per_user_month": ("extra sessions per user per month", "num"),
    "churn_change_points": ("monthly churn change (points)", "num"),
    "retained_users_change": ("extra users retained at horizon", "num"),
    "incremental_revenue": ("incremental revenue over horizon", "money"),
    "cost": ("cost over horizon", "money"),
    "net_benefit": ("net benefit", "money"),
    "roi": ("ROI", "pct"),
}


def _f(v: float, kind: str) -> str:
    if not math.isfinite(v):
        return "n/a"
    if kind == "pct":
        return f"{100 * v:+.2f}%"
    if kind == "money":
        return f"{v:,.0f}"
    return f"{v:+,.4g}"


def format_text(res: dict[str, Any]) -> str:
    """Human-readable result; every block is labelled SIMULATED."""
    pct = int(round(100 * res["interval"]))
    inp = res["inputs"]
    lines = [f"=== {LABEL} BUSINESS IMPACT (not a measurement) ===",
             f"source of metric deltas: {inp['source']}",
             f"  dHR = {inp['hr']:+.5f} (se {inp['hr_se']:.5f}), dCoverage = {inp['coverage']:+.5f} "
             f"(se {inp['coverage_se']:.5f}), dTailHR = {inp['tail_hr']:+.5f} (se {inp['tail_hr_se']:.5f})",
             "", f"--- {LABEL} outputs: point value | MC mean [{pct}% interval] | P(>0) ---"]
    for key, (label, kind) in _OUT_LABELS.items():
        mc = res["monte_carlo"][key]
        lines.append(f"  {label:38s} {_f(res['point'][key], kind):>14s} | {_f(mc['mean'], kind)} "
                     f"[{_f(mc['lo'], kind)}, {_f(mc['hi'], kind)}] | {mc['p_positive']:.2f}")
    lines += ["", f"--- {LABEL} assumptions (configs/business.yaml; override with --set) ---"]
    lines += [f"  {k} = {v}" for k, v in res["assumptions"].items()]
    return "\n".join(lines) + "\n"


def write_simulation(res: dict[str, Any], output: str | Path) -> Path:
    """Write ``simulation.json`` and ``simulation.txt`` into ``output``."""
    from marl_two_tower.utils.io import write_text_atomic

    out = Path(output)
    write_text_atomic(out / "simulation.json", json.dumps(res, indent=2))
    write_text_atomic(out / "simulation.txt", format_text(res))
    return out
