"""Ablation / comparison reports from run folders (DESIGN §6, §7).

``marl-two-tower report RUN_DIR... [--output DIR]`` reads finished runs (their
``results.json`` and ``per_user.npz``; nothing is retrained or re-scored) and writes

* ``ablation.json``: the report document, schema ``marl-two-tower/ablation-report``
  version ``REPORT_SCHEMA_VERSION`` (documented in ``docs/reports.md``);
* ``ablation.csv``: one row per (variant, metric);
* ``ablation.md``: the Markdown tables (mean +- std over seeds; delta vs Base with
  its 95% CI and p-value; HR@10 at matched Gini per variant and the paired
  difference vs the previous step, :mod:`marl_two_tower.study.frontier_report`);
* PNG plots: ``frontier_curves.png`` (each variant's and baseline's HR@10 vs Gini@10
  and vs Coverage@10 as the exposure budget is swept, from the runs' ``frontier.npz``),
  ``frontier.png`` (HR@K vs Gini@K of the evaluated lists, baselines included when present),
  ``ablation_bars.png`` (bars with user-bootstrap 95% CIs), ``lorenz.png`` (item
  exposure Lorenz curves), ``group_hr.png`` (HR@K per demographic group) and
  ``learning_curves.png`` (validation NDCG@10 and training loss per epoch).

A RUN_DIR is an ablation study folder (with ``study.json``), a single run folder
(with ``results.json``), or any folder holding run folders. Runs named ``seed<N>``
inside one folder are seeds of one variant. Means and stds come from the runs'
``results.json``; CIs, deltas' CIs and p-values from their ``per_user.npz``
(:mod:`marl_two_tower.significance`).
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from marl_two_tower.eval.arrays import EvalArrays, load_eval_arrays
from marl_two_tower.eval.significance import compare, metric_names, seed_summary
from marl_two_tower.model.build import COMPONENTS
from marl_two_tower.study.frontier_report import (
    build_frontier_section,
    frontier_markdown,
    plot_frontier_curves,
)
from marl_two_tower.study.results import git_commit, read_results, read_versioned_json
from marl_two_tower.utils.io import atomic_write, to_jsonable, write_text_atomic

REPORT_SCHEMA = "marl-two-tower/ablation-report"
REPORT_SCHEMA_VERSION = 2  # 2: adds "frontier" (null when no run has frontier.npz)

# Metrics shown in the Markdown tables and bar plots (at the report's K).
HEADLINE = ("HR", "NDCG", "TailHR", "Coverage", "Gini", "Redundancy", "AvgPop")
BAR_METRICS = ("HR", "NDCG", "TailHR", "Coverage", "Gini")
_SEED_DIR = re.compile(r"^seed\d+$")


@dataclass
class Group:
    """The runs (seeds) of one variant or baseline."""

    key: str
    label: str
    kind: str  # variant | baseline | run
    run_dirs: list[Path] = field(default_factory=list)
    components: list[str] = field(default_factory=list)
    docs: list[dict[str, Any]] = field(default_factory=list)
    arrays: list[EvalArrays | None] = field(default_factory=list)

    def load(self) -> Group:
        self.docs = [read_results(d) for d in self.run_dirs]
        self.arrays = [load_eval_arrays(d) for d in self.run_dirs]
        return self


# ---------------------------------------------------------------------------
# Collecting runs
# ---------------------------------------------------------------------------


def _run_dirs_under(path: Path) -> list[Path]:
    return sorted(p.parent for p in path.rglob("results.json"))


def _groups_from_study(path: Path) -> tuple[list[Group], list[dict[str, Any]]]:
    """Variants in ablation order (finished runs on disk; components from their config),
    then the baselines. ``study.json`` supplies the unavailable (excluded) variants;
    parallel workers may each have written a part."""
    from marl_two_tower.study.variants import VARIANTS

    study = json.loads((path / "study.json").read_text())
    listed = {v["key"]: v for v in study["variants"]}
    known = {v.key: v.label for v in VARIANTS}
    order = {k: i for i, k in enumerate(known)}
    keys = sorted(set(listed) | set(known),
                  key=lambda k: (order.get(k, len(order)), list(listed).index(k) if k in listed else 0))
    groups, unavailable = [], []
    for key in keys:
        label = listed[key]["label"] if key in listed else known[key]
        runs = sorted(d for d in (path / key).glob("seed*") if (d / "results.json").exists())
        if runs:
            cfg = read_results(runs[0])["config"]
            on = [c for c in COMPONENTS if cfg.get(c, {}).get("enabled")]
            groups.append(Group(key, label, "variant", runs, on))
        elif key in listed and not listed[key]["available"]:
            unavailable.append({"key": key, "label": label, "reason": listed[key]["reason"]})
    for b in sorted((path / "baselines").glob("*/results.json")):
        groups.append(Group(b.parent.name, b.parent.name, "baseline", [b.parent]))
    return groups, unavailable


def collect(paths: Sequence[str | Path]) -> tuple[list[Group], list[dict[str, Any]]]:
    """Groups of runs found under ``paths`` (see the module docstring), loaded."""
    groups: list[Group] = []
    unavailable: list[dict[str, Any]] = []
    for p in map(Path, paths):
        if (p / "study.json").exists():
            g, u = _groups_from_study(p)
            groups += g
            unavailable += u
            continue
        if (p / "results.json").exists():
            runs = [p]
        else:
            runs = _run_dirs_under(p)
            if not runs:
                raise FileNotFoundError(f"{p}: no results.json found (not a run or study folder)")
        by_parent: dict[Path, list[Path]] = {}
        for r in runs:
            key = r.parent if _SEED_DIR.match(r.name) else r
            by_parent.setdefault(key, []).append(r)
        for key, rs in by_parent.items():
            groups.append(Group(key.name, key.name, "run", rs))
    for g in groups:
        g.load()
        if g.kind == "run" and g.docs[0].get("extra", {}).get("kind") == "baseline":
            g.kind = "baseline"
    return groups, unavailable


# ---------------------------------------------------------------------------
# The report document
# ---------------------------------------------------------------------------


def _full(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["metrics"]["test"]["full"]


def _report_k(groups: Sequence[Group], k: int | None) -> int:
    ks = sorted(int(x) for x in groups[0].docs[0]["config"]["eval"]["ks"])
    if k is not None:
        if k not in ks:
            raise ValueError(f"K={k} was not evaluated (runs have K in {ks})")
        return k
    return 10 if 10 in ks else ks[-1]


def _group_means(g: Group, k: int) -> dict[str, dict[str, float]]:
    """HR@K per demographic group, mean over seeds."""
    out: dict[str, dict[str, list[float]]] = {}
    for doc in g.docs:
        for feat, entry in _full(doc).get("groups", {}).items():
            for lab, v in entry.get(f"HR@{k}", {}).items():
                out.setdefault(feat, {}).setdefault(lab, []).append(v)
    return {f: {lab: float(np.mean(v)) for lab, v in d.items()} for f, d in out.items()}


def _history(doc: dict[str, Any]) -> list[dict[str, Any]]:
    keep = ("epoch", "val/NDCG@10", "val/HR@10", "loss/total", "time_s")
    return [{k: h[k] for k in keep if k in h} for h in doc.get("history", [])]


def build_report(groups: Sequence[Group], unavailable: Sequence[dict[str, Any]] = (),
                 base: str | None = None, k: int | None = None, n_boot: int = 1000,
                 seed: int = 0, sources: Sequence[str | Path] = (),
                 frontier: bool = True) -> dict[str, Any]:
    """The report document (schema in docs/reports.md) for loaded ``groups``; with
    ``frontier`` also the frontier section (:func:`frontier_report.build_frontier_section`)."""
    if not groups:
        raise ValueError("no finished runs to report on")
    k = _report_k(groups, k)
    base_group = _pick_base(groups, base)
    fps = {g.docs[0]["run"]["data"]["fingerprint"] for g in groups}
    if len(fps) > 1:
        raise ValueError("the runs used different data (fingerprints "
                         f"{sorted(fps)}); a comparison table needs one dataset")
    ks = sorted(int(x) for x in base_group.docs[0]["config"]["eval"]["ks"])
    names = [n for n in metric_names(ks) if n in _full(base_group.docs[0])]
    base_arrays = _arrays_or_none(base_group)
    rows = []
    for g in groups:
        metrics: dict[str, dict[str, Any]] = {}
        for name in names:
            metrics[name] = seed_summary([_full(d).get(name) for d in g.docs])
        arrays = _arrays_or_none(g)
        if arrays is not None:
            against = base_arrays if (base_arrays is not None and g is not base_group) else None
            sig = compare(arrays, against, names, n_boot=n_boot, seed=seed)
            for name, s in sig.items():
                entry = metrics[name]
                entry["ci95"] = s["ci95"]
                if against is not None:
                    for key in ("delta_ci95", "p_value", "test", "p_wilcoxon", "p_ttest",
                                "cohen_d", "rank_biserial", "p_bootstrap"):
                        if key in s:
                            entry[key] = s[key]
        bm = base_group.docs
        for name in names:
            e = metrics[name]
            b = seed_summary([_full(d).get(name) for d in bm])["mean"]
            e["delta"] = (e["mean"] - b) if (e["mean"] is not None and b is not None) else None
            if g is base_group:
                e |= {"delta": 0.0, "p_value": None, "test": "reference"}
        exposure = None
        if arrays is not None:
            exposure = np.sum([a.exposure(k) for a in arrays], axis=0).tolist()
        rows.append({
            "key": g.key, "label": g.label, "kind": g.kind, "components": g.components,
            "seeds": [d["run"]["seed"] for d in g.docs],
            "runs": [str(r) for r in g.run_dirs], "metrics": metrics,
            "groups": _group_means(g, k), f"exposure@{k}": exposure,
            "history": [_history(d) for d in g.docs],
        })
    d0 = base_group.docs[0]["run"]["data"]
    return to_jsonable({
        "schema": REPORT_SCHEMA, "schema_version": REPORT_SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(), "git_commit": git_commit(),
        "sources": [str(s) for s in sources], "data": d0, "k": k, "ks": ks,
        "protocol": "test split, full-catalogue ranking (train and validation items masked)",
        "base": base_group.label, "metrics": names,
        "tests": {"per_user": "paired Wilcoxon signed-rank (zero_method=wilcox, two-sided) on "
                              "per-user values averaged over seeds; paired t-test; Cohen's d_z; "
                              "rank-biserial",
                  "list_level": "paired user bootstrap, percentile 95% CI, p by CI inversion",
                  "n_boot": n_boot, "bootstrap_seed": seed},
        "rows": rows, "unavailable": list(unavailable),
        "frontier": build_frontier_section(groups, k, n_boot=n_boot, seed=seed) if frontier else None,
    })


def _pick_base(groups: Sequence[Group], base: str | None) -> Group:
    if base is not None:
        for g in groups:
            if base in (g.key, g.label):
                return g
        raise ValueError(f"base {base!r} is not among the runs ({[g.label for g in groups]})")
    for g in groups:
        if g.key == "base" and g.kind == "variant":
            return g
    models = [g for g in groups if g.kind != "baseline"]
    # outside a study: the two-tower run with no component switched on (the demo's base)
    plain = [g for g in models if not any(g.docs[0]["config"].get(c, {}).get("enabled")
                                          for c in COMPONENTS)]
    return (plain or models or list(groups))[0]


def _arrays_or_none(g: Group) -> list[EvalArrays] | None:
    if not g.arrays or any(a is None for a in g.arrays):
        return None
    return [a for a in g.arrays if a is not None]


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------


def _fmt(v: float | None, digits: int = 4, like: float | None = None) -> str:
    """4 decimals, 1 for large values (AvgPop); ``like`` formats a std as its mean."""
    if v is None:
        return "n/a"
    if abs(v if like is None else like) >= 100:
        return f"{v:.1f}"
    return f"{v:.{digits}f}"


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "<1e-4" if p < 1e-4 else f"{p:.4f}"


def markdown(doc: dict[str, Any]) -> str:
    """Two Markdown tables: mean +- std over seeds, and delta vs Base with CI and p."""
    k = doc["k"]
    cols = [f"{m}@{k}" for m in HEADLINE if f"{m}@{k}" in doc["metrics"]]
    if "MRR" in doc["metrics"]:
        cols.insert(2, "MRR")
    head = "| variant | seeds | " + " | ".join(cols) + " |"
    sep = "|---|---|" + "---|" * len(cols)
    lines = [f"Test split, full ranking, {doc['data']['name']} "
             f"({doc['data']['n_users']} users, {doc['data']['n_items']} items); "
             f"tail = {doc['data']['tail']['n_tail_items']} items by {doc['data']['tail']['by']} "
             f"({doc['data']['tail']['fraction']:.0%}).", "",
             "Mean ± std over seeds:", "", head, sep]
    for r in doc["rows"]:
        cells = []
        for c in cols:
            m = r["metrics"][c]
            std = f" ± {_fmt(m['std'], like=m['mean'])}" if m["std"] is not None else ""
            cells.append(_fmt(m["mean"]) + std)
        lines.append(f"| {r['label']} | {len(r['seeds'])} | " + " | ".join(cells) + " |")
    lines += ["", f"Δ vs {doc['base']} [95% CI], p (Wilcoxon for per-user metrics, paired user "
              "bootstrap for Coverage/Gini/Redundancy/AvgPop):", "", head, sep]
    for r in doc["rows"]:
        if r["label"] == doc["base"]:
            continue
        cells = []
        for c in cols:
            m = r["metrics"][c]
            like = m["mean"]
            s = ("+" if (m["delta"] or 0) >= 0 else "") + _fmt(m["delta"], like=like)
            if m.get("delta_ci95"):
                lo, hi = m["delta_ci95"]
                s += f" [{_fmt(lo, like=like)}, {_fmt(hi, like=like)}]"
            p = _fmt_p(m.get("p_value"))
            s += f", p{p}" if p.startswith("<") else f", p={p}"
            cells.append(s)
        lines.append(f"| {r['label']} | {len(r['seeds'])} | " + " | ".join(cells) + " |")
    notes = [f"- {u['label']}: not available ({u['reason']})" for u in doc["unavailable"]]
    if notes:
        lines += ["", "Notes:", *notes]
    if doc.get("frontier"):
        lines += ["", frontier_markdown(doc["frontier"]).rstrip("\n")]
    return "\n".join(lines) + "\n"


CSV_FIELDS = ["variant", "kind", "metric", "n_seeds", "mean", "std", "ci95_lo", "ci95_hi", "delta",
              "delta_ci95_lo", "delta_ci95_hi", "p_value", "test", "p_wilcoxon", "p_ttest",
              "cohen_d", "rank_biserial"]


def to_csv(doc: dict[str, Any]) -> str:
    """One row per (variant, metric)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_FIELDS)
    for r in doc["rows"]:
        for name in doc["metrics"]:
            m = r["metrics"][name]
            ci, dci = m.get("ci95") or [None, None], m.get("delta_ci95") or [None, None]
            w.writerow([r["label"], r["kind"], name, m["n"], m["mean"], m["std"], ci[0], ci[1],
                        m.get("delta"), dci[0], dci[1], m.get("p_value"), m.get("test"),
                        m.get("p_wilcoxon"), m.get("p_ttest"), m.get("cohen_d"),
                        m.get("rank_biserial")])
    return buf.getvalue()


