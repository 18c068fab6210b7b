"""notebooks/results_analysis.ipynb executes headless on a tiny study, from its files."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from _tiny_study import SEEDS, tiny_study
from nbclient import NotebookClient

from marl_two_tower.study.results import read_results

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "results_analysis.ipynb"


def _kernel() -> str:
    from jupyter_client.kernelspec import KernelSpecManager

    if "python3" not in KernelSpecManager().find_kernel_specs():
        from ipykernel.kernelspec import install

        install(prefix=sys.prefix)  # the venv's own python3 kernel
    return "python3"


@pytest.mark.parametrize("start", ["repo root", "notebooks/"])
def test_notebook_executes_and_reads_the_runs(tmp_path_factory, tmp_path, monkeypatch, start):
    """Headless from the repository root and from notebooks/ (where nbconvert starts the
    kernel), with MTT_RUN_DIRS relative to the repository root as documented."""
    study = tiny_study(str(tmp_path_factory.getbasetemp()))
    figs = tmp_path / "figs"
    monkeypatch.setenv("MTT_RUN_DIRS", os.path.relpath(study, REPO))
    monkeypatch.setenv("MTT_FIGURE_DIR", str(figs))
    monkeypatch.setenv("MTT_N_BOOT", "50")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # no stored outputs: whatever it shows comes from this execution
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    NotebookClient(nb, timeout=300, kernel_name=_kernel(), resources={"metadata": {
        "path": str(REPO if start == "repo root" else NOTEBOOK.parent)}}).execute()
    for name in ("frontier", "ablation_bars", "lorenz", "group_hr", "learning_curves"):
        assert (figs / f"{name}.png").stat().st_size > 5000, name
        cell = next(c for c in nb.cells if f"plot-{name}" in c.metadata.get("tags", []))
        assert any("image/png" in o.get("data", {}) for o in cell.outputs), name
    # the benchmark frontiers of docs/frontier.md, from their committed JSON
    for stem in ("frontier_ml100k_transformer_3seeds", "frontier_ml-1m-ordered"):
        assert (figs / f"benchmark_{stem}.png").stat().st_size > 5000, stem
    bench = next(c for c in nb.cells if "plot-benchmark-frontiers" in c.metadata.get("tags", []))
    assert sum("image/png" in o.get("data", {}) for o in bench.outputs) == 2
    table_cell = next(c for c in nb.cells if "table" in c.metadata.get("tags", []))
    shown = next(o["data"]["application/json"] for o in table_cell.outputs
                 if "application/json" in o.get("data", {}))
    for key, label in (("base", "Base"), ("tail", "+Tail loss")):
        runs = [read_results(study / key / f"seed{s}")["metrics"]["test"]["full"] for s in SEEDS]
        for name in ("HR@10", "NDCG@10", "Gini@10", "Coverage@10", "TailHR@10"):
            assert shown[label][name] == pytest.approx(np.mean([r[name] for r in runs]), abs=1e-12)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "SIMULATED" in text
    assert "reference: Base;" in text  # the base two-tower, never a baseline
