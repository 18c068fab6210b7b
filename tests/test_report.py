"""Reports from run folders: numbers equal the runs' JSON, tests recomputed independently."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from _tiny_study import SEEDS, tiny_study
from scipy import stats

from marl_two_tower.cli.main import main
from marl_two_tower.eval.arrays import load_eval_arrays
from marl_two_tower.metrics import ranking as M
from marl_two_tower.study.report import PLOTS, build_report, collect, lorenz_curve, read_report
from marl_two_tower.study.results import read_results

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return tiny_study(str(tmp_path_factory.getbasetemp()))


def test_table_means_and_deltas_equal_the_runs_json(study):
    doc = read_report(study / "report")
    assert doc["base"] == "Base" and doc["k"] == 10
    rows = {r["label"]: r for r in doc["rows"]}
    assert set(rows) == {"Base", "+Tail loss", "mostpop", "itemknn", "bpr", "ease", "sasrec"}
    for key, label in (("base", "Base"), ("tail", "+Tail loss")):
        runs = [read_results(study / key / f"seed{s}") for s in SEEDS]
        for name in ("HR@10", "NDCG@10", "Gini@10", "Coverage@5", "MRR"):
            vals = [r["metrics"]["test"]["full"][name] for r in runs]
            m = rows[label]["metrics"][name]
            assert m["values"] == vals
            assert m["mean"] == pytest.approx(np.mean(vals), abs=1e-15)
            assert m["std"] == pytest.approx(np.std(vals, ddof=1), abs=1e-15)
    for name in doc["metrics"]:
        t, b = rows["+Tail loss"]["metrics"][name], rows["Base"]["metrics"][name]
        if t["mean"] is not None:
            assert t["delta"] == pytest.approx(t["mean"] - b["mean"], abs=1e-15)
    assert rows["Base"]["metrics"]["HR@10"]["p_value"] is None


def test_p_value_recomputed_from_the_stored_lists(study):
    doc = read_report(study / "report")
    tail = next(r for r in doc["rows"] if r["label"] == "+Tail loss")["metrics"]["HR@10"]

    def hits(key):
        per_seed = []
        for s in SEEDS:
            a = load_eval_arrays(study / key / f"seed{s}")
            per_seed.append(M.hit_positions(a.recs.astype(np.int64), a.targets, 10) > 0)
        return np.mean(per_seed, axis=0)

    x, y = hits("tail"), hits("base")
    if np.any(x != y):
        assert tail["p_wilcoxon"] == pytest.approx(stats.wilcoxon(x, y).pvalue)
        assert tail["p_ttest"] == pytest.approx(stats.ttest_rel(x, y).pvalue)
    else:
        assert tail["p_wilcoxon"] == 1.0
    assert tail["test"] == "wilcoxon" and tail["p_value"] == tail["p_wilcoxon"]
    cov = next(r for r in doc["rows"] if r["label"] == "+Tail loss")["metrics"]["Coverage@10"]
    assert cov["test"] == "bootstrap" and 0 < cov["p_value"] <= 1


def test_csv_markdown_and_plots(study):
    out = study / "report"
    doc = read_report(out)
    with open(out / "ablation.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(doc["rows"]) * len(doc["metrics"])
    r = next(r for r in rows if r["variant"] == "+Tail loss" and r["metric"] == "HR@10")
    m = next(x for x in doc["rows"] if x["label"] == "+Tail loss")["metrics"]["HR@10"]
    assert float(r["mean"]) == pytest.approx(m["mean"]) and float(r["p_value"]) == pytest.approx(
        m["p_value"])
    md = (out / "ablation.md").read_text()
    assert f"{m['mean']:.4f} ± {m['std']:.4f}" in md
    assert "| +Tail loss | 2 |" in md
    for name in PLOTS:
        data = (out / f"{name}.png").read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, name
    # the Lorenz curve data is the summed exposure of the stored lists
    expo = next(x for x in doc["rows"] if x["label"] == "Base")["exposure@10"]
    arrays = [load_eval_arrays(study / "base" / f"seed{s}") for s in SEEDS]
    assert expo == np.sum([a.exposure(10) for a in arrays], axis=0).tolist()


def test_identical_runs_report_no_difference(study, tmp_path):
    # the same run under two names: every delta is 0 and every p-value is 1
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(study / "tail" / "seed1", a)
    shutil.copytree(study / "tail" / "seed1", b)
    groups, _ = collect([a, b])
    doc = build_report(groups, base="a", n_boot=100)
    row = next(r for r in doc["rows"] if r["label"] == "b")
    for name, m in row["metrics"].items():
        if m["mean"] is None:
            continue
        assert m["delta"] == 0.0, name
        assert m["p_value"] == 1.0, name


def test_report_cli_on_run_folders(study, tmp_path, capsys):
    out = tmp_path / "rep"
    # a folder of seed runs is one group; a baseline folder another
    assert main(["report", str(study / "base"), str(study / "baselines" / "ease"),
                 "--output", str(out), "--n-boot", "50"]) == 0
    doc = json.loads((out / "ablation.json").read_text())
    assert [r["label"] for r in doc["rows"]] == ["base", "ease"]
    assert doc["rows"][0]["seeds"] == list(SEEDS) and doc["rows"][1]["kind"] == "baseline"
    assert "Mean ± std over seeds" in capsys.readouterr().out


def test_lorenz_curve():
    xs, ys = lorenz_curve([0, 0, 1, 3])
    assert xs.tolist() == [0, 0.25, 0.5, 0.75, 1.0]
    assert ys.tolist() == [0, 0, 0, 0.25, 1.0]


def test_study_report_keeps_variants_a_worker_did_not_list(study, tmp_path):
    # parallel workers each write study.json for their own variants: the report still
    # shows every finished variant, in ablation order
    s = tmp_path / "s"
    shutil.copytree(study, s)
    meta = json.loads((s / "study.json").read_text())
    meta["variants"] = [v for v in meta["variants"] if v["key"] == "tail"]
    (s / "study.json").write_text(json.dumps(meta))
    groups, _ = collect([s])
    assert [g.label for g in groups if g.kind == "variant"] == ["Base", "+Tail loss"]
    assert groups[1].components == ["tail_loss"]


def test_readers_refuse_foreign_and_newer_files(tmp_path) -> None:
    import json

    from marl_two_tower.study.report import REPORT_SCHEMA, REPORT_SCHEMA_VERSION, read_report
    from marl_two_tower.study.results import read_results

    (tmp_path / "results.json").write_text(json.dumps({"schema": "something-else"}))
    with pytest.raises(ValueError, match="not a marl-two-tower results file"):
        read_results(tmp_path)
    newer = {"schema": REPORT_SCHEMA, "schema_version": REPORT_SCHEMA_VERSION + 1}
    (tmp_path / "ablation.json").write_text(json.dumps(newer))
    with pytest.raises(ValueError, match="ablation report schema version .* is newer"):
        read_report(tmp_path)
    newer["schema_version"] = REPORT_SCHEMA_VERSION
    (tmp_path / "ablation.json").write_text(json.dumps(newer))
    assert read_report(tmp_path / "ablation.json") == newer


def test_frontier_section_recomputed_from_the_runs_candidates(study):
    from marl_two_tower.eval import frontier as F

    doc = read_report(study / "report")
    fr = doc["frontier"]
    rows = {r["label"]: r for r in fr["rows"]}
    assert {"Base", "Base + popularity penalty", "+Tail loss", "ease", "mostpop"} <= set(rows)
    assert fr["missing"] == [] and fr["knob"]["floor"] == 1
    runs = {key: [F.load_candidates(study / key / f"seed{s}") for s in SEEDS] for key in ("base", "tail")}
    settings = F.budget_curve(F.BUDGET_FACTORS, floor=1, k=10)
    base, tail = (F.frontier_of(key, runs[key], settings) for key in ("base", "tail"))
    for t in F.GINI_TARGETS:
        want = F.matched_summary(tail.matched[t], n_boot=doc["tests"]["n_boot"])
        got = rows["+Tail loss"]["matched"][f"{t:.2f}"]["HR@10"]
        assert got["value"] == pytest.approx(want["HR@10"]["value"], abs=1e-12)
        vs = rows["+Tail loss"]["vs_previous"][f"{t:.2f}"]
        ref = F.paired_matched(tail.matched[t], base.matched[t])
        assert vs["delta"] == pytest.approx(ref["delta"], abs=1e-12)
        assert vs["p_wilcoxon"] == pytest.approx(ref["p_wilcoxon"], abs=1e-12)
    assert "vs_previous" not in rows["Base"] and "vs_previous" not in rows["ease"]
    # every curve starts at the plain evaluation: the seed mean of the runs' own HR@10
    hr = [read_results(study / "base" / f"seed{s}")["metrics"]["test"]["full"]["HR@10"] for s in SEEDS]
    assert rows["Base"]["test"][0]["HR@10"] == pytest.approx(np.mean(hr), abs=1e-12)
    assert rows["Base + popularity penalty"]["test"][0] == rows["Base"]["test"][0]
    md = (study / "report" / "ablation.md").read_text()
    assert "HR@10 at matched Gini@10" in md and "| +Tail loss |" in md.split("matched Gini")[1]
    assert (study / "report" / "frontier_curves.png").read_bytes()[:8] == PNG