# ---------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------


def _figure(**kw: Any):
    """A matplotlib Figure outside pyplot: no GUI backend, no global state, and
    notebooks display it as PNG."""
    from matplotlib.figure import Figure

    return Figure(**kw)


def plot_frontier(doc: dict[str, Any], ax=None):
    """HR@K vs Gini@K (error bars: std over seeds); the Pareto set is joined by a line."""
    fig = None
    if ax is None:
        fig = _figure(figsize=(6, 4.5))
        ax = fig.subplots()
    k = doc["k"]
    pts = []
    for r in doc["rows"]:
        hr, gi = r["metrics"][f"HR@{k}"], r["metrics"][f"Gini@{k}"]
        if hr["mean"] is None or gi["mean"] is None:
            continue
        marker = "s" if r["kind"] == "baseline" else "o"
        ax.errorbar(gi["mean"], hr["mean"], xerr=gi["std"] or 0, yerr=hr["std"] or 0, fmt=marker,
                    capsize=3, label=r["label"])
        pts.append((gi["mean"], hr["mean"]))
    # Pareto set: no other point has lower (or equal) Gini and higher (or equal) HR
    pareto = sorted(p for p in pts if not any(q != p and q[0] <= p[0] and q[1] >= p[1] for q in pts))
    if len(pareto) > 1:
        ax.plot(*zip(*pareto, strict=True), "k--", lw=0.8, alpha=0.6, label="Pareto frontier")
    ax.set_xlabel(f"Gini@{k} of item exposure (lower = fairer)")
    ax.set_ylabel(f"HR@{k}")
    ax.set_title("Accuracy-fairness frontier")
    ax.legend(fontsize=7)
    return fig or ax.figure


