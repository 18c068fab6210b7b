"""Does the embedded synthetic data have the structure of real data? (issue 16, point 1)

    .venv/bin/python benchmarks/synthetic_realism.py --stats-only     # ~20 s: data statistics
    .venv/bin/python benchmarks/synthetic_realism.py --fit            # ~5-10 min: calibration
    .venv/bin/python benchmarks/synthetic_realism.py --models         # model orders (long)

All parts read ML-100K from ``--data`` (default ``$MARL_TWO_TOWER_DATA/ml-100k`` or
``../shared/data/ml-100k``) and update their own section of
``benchmarks/results/synthetic_realism.json`` (the other sections are kept):

* ``profiles`` (``--stats-only``, also run by the other parts):
  :func:`marl_two_tower.metrics.data_profile.data_profile` of ML-100K, of the generator at
  ML-100K's size (943 users, 1682 items, 106 interactions per user, default knobs)
  and of the demo's data (``study/demo.py demo_config``).
* ``fit`` (``--fit``): the calibration behind the generator's defaults. Coordinate
  search, two rounds, over the structure knobs (each on a grid), minimising the sum
  of squared scaled errors between the generated (ML-100K size) and ML-100K
  statistics in :data:`TARGETS`; prints and stores the best knobs. The defaults of
  ``SyntheticConfig`` are these values, rounded.
* ``models`` (``--models``): MostPop, ItemKNN, BPR-MF, EASE, the SASRec reference,
  the base two-tower and the full model (every component) trained and evaluated on
  ML-100K (``configs/ml100k.yaml`` / ``configs/ablation.yaml`` settings and the
  baselines' defaults, as in docs/results.md) and on the demo's data (exactly the
  demo's settings, its ``BASELINE_PARAMS`` included); the order of
  the models by test HR@10 and by Gini@10 on each, and the Spearman rank correlation
  between the two orders. One model at a time, ``train.num_threads=--threads``; a
  model already in the JSON for the same data fingerprint and settings is reused
  (``--force`` retrains).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("MARL_TWO_TOWER_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "benchmarks" / "results" / "synthetic_realism.json"
ML100K_SIZE = {"n_users": 943, "n_items": 1682, "interactions_per_user": 106.0}

# statistic -> scale of its error in the calibration loss (error / scale, squared)
TARGETS: dict[str, float] = {
    "pop_gini": 0.02, "top10_share": 0.02, "top1_share": 0.01, "items_under_5": 0.03,
    "len_median": 5.0, "len_p90": 15.0, "genres_per_item": 0.05,
    "log_sequential_lift": 0.1, "log_lift_lag.3": 0.1, "log_lift_lag.8": 0.1,
    "successor_hit": 0.01, "genre_cos_lift_by_lag.1": 0.02, "genre_cos_lift_by_lag.8": 0.02,
    "pop_distance_ratio_by_lag.1": 0.02, "pop_distance_ratio_by_lag.8": 0.02, "drift_gap": 0.01,
    "recency_gain_3": 0.05, "recency_gain_10": 0.05,
    "agegender_excess_kl.5-19": 0.02, "agegender_excess_kl.20-99": 0.02,
    "agegender_excess_kl.100+": 0.02, "occupation_excess_kl.5-19": 0.02,
    "occupation_excess_kl.20-99": 0.02, "occupation_excess_kl.100+": 0.02,
}
# knob -> grid of the calibration search (the first generator's value is in each grid)
GRID: dict[str, list[float]] = {
    "popularity_sigma": [1.6, 1.8, 2.0, 2.1, 2.2, 2.3, 2.4, 2.6],
    "demographic_shift": [1.0, 1.5, 2.0, 2.5, 3.0],
    "history_spread": [0.8, 1.0, 1.1, 1.2, 1.3, 1.4],
    "extra_genre_prob": [0.3, 0.4, 0.45, 0.5, 0.55],
    "transition_prob": [0.0, 0.05, 0.1, 0.15, 0.2, 0.3],
    "episode_length": [1.0, 10.0, 20.0, 40.0, 60.0, 100.0],
    "transition_successors": [4, 8, 16],
    "taste_drift": [0.0, 1.0, 2.0, 3.0, 4.0, 6.0],
    "genre_drift": [0.0, 0.5, 1.0, 2.0],
    "niche_fraction": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
    "niche_rate": [0.0, 0.01, 0.02, 0.03, 0.05, 0.08],
}
# knobs searched jointly (they act on the same statistics)
JOINT = [("niche_fraction", "niche_rate"), ("transition_prob", "episode_length")]
# The demo's order knobs (--fit-demo; an experiment, not applied: docs/data.md). The
# order statistics of TARGETS come out weaker on the demo's smaller world (800 x 700,
# ~49 items per user) than at ML-100K's size with the same knobs (lag-1 lift 1.86 vs
# 3.34), so the two knobs are refitted at the demo's size to the *order gain*: test
# HR@10 of SASRec (FIT_DEMO_SASREC) on train histories in time order over the same on
# shuffled histories, measured the same way on ML-100K (:func:`order_gain`); points
# within 0.05 of the closest gain go to the lower statistics loss. (With the demo's
# SASRec of 20 epochs at lr 1e-3, the gain was ~1.0 on most of the grid: it stopped
# before learning the order.)
FIT_DEMO_SASREC: dict[str, Any] = {"max_len": 50, "epochs": 40, "lr": 0.003}
ORDER_TARGETS = [k for k in TARGETS if k.startswith(("log_", "successor", "genre_cos",
                                                      "pop_distance", "recency"))]
DEMO_GRID: dict[str, list[float]] = {"transition_prob": [0.15, 0.2, 0.25],
                                     "episode_length": [20.0, 40.0, 60.0]}


def stat(profile: dict[str, Any], key: str) -> float:
    """A (possibly derived or nested) statistic of a profile."""
    if key == "log_sequential_lift":
        return float(np.log(max(profile["sequential_lift"], 1e-6)))
    if key.startswith("log_lift_lag."):
        return float(np.log(max(profile["sequential_lift_by_lag"][key.split(".", 1)[1]], 1e-6)))
    if "." in key:
        outer, inner = key.split(".", 1)
        value = profile[outer][inner]
        return float("nan") if value is None else float(value)
    return float(profile[key])


def loss(profile: dict[str, Any], target: dict[str, Any], keys: list[str] | None = None) -> float:
    """Sum over :data:`TARGETS` (or its ``keys``) of ((generated - real) / scale)^2."""
    total = 0.0
    for key in keys or TARGETS:
        err = (stat(profile, key) - stat(target, key)) / TARGETS[key]
        total += err * err if np.isfinite(err) else 1e6
    return total


def load_results() -> dict[str, Any]:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def save_section(name: str, value: Any) -> None:
    """Replace one section of the results JSON (atomically), keeping the others."""
    from marl_two_tower.utils.io import to_jsonable, write_text_atomic

    doc = load_results()
    doc[name] = value
    doc["commands"] = {"stats": "benchmarks/synthetic_realism.py --stats-only",
                       "fit": "benchmarks/synthetic_realism.py --fit",
                       "fit_demo": "benchmarks/synthetic_realism.py --fit-demo",
                       "models": "benchmarks/synthetic_realism.py --models"}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(RESULTS, json.dumps(to_jsonable(doc), indent=1, sort_keys=True) + "\n")


def ml100k_dataset(data: Path):
    from marl_two_tower.config import DataConfig
    from marl_two_tower.data import load_dataset

    return load_dataset(DataConfig(source="ml-100k", path=str(data)))


def synthetic_at_ml100k_size(**knobs: Any):
    from marl_two_tower.config import SyntheticConfig
    from marl_two_tower.data.synthetic import generate

    return generate(SyntheticConfig(**{**ML100K_SIZE, **knobs}))


def demo_data_config():
    from marl_two_tower.study.demo import demo_config

    return demo_config(Path("/tmp/mtt-realism"), quick=False).data


def profiles(data: Path) -> dict[str, Any]:
    """Profiles of ML-100K, the generator at ML-100K size, and the demo's data."""
    from marl_two_tower.data import load_dataset
    from marl_two_tower.metrics.data_profile import data_profile

    demo_cfg = demo_data_config()
    out = {"ml-100k": data_profile(ml100k_dataset(data)),
           "synthetic@ml-100k-size": data_profile(synthetic_at_ml100k_size()),
           "demo": data_profile(load_dataset(demo_cfg))}
    out["demo"]["synthetic_config"] = dataclasses.asdict(demo_cfg.synthetic)
    return out


