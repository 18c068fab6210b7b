"""The frontier part of the ablation report (DESIGN §6): each group's accuracy-fairness
curve under the exposure budget, HR@10 at matched Gini, and the paired difference of
every ablation step to the previous one at matched Gini.

Inputs are the runs' ``frontier.npz`` (val and test candidates, written at evaluation
time by :func:`marl_two_tower.study.run.evaluate_and_write`; a run from before that
file existed gets it from its checkpoint when the study is re-run,
:func:`marl_two_tower.study.ablation.run_study`), so a report re-allocates lists but
never re-scores a model. A group any of whose runs lacks the file is left off the
frontier (and says so).

The knob is the same for every group: the exposure budget with the first group's
``gini.cover_floor`` and ``gini.cap_k``, cap factor swept over
:data:`~marl_two_tower.eval.frontier.BUDGET_FACTORS` (the "+Exposure budget" step is
one point of the "+Tail loss" step's curve, so its matched-Gini difference is 0 by
construction: the budget slides along the frontier, it cannot move it). The Base
variant also gets the popularity-penalty re-ranker as a peer row.

**Seeds.** A group's curve is the seed mean per knob setting; its matched point at
target g* is chosen per seed on that seed's validation curve; the paired test vs the
previous step uses per-user hit@10 at each seed's matched setting averaged over seeds
(users pooled as the unit of analysis, as in :mod:`marl_two_tower.eval.significance`),
Wilcoxon signed-rank over users; per-seed values are listed in the JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from marl_two_tower.eval import frontier as F

__all__ = ["build_frontier_section", "frontier_markdown", "plot_frontier_curves"]


def _settings(cfg: dict[str, Any]) -> list[F.Setting]:
    g = cfg.get("gini", {})
    return F.budget_curve(F.BUDGET_FACTORS, floor=int(g.get("cover_floor", 1)), k=int(g.get("cap_k", 10)))


def build_frontier_section(groups: Sequence[Any], k: int = 10, targets: Sequence[float] = F.GINI_TARGETS,
                           n_boot: int = 1000, seed: int = 0) -> dict[str, Any] | None:
    """The ``frontier`` block of the report document (None when no group has candidates).

    ``groups`` are :class:`marl_two_tower.study.report.Group` objects (loaded), in
    report order; variants are compared with the previous *variant* that is on the
    frontier.
    """
    cfg0 = groups[0].docs[0]["config"]
    budget = _settings(cfg0)
    entries: list[tuple[Any, str, F.Frontier]] = []
    missing = []
    for g in groups:
        runs = [F.load_candidates(d) for d in g.run_dirs]
        if not runs or any(r is None for r in runs):
            missing.append(g.label)
            continue
        entries.append((g, g.label, F.frontier_of(g.label, runs, budget, targets, k)))
        if g.key == "base" and g.kind == "variant":
            entries.append((g, f"{g.label} + popularity penalty",
                            F.frontier_of(f"{g.label} + popularity penalty", runs,
                                          F.popularity_curve(), targets, k)))
    if not entries:
        return None
    rows, prev = [], None
    for g, label, fr in entries:
        row = {"key": g.key, "label": label, "kind": g.kind, "arm": fr.arm,
               **F.frontier_summary(fr, n_boot, seed)}
        is_step = g.kind == "variant" and fr.arm == "budget"
        if is_step and prev is not None:
            row["vs_previous"] = {"label": prev.name, **{
                f"{t:.2f}": F.paired_matched(fr.matched[t], prev.matched[t]) for t in targets}}
        if is_step:
            prev = fr
        rows.append(row)
    return {"arm": "budget", "knob": {"factors": list(F.BUDGET_FACTORS),
                                      "floor": budget[1].floor, "k": budget[1].k},
            "popularity_weights": list(F.POPULARITY_WEIGHTS), "targets": list(targets), "k": k,
            "selection": "knob value per seed where the validation Gini@K crosses the target "
                         "(linear interpolation between neighbouring settings); test values "
                         "are the same interpolation of the two settings' test values",
            "tests": "per-user hit@K at each model's matched setting, averaged over seeds; "
                     "Wilcoxon signed-rank over users vs the previous step; CIs: user "
                     f"bootstrap ({n_boot} resamples, seed {seed}) of the seed mean",
            "rows": rows, "missing": missing}


def _fmt(v: float | None, d: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{d}f}"


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "p<1e-4" if p < 1e-4 else f"p={p:.4f}"


def frontier_markdown(section: dict[str, Any]) -> str:
    """The matched-Gini table: HR@K [95% CI] at each target Gini, and each step's
    paired difference vs the previous step (Wilcoxon over users)."""
    k, targets = section["k"], section["targets"]
    knob = section["knob"]
    lines = [f"HR@{k} at matched Gini@{k} on test (knob: exposure budget, coverage floor "
             f"{knob['floor']}, cap factor chosen on validation per seed, interpolated; "
             "[95% user-bootstrap CI]; Δ vs the previous step, Wilcoxon over users):", ""]
    head = "| model | seeds | HR@K off | Gini@K off | " + " | ".join(
        f"HR@K @ Gini {t:.2f} | Δ prev @ {t:.2f}" for t in targets) + " |"
    lines += [head.replace("@K", f"@{k}"), "|---|---|---|---|" + "---|---|" * len(targets)]
    for r in section["rows"]:
        off = r["test"][0]
        cells = [r["label"], str(r["n_seeds"]), _fmt(off.get(f"HR@{k}")), _fmt(off.get(f"Gini@{k}"))]
        for t in targets:
            m = r["matched"][f"{t:.2f}"]
            hr = m[f"HR@{k}"]
            s = _fmt(hr["value"])
            if hr.get("ci95"):
                s += f" [{hr['ci95'][0]:.4f}, {hr['ci95'][1]:.4f}]"
            if "off_below_target" in m["status"]:
                s += " (off ≤ target)"
            cells.append(s)
            vs = (r.get("vs_previous") or {}).get(f"{t:.2f}")
            cells.append("" if vs is None else f"{vs['delta']:+.4f}, {_fmt_p(vs['p_wilcoxon'])}")
        lines.append("| " + " | ".join(cells) + " |")
    if section["missing"]:
        lines += ["", "Not on the frontier (a run has no frontier.npz): " + ", ".join(section["missing"])]
    return "\n".join(lines) + "\n"


def plot_frontier_curves(section: dict[str, Any]):
    """Two panels: test HR@K against Gini@K and against Coverage@K, one seed-mean curve
    per model as the budget (or the popularity penalty) is swept; o = the plain lists."""
    from matplotlib.figure import Figure

    k = section["k"]
    fig = Figure(figsize=(12, 4.8))
    axes = fig.subplots(1, 2)
    for i, r in enumerate(section["rows"]):
        pts = [p for p in r["test"] if p.get(f"HR@{k}") is not None]
        ls = "--" if r["kind"] == "baseline" else (":" if r["arm"] == "popularity" else "-")
        for ax, x in zip(axes, (f"Gini@{k}", f"Coverage@{k}"), strict=True):
            xs, ys = [p[x] for p in pts], [p[f"HR@{k}"] for p in pts]
            line = ax.plot(xs, ys, ls, color=f"C{i % 10}", lw=1.2, label=r["label"])[0]
            ax.plot(xs[:1], ys[:1], "o", color=line.get_color(), ms=4)
    for t in section["targets"]:
        axes[0].axvline(t, color="k", lw=0.6, ls=":", alpha=0.6)
    axes[0].set(xlabel=f"Gini@{k} (lower = fairer)", ylabel=f"HR@{k}",
                title="Accuracy-fairness frontier (test; knob swept)")
    axes[1].set(xlabel=f"Coverage@{k}", ylabel=f"HR@{k}", title="HR against coverage")
    axes[0].invert_xaxis()
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    return fig


def benchmark_section(doc: dict[str, Any]) -> dict[str, Any]:
    """The :func:`plot_frontier_curves` section of a benchmark's frontier JSON
    (``benchmarks/frontier_ml100k.py``, ``benchmarks/frontier_checkpoints.py``: its
    ``frontiers`` by curve name); curves named ``EASE ...`` are drawn as baselines."""
    rows = [{"label": name, "arm": s["arm"], "test": s["test"],
             "kind": "baseline" if name.startswith("EASE") else "variant"}
            for name, s in doc["frontiers"].items()]
    return {"k": 10, "targets": doc["targets"], "rows": rows}


def matched_values(section: dict[str, Any], target: float, k: int = 10) -> dict[str, float | None]:
    """label -> HR@K at matched Gini ``target`` (for notebooks and checks)."""
    return {r["label"]: r["matched"][f"{target:.2f}"][f"HR@{k}"]["value"] for r in section["rows"]}