def plot_ablation_bars(doc: dict[str, Any]):
    """One panel per headline metric; bars = mean over seeds, whiskers = bootstrap 95% CI."""
    k = doc["k"]
    rows = [r for r in doc["rows"] if r["kind"] != "baseline"]
    mets = [f"{m}@{k}" for m in BAR_METRICS if f"{m}@{k}" in doc["metrics"]]
    fig = _figure(figsize=(3.2 * len(mets), 3.8))
    axes = fig.subplots(1, len(mets), squeeze=False)
    for ax, name in zip(axes[0], mets, strict=True):
        means = [r["metrics"][name]["mean"] or 0.0 for r in rows]
        lo, hi = [], []
        for r, m in zip(rows, means, strict=True):
            ci = r["metrics"][name].get("ci95")
            # clamped: resampling users shrinks Coverage (fewer distinct users), so its
            # bootstrap interval can sit below the full-sample value (docs/reports.md)
            lo.append(max(m - ci[0], 0.0) if ci else 0.0)
            hi.append(max(ci[1] - m, 0.0) if ci else 0.0)
        x = np.arange(len(rows))
        ax.bar(x, means, yerr=[lo, hi], capsize=3, color="tab:blue", alpha=0.8)
        ax.set_xticks(x, [r["label"] for r in rows], rotation=45, ha="right", fontsize=7)
        ax.set_title(name)
    fig.suptitle("Ablation (whiskers: user-bootstrap 95% CI)")
    fig.tight_layout()
    return fig