def fit(data: Path, rounds: int = 2) -> dict[str, Any]:
    """Coordinate search of the structure knobs (see the module docstring)."""
    from marl_two_tower.config import SyntheticConfig
    from marl_two_tower.metrics.data_profile import data_profile

    target = data_profile(ml100k_dataset(data))
    best = {k: getattr(SyntheticConfig(), k) for k in GRID}
    cache: dict[tuple, float] = {}

    def evaluate(knobs: dict[str, Any]) -> float:
        key = tuple(sorted(knobs.items()))
        if key not in cache:
            cache[key] = loss(data_profile(synthetic_at_ml100k_size(**knobs)), target)
        return cache[key]

    groups = [*JOINT, *[(k,) for k in GRID if not any(k in j for j in JOINT)]]
    trace = []
    for r in range(rounds):
        for group in groups:
            grids = np.meshgrid(*[GRID[k] for k in group], indexing="ij")
            kinds = [type(getattr(SyntheticConfig(), k)) for k in group]
            options = [{k: kind(v) for k, kind, v in zip(group, kinds, vals, strict=True)}
                       for vals in zip(*[g.ravel() for g in grids], strict=True)]
            scored = [(evaluate({**best, **opt}), opt) for opt in options]
            value, opt = min(scored, key=lambda s: s[0])
            best.update(opt)
            trace.append({"round": r, "knobs": list(group), "chose": opt, "loss": value})
            print(f"round {r} {group}: {opt} loss {value:.2f}", flush=True)
    generated = data_profile(synthetic_at_ml100k_size(**best))
    return {"best": best, "loss": evaluate(best), "trace": trace, "targets": TARGETS,
            "grid": GRID, "generated": {k: stat(generated, k) for k in TARGETS},
            "real": {k: stat(target, k) for k in TARGETS}}


def order_gain(split, params: dict[str, Any]) -> dict[str, float]:
    """Test HR@10 (full ranking) of SASRec(``params``) fitted on ``split`` as is and
    with every user's train items shuffled (validation and test targets untouched),
    and their ratio ``gain``: how much of SASRec's accuracy the order carries."""
    import copy

    from marl_two_tower.baselines import SASRec
    from marl_two_tower.eval.protocols import evaluate

    row: dict[str, float] = {}
    for variant in ("ordered", "train_shuffled"):
        s = split
        if variant == "train_shuffled":
            s = copy.copy(split)
            rng = np.random.default_rng(0)
            owner = np.repeat(np.arange(s.n_users), np.diff(s.train_indptr))
            s.train_items = s.train_items[np.lexsort((rng.random(len(owner)), owner))]
        model = SASRec(**params).fit(s)
        row[variant] = evaluate(s, model.score, "test", ks=(10,), protocol="full",
                                groups=False)["full"]["HR@10"]
    row["gain"] = row["ordered"] / max(row["train_shuffled"], 1e-12)
    return row


def fit_demo(data: Path, threads: int) -> dict[str, Any]:
    """The demo's order knobs: the :data:`DEMO_GRID` point whose SASRec order gain
    (:func:`order_gain` with :data:`FIT_DEMO_SASREC`) is closest to ML-100K's; within
    0.05 of the closest, the lowest statistics loss over :data:`ORDER_TARGETS`."""
    import torch

    from marl_two_tower.config import DataConfig
    from marl_two_tower.data import load_split
    from marl_two_tower.metrics.data_profile import data_profile

    torch.set_num_threads(max(threads, 1))
    params = FIT_DEMO_SASREC
    real_split = load_split(DataConfig(source="ml-100k", path=str(data)))
    target = data_profile(real_split.dataset)
    real = order_gain(real_split, params)
    print(f"demo fit: ML-100K order gain {real['gain']:.3f} ({real})", flush=True)
    base = demo_data_config()
    scored = []
    for tp in DEMO_GRID["transition_prob"]:
        for el in DEMO_GRID["episode_length"]:
            knobs = {"transition_prob": tp, "episode_length": el}
            cfg = dataclasses.replace(base, synthetic=dataclasses.replace(base.synthetic, **knobs))
            split = load_split(cfg)
            prof = data_profile(split.dataset)
            row = order_gain(split, params)
            scored.append({"knobs": knobs, **row, "loss": loss(prof, target, ORDER_TARGETS),
                           "generated": {k: stat(prof, k) for k in ORDER_TARGETS}})
            print(f"demo fit {knobs}: order gain {row['gain']:.3f} (HR@10 {row['ordered']:.4f} "
                  f"vs {row['train_shuffled']:.4f}), statistics loss {scored[-1]['loss']:.1f}",
                  flush=True)
    closest = min(abs(r["gain"] - real["gain"]) for r in scored)
    best = min((r for r in scored if abs(r["gain"] - real["gain"]) <= closest + 0.05),
               key=lambda r: r["loss"])
    return {"best": best["knobs"], "sasrec_params": params, "ml-100k": real, "grid": DEMO_GRID,
            "scored": scored, "targets": {k: TARGETS[k] for k in ORDER_TARGETS},
            "real": {k: stat(target, k) for k in ORDER_TARGETS},
            "size": {k: getattr(base.synthetic, k) for k in ("n_users", "n_items",
                                                             "interactions_per_user")}}