def lorenz_curve(exposure: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Lorenz curve of exposure: (cumulative item share, cumulative exposure share)."""
    x = np.sort(np.asarray(exposure, dtype=np.float64))
    total = x.sum()
    cum = np.concatenate([[0.0], np.cumsum(x) / total if total > 0 else np.zeros(len(x))])
    return np.linspace(0.0, 1.0, len(x) + 1), cum


def plot_lorenz(doc: dict[str, Any]):
    """Item-exposure Lorenz curves of the top-K lists (summed over seeds)."""
    k = doc["k"]
    fig = _figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], "k:", lw=0.8, label="equal exposure")
    for r in doc["rows"]:
        expo = r.get(f"exposure@{k}")
        if not expo:
            continue
        xs, ys = lorenz_curve(expo)
        g = r["metrics"][f"Gini@{k}"]["mean"]
        ax.plot(xs, ys, ls="--" if r["kind"] == "baseline" else "-",
                label=f"{r['label']} (Gini {_fmt(g, 3)})")
    ax.set_xlabel("share of items (least exposed first)")
    ax.set_ylabel(f"share of top-{k} exposure")
    ax.set_title("Item exposure Lorenz curves")
    ax.legend(fontsize=7)
    return fig


def plot_group_hr(doc: dict[str, Any]):
    """HR@K per demographic group (one panel per user feature), grouped by variant."""
    k = doc["k"]
    rows = [r for r in doc["rows"] if r.get("groups")]
    feats = sorted({f for r in rows for f in r["groups"]})
    if not feats:
        fig = _figure(figsize=(5, 2))
        ax = fig.subplots()
        ax.text(0.5, 0.5, "no demographic user features in this dataset", ha="center")
        ax.axis("off")
        return fig
    fig = _figure(figsize=(10, 3 * len(feats)))
    axes = fig.subplots(len(feats), 1, squeeze=False)
    for ax, feat in zip(axes[:, 0], feats, strict=True):
        # the data's own group order (age buckets ascending, occupations by code), not
        # alphabetical: each row's dict follows the label order of the dataset
        labels = list(dict.fromkeys(lab for r in rows for lab in r["groups"].get(feat, {})))
        width = 0.8 / max(len(rows), 1)
        x = np.arange(len(labels))
        for j, r in enumerate(rows):
            vals = [r["groups"].get(feat, {}).get(lab, np.nan) for lab in labels]
            ax.bar(x + j * width, vals, width, label=r["label"])
        ax.set_xticks(x + 0.4 - width / 2, labels, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel(f"HR@{k}")
        ax.set_title(f"HR@{k} by {feat}")
    axes[0, 0].legend(fontsize=7, ncol=3)
    fig.tight_layout()
    return fig


def plot_learning_curves(doc: dict[str, Any]):
    """Validation NDCG@10 and training loss per epoch (seed mean; faint = each seed)."""
    fig = _figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for i, r in enumerate(r for r in doc["rows"] if any(r["history"])):
        color = f"C{i % 10}"
        for key, ax in (("val/NDCG@10", axes[0]), ("loss/total", axes[1])):
            curves = [[(h["epoch"], h[key]) for h in hist if key in h] for hist in r["history"]]
            curves = [c for c in curves if c]
            for c in curves:
                ax.plot(*zip(*c, strict=True), color=color, alpha=0.25, lw=0.8)
            if curves:
                n = min(len(c) for c in curves)
                mean = np.mean([[v for _, v in c[:n]] for c in curves], axis=0)
                ax.plot([e for e, _ in curves[0][:n]], mean, color=color, label=r["label"])
    axes[0].set(xlabel="epoch", ylabel="validation NDCG@10", title="Validation NDCG@10")
    axes[1].set(xlabel="epoch", ylabel="training loss (total)", title="Training loss")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


PLOTS = {"frontier": plot_frontier, "ablation_bars": plot_ablation_bars, "lorenz": plot_lorenz,
         "group_hr": plot_group_hr, "learning_curves": plot_learning_curves}


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


def write_report(paths: Sequence[str | Path], output: str | Path, base: str | None = None,
                 k: int | None = None, n_boot: int = 1000, seed: int = 0,
                 frontier: bool = True) -> dict[str, Any]:
    """Collect runs under ``paths``, write JSON/CSV/Markdown and the PNG plots."""
    out = Path(output)
    groups, unavailable = collect(paths)
    doc = build_report(groups, unavailable, base=base, k=k, n_boot=n_boot, seed=seed,
                       sources=paths, frontier=frontier)
    write_text_atomic(out / "ablation.json", json.dumps(doc, indent=2))
    write_text_atomic(out / "ablation.csv", to_csv(doc))
    write_text_atomic(out / "ablation.md", markdown(doc))
    figures = {name: fn(doc) for name, fn in PLOTS.items()}
    if doc.get("frontier"):
        figures["frontier_curves"] = plot_frontier_curves(doc["frontier"])
    for name, fig in figures.items():
        with atomic_write(out / f"{name}.png", "wb") as fh:
            fig.savefig(fh, format="png", dpi=110, bbox_inches="tight")
    return doc


def read_report(path: str | Path) -> dict[str, Any]:
    """Read an ``ablation.json`` (or the one in a folder), checking its schema."""
    return read_versioned_json(path, "ablation.json", REPORT_SCHEMA, REPORT_SCHEMA_VERSION,
                               "ablation report")