MODELS = ["MostPop", "ItemKNN", "BPR-MF", "EASE", "SASRec", "base", "full"]
_BASELINE_KEYS = {"MostPop": "mostpop", "ItemKNN": "itemknn", "BPR-MF": "bpr", "EASE": "ease",
                  "SASRec": "sasrec"}
KEYS = ["HR@10", "NDCG@10", "Coverage@10", "Gini@10", "TailHR@10"]


def model_configs(dataset: str, data: Path, threads: int, out: Path) -> dict[str, Any]:
    """The configs of every model on ``dataset`` ('ml-100k' or 'demo').

    ML-100K: ``configs/ml100k.yaml`` (base) and ``configs/ablation.yaml`` with every
    component on (full), as in docs/results.md. Demo: ``study/demo.py demo_config``, the
    demo's own settings (its full model = every component on the same settings).
    """
    from marl_two_tower.config import load_config
    from marl_two_tower.model.build import COMPONENTS
    from marl_two_tower.study.demo import demo_config

    on = [f"{c}.enabled=true" for c in COMPONENTS]
    runs = out / dataset
    common = [f"train.num_threads={threads}", f"output_dir={runs}"]

    def run(name: str) -> list[str]:
        return [*common, f"name={name}", f"checkpoint_dir={runs / 'checkpoints' / name}"]

    if dataset == "ml-100k":
        real = [f"data.path={data}", "seed=42"]
        return {"baselines": load_config("ml100k.yaml", [*real, *run("baselines")]),
                "base": load_config("ml100k.yaml", [*real, *run("two_tower_base")]),
                "full": load_config("ablation.yaml", [*real, *on, *run("two_tower_full")])}
    try:  # the demo's own baseline settings (e.g. its shorter SASRec), where it has them
        from marl_two_tower.study.demo import BASELINE_PARAMS
    except ImportError:
        BASELINE_PARAMS = {}
    return {"baseline_params": BASELINE_PARAMS,
            "baselines": demo_config(runs, False, "baselines", common),
            "base": demo_config(runs, False, "two_tower_base", run("two_tower_base")),
            "full": demo_config(runs, False, "two_tower_full", [*run("two_tower_full"), *on])}


def train_one(model: str, cfgs: dict[str, Any], split) -> dict[str, Any]:
    """Fit (or train) one model and evaluate it once on test (full ranking)."""
    import torch

    from marl_two_tower.study.run import evaluate_model, train_and_evaluate

    t0 = time.perf_counter()
    if model in ("base", "full"):
        cfg = cfgs[model]
        torch.set_num_threads(max(cfg.train.num_threads, 1))
        _, doc = train_and_evaluate(cfg, progress=False, split=split)
        metrics = doc["metrics"]["test"]["full"]
        extra = {"best_epoch": doc.get("extra", {}).get("best_epoch")}
    else:
        from marl_two_tower.baselines import BASELINES

        cfg = cfgs["baselines"]
        torch.set_num_threads(max(cfg.train.num_threads, 1))
        params = cfgs.get("baseline_params", {}).get(_BASELINE_KEYS[model], {})
        from marl_two_tower.eval.scorers import part_scorers

        fitted = BASELINES[_BASELINE_KEYS[model]](**params).fit(split)
        # the study's and the demo's scorer: for test the history is train + the
        # validation item (eval.test_history), as for the two-tower runs
        metrics = evaluate_model(split, part_scorers(fitted, split, cfg)["test"], cfg, "test",
                                 protocol="full", groups=False)["full"]
        extra = {}
    return {"metrics": {k: metrics.get(k) for k in KEYS}, "seconds": time.perf_counter() - t0,
            **extra}


def settings_key(model: str, cfgs: dict[str, Any]) -> str:
    """What must match to reuse a stored result: the config the model trains under."""
    import hashlib

    from marl_two_tower.config import fingerprint_config

    cfg = cfgs[model] if model in ("base", "full") else cfgs["baselines"]
    fp = fingerprint_config(cfg)
    if fp["data"]["source"] != "synthetic":  # the generator's knobs do not touch real data
        fp["data"] = {k: v for k, v in fp["data"].items() if k != "synthetic"}
    if model not in ("base", "full"):  # a baseline reads the data and its own settings only
        fp = {"data": fp["data"], "test_history": cfg.eval.test_history,
              "params": cfgs.get("baseline_params", {}).get(_BASELINE_KEYS[model], {})}
    text = json.dumps(fp, sort_keys=True, default=str)
    return hashlib.sha256(f"{model}:{text}".encode()).hexdigest()[:16]


def order_of(rows: dict[str, dict[str, Any]], key: str, descending: bool) -> list[str]:
    """Model names sorted by ``key`` (best first: descending HR, ascending Gini)."""
    return sorted(rows, key=lambda m: (-rows[m][key] if descending else rows[m][key], m))


def spearman(a: dict[str, float], b: dict[str, float]) -> float:
    """Spearman rank correlation of two scores over their common models (average
    ranks for ties)."""
    from scipy.stats import spearmanr

    common = sorted(set(a) & set(b))
    return float(spearmanr([a[m] for m in common], [b[m] for m in common]).statistic)


def run_models(data: Path, threads: int, force: bool, only: list[str] | None,
               datasets: tuple[str, ...] = ("ml-100k", "demo")) -> dict[str, Any]:
    """Train/evaluate every model on ``datasets``, one at a time (the stored rows of the
    other dataset are kept as they are); compare the orders."""
    from marl_two_tower.data import load_split

    doc = load_results().get("models", {})
    out = Path("/tmp/mtt-realism")
    for dataset in datasets:
        cfgs = model_configs(dataset, data, threads, out)
        split = load_split(cfgs["base"].data)
        fp = split.dataset.fingerprint()
        stored = doc.setdefault(dataset, {"rows": {}})
        stored["data"] = {"name": split.dataset.name, "fingerprint": fp,
                          "n_users": split.n_users, "n_items": split.n_items,
                          "n_interactions": split.dataset.n_interactions}
        for model in only or MODELS:
            key = settings_key(model, cfgs)
            old = stored["rows"].get(model)
            if old and not force and old.get("fingerprint") == fp and old.get("settings") == key:
                print(f"{dataset:8s} {model:8s} reused", flush=True)
                continue
            try:
                row = train_one(model, cfgs, split)
            except Exception as exc:  # a model that does not run is reported, not fatal
                print(f"{dataset:8s} {model:8s} FAILED: {exc!r}", flush=True)
                stored["rows"][model] = {"error": repr(exc), "fingerprint": fp, "settings": key}
                save_section("models", {**doc, **summarise(doc)})
                continue
            stored["rows"][model] = {**row, "fingerprint": fp, "settings": key}
            m = row["metrics"]
            print(f"{dataset:8s} {model:8s} HR@10 {m['HR@10']:.4f} Gini@10 {m['Gini@10']:.4f} "
                  f"({row['seconds']:.0f}s)", flush=True)
            save_section("models", {**doc, **summarise(doc)})  # progress survives an interrupt
    doc.update(summarise(doc))
    return doc


def order_check(data: Path, threads: int) -> dict[str, Any]:
    """Does the order of the train histories help a sequence model? :func:`order_gain`
    of the demo's SASRec on ML-100K and on the demo's data."""
    import torch

    from marl_two_tower.data import load_split

    torch.set_num_threads(max(threads, 1))
    cfgs = {"ml-100k": model_configs("ml-100k", data, threads, Path("/tmp/mtt-realism")),
            "demo": model_configs("demo", data, threads, Path("/tmp/mtt-realism"))}
    params = cfgs["demo"].get("baseline_params", {}).get("sasrec", {})
    out: dict[str, Any] = {"model": "SASRec", "params": params}
    for name, c in cfgs.items():
        out[name] = order_gain(load_split(c["base"].data), params)
        print(f"order check {name:8s} {out[name]}", flush=True)
    return out


def summarise(doc: dict[str, Any]) -> dict[str, Any]:
    """Orders by HR@10 and Gini@10 on each dataset and their Spearman correlations."""
    scores = {ds: {m: r["metrics"] for m, r in doc.get(ds, {}).get("rows", {}).items()
                   if "metrics" in r} for ds in ("ml-100k", "demo")}
    common = sorted(set(scores["ml-100k"]) & set(scores["demo"]))
    summary: dict[str, Any] = {"models_compared": common}
    for key, desc in (("HR@10", True), ("Gini@10", False)):
        for ds in ("ml-100k", "demo"):
            summary[f"order_{key}_{ds}"] = order_of({m: scores[ds][m] for m in common}, key, desc)
        summary[f"spearman_{key}"] = (spearman({m: scores["ml-100k"][m][key] for m in common},
                                               {m: scores["demo"][m][key] for m in common})
                                      if len(common) >= 3 else None)
    return {"summary": summary}


STAT_ROWS = [("interactions", "n_interactions", "{:,}"), ("density", "density", "{:.3f}"),
             ("Gini of item popularity", "pop_gini", "{:.3f}"),
             ("share of the top 10% items", "top10_share", "{:.3f}"),
             ("share of the top 1% items", "top1_share", "{:.3f}"),
             ("items with < 5 interactions", "items_under_5", "{:.3f}"),
             ("history length min / median / p90 / max", ("len_min", "len_median", "len_p90", "len_max"),
              "{:.0f}"),
             ("genres per item", "genres_per_item", "{:.2f}"),
             ("top-3 genre shares", ("genre_shares", 3), "{:.3f}"),
             ("successor hit (real order / shuffled)", ("successor_hit", "successor_hit_shuffled"),
              "{:.3f}"),
             ("sequential lift", "sequential_lift", "{:.2f}"),
             ("sequential lift at lags 3 / 8 / 13", ("sequential_lift_by_lag", "3", "8", "13"), "{:.2f}"),
             ("genre cosine lift at lags 1 / 8", ("genre_cos_lift_by_lag", "1", "8"), "{:.3f}"),
             ("popularity distance ratio at lags 1 / 8", ("pop_distance_ratio_by_lag", "1", "8"),
              "{:.3f}"),
             ("recency kNN HR@10: last 3 / last 10 / all items", ("recency_knn_hr", "3", "10", "all"),
              "{:.3f}"),
             ("drift gap", "drift_gap", "{:.3f}"),
             ("popularity percentile, first / last tenth of histories",
              ("pop_first_decile", "pop_last_decile"), "{:.3f}"),
             ("excess KL gender x age (5-19 / 20-99 / 100+)", ("agegender_excess_kl",), "{:.3f}"),
             ("excess KL occupation (5-19 / 20-99 / 100+)", ("occupation_excess_kl",), "{:.3f}")]


def _cell(profile: dict[str, Any], key: Any, fmt: str) -> str:
    if isinstance(key, str):
        return fmt.format(profile[key])
    if len(key) == 2 and isinstance(key[1], int):
        return " / ".join(fmt.format(v) for v in profile[key[0]][: key[1]])
    if isinstance(profile.get(key[0]), dict) and len(key) > 1:  # named entries of a dict
        return " / ".join(fmt.format(profile[key[0]][k]) for k in key[1:])
    if len(key) == 1:  # popularity bands, in BANDS order (the JSON sorts keys)
        from marl_two_tower.metrics.data_profile import BANDS

        vals = [profile[key[0]][band] for band in BANDS]
        return " / ".join("n/a" if v is None else fmt.format(v) for v in vals)
    return " / ".join(fmt.format(profile[k]) for k in key)


def markdown_tables(doc: dict[str, Any]) -> str:
    """The statistics table and the model-order table of docs/data.md, from the JSON."""
    prof = doc["profiles"]
    cols = ["ml-100k", "synthetic@ml-100k-size", "demo"]
    sizes = {c: f"{prof[c]['n_users']} x {prof[c]['n_items']}" for c in cols}
    lines = ["| statistic | ML-100K | synthetic (ML-100K size) | demo data |", "|---|---|---|---|",
             "| users x items | " + " | ".join(sizes[c] for c in cols) + " |"]
    for label, key, fmt in STAT_ROWS:
        lines.append(f"| {label} | " + " | ".join(_cell(prof[c], key, fmt) for c in cols) + " |")
    models = doc.get("models")
    if models:
        summ = models["summary"]
        names = summ["models_compared"]
        lines += ["", "| model | ML-100K HR@10 | demo HR@10 | ML-100K Gini@10 | demo Gini@10 |",
                  "|---|---|---|---|---|"]
        for m in names:
            a, b = models["ml-100k"]["rows"][m]["metrics"], models["demo"]["rows"][m]["metrics"]
            lines.append(f"| {m} | {a['HR@10']:.4f} | {b['HR@10']:.4f} | {a['Gini@10']:.4f} | "
                         f"{b['Gini@10']:.4f} |")
        lines += ["", f"Order by HR@10 (best first): ML-100K {' > '.join(summ['order_HR@10_ml-100k'])}; "
                      f"demo {' > '.join(summ['order_HR@10_demo'])}. "
                      f"Spearman rank correlation {summ['spearman_HR@10']:.2f}.",
                  "",
                  f"Order by Gini@10 (most even first): ML-100K {' < '.join(summ['order_Gini@10_ml-100k'])}; "
                  f"demo {' < '.join(summ['order_Gini@10_demo'])}. "
                  f"Spearman rank correlation {summ['spearman_Gini@10']:.2f}."]
    check = doc.get("order_check")
    if check:
        lines += ["", "| SASRec (demo settings), test HR@10 | ML-100K | demo data |", "|---|---|---|"]
        for variant, label in (("ordered", "train histories in time order"),
                               ("train_shuffled", "train histories shuffled")):
            lines.append(f"| {label} | {check['ml-100k'][variant]:.4f} | {check['demo'][variant]:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA / "ml-100k"), help="ML-100K folder")
    ap.add_argument("--stats-only", action="store_true", help="only the data statistics")
    ap.add_argument("--fit", action="store_true", help="the calibration search")
    ap.add_argument("--fit-demo", action="store_true",
                    help="the demo's order knobs, refitted at its size to ML-100K's SASRec order "
                         "gain (study/demo.py's values; ~10 min)")
    ap.add_argument("--models", action="store_true", help="the model orders (trains models)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--force", action="store_true", help="retrain models already in the JSON")
    ap.add_argument("--order-check", action="store_true",
                    help="SASRec on ordered vs shuffled train histories, both datasets")
    ap.add_argument("--tables", action="store_true",
                    help="print the Markdown tables of docs/data.md from the JSON and exit")
    ap.add_argument("--only", nargs="*", choices=MODELS, default=None,
                    help="models to (re)run (default all)")
    ap.add_argument("--datasets", nargs="+", choices=["ml-100k", "demo"],
                    default=["ml-100k", "demo"], help="datasets of --models (default both)")
    args = ap.parse_args(argv)
    if args.tables:
        print(markdown_tables(load_results()))
        return 0
    data = Path(args.data)
    if not (data / "u.data").is_file():
        print(f"error: {data}: no ML-100K u.data (set --data or MARL_TWO_TOWER_DATA)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    if args.fit:
        save_section("fit", fit(data))
    if args.fit_demo:
        save_section("fit_demo", fit_demo(data, args.threads))
    save_section("profiles", profiles(data))
    if args.order_check:
        save_section("order_check", order_check(data, args.threads))
    if args.models:
        result = run_models(data, args.threads, args.force, args.only, tuple(args.datasets))
        save_section("models", result)
        for key, value in result["summary"].items():
            print(f"{key}: {value}")
    print(f"done in {time.perf_counter() - t0:.0f}s: {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
