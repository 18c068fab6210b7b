"""The demo prints no number it did not compute, one compact table, and ends with its
plots (issue 16, points 2 and 6).

Every number token of the demo's output must be (a) a cell of the results table that
equals, at the printed precision, the model's metric in its own ``results.json``; (b)
a time, written as ``<number> s`` (or in the ``time (s)`` column); or (c) a value the
demo wrote to one of its ``results.json`` files (data counts). A typed-in claim such as
"HR@10 0.157 vs 0.149" fails (c).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from marl_two_tower.study import demo

NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?%?")


def _numbers(obj, out: set[str]) -> set[str]:
    """Every number in a JSON document, as the texts it prints as (0 to 4 decimals)."""
    if isinstance(obj, dict):
        for v in obj.values():
            _numbers(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _numbers(v, out)
    elif isinstance(obj, bool):
        pass
    elif isinstance(obj, int):
        out.add(str(obj))
    elif isinstance(obj, float):
        out |= {f"{obj:.{p}f}" for p in range(5)}
    return out


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "runs"
    capture = pytest.MonkeyPatch()
    import io
    import sys

    buf = io.StringIO()
    capture.setattr(sys, "stdout", buf)
    try:
        rows = demo.run_demo(out, quick=True)
    finally:
        capture.undo()
    return out, buf.getvalue(), rows


def _docs(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/results.json")}


def test_demo_output_has_no_number_it_did_not_compute(quick_demo):
    out, text, rows = quick_demo
    docs = _docs(out)
    labels = {**{r: r for r in docs}, **{v: k for k, v in demo.TWO_TOWER.items()}}
    table = [ln for ln in text.splitlines() if ln.startswith("|")]
    head = [c.strip() for c in table[0].strip("|").split("|")]
    assert head == ["model", *demo.TABLE_KEYS, "time (s)"]
    assert len(table) == 2 + len(rows) == 2 + len(docs)  # one table, one row per run folder
    checked = 0
    for line in table[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        full = docs[labels[cells[0]]]["metrics"]["test"]["full"]
        for key, cell in zip(head[1:-1], cells[1:-1], strict=True):
            assert cell == f"{full[key]:.4f}", (cells[0], key, cell)
            checked += 1
        assert NUMBER.fullmatch(cells[-1])  # the time column
    assert checked == len(docs) * len(demo.TABLE_KEYS)
    allowed: set[str] = set()
    for doc in docs.values():
        _numbers(doc["run"]["data"], allowed)
        _numbers(doc["metrics"], allowed)
    free = []
    for line in text.splitlines():
        if line.startswith("|"):
            continue
        tokens = line.split()
        for i, tok in enumerate(tokens):
            t = tok.strip(",;:()")
            if not NUMBER.fullmatch(t):
                continue  # words, paths (/tmp/pytest-3/...), metric names (HR@10)
            if i + 1 < len(tokens) and tokens[i + 1].strip(",;:()") == "s":
                continue  # a time, stated as one
            free.append(t)
            assert t in allowed, f"{t!r} in {line!r} is in none of the demo's results files"
    assert free  # the data line's counts were checked, not skipped
    assert "as accurate as" not in text


def test_demo_ends_with_its_plots(quick_demo):
    out, text, _ = quick_demo
    report = out / "report"
    for name in ("frontier", "ablation_bars", "lorenz"):
        png = report / f"{name}.png"
        assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
        assert str(png) in text
    doc = json.loads((report / "ablation.json").read_text())
    assert doc["base"] in ("two_tower_base", "two-tower (base)") or \
        doc["rows"][0]["key"] == "two_tower_base"
    tail = text.strip().splitlines()
    assert tail[-3].startswith("plots") and tail[-1].startswith("demo wall time: ")
    assert (out / "summary.md").read_text().count("| model |") == 1


def test_second_process_gives_the_numbers_of_one(quick_demo, tmp_path):
    """jobs=2 (the default: the full model in a spawned worker) and jobs=1 (everything
    in this process, in turn) write the same metrics for every run."""
    out, _, rows = quick_demo
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()) as buf:
        serial = demo.run_demo(tmp_path / "serial", quick=True, jobs=1)
    assert "second process" not in buf.getvalue()
    assert [r["model"] for r in serial] == [r["model"] for r in rows]
    for a, b in zip(rows, serial, strict=True):
        assert {k: a[k] for k in demo.TABLE_KEYS} == {k: b[k] for k in demo.TABLE_KEYS}, a["model"]
    docs, docs1 = _docs(out), _docs(tmp_path / "serial")
    assert docs["two_tower_full"]["metrics"] == docs1["two_tower_full"]["metrics"]


def test_one_core_runs_everything_in_this_process(monkeypatch, tmp_path):
    """jobs=2 on a one-core machine starts no second process."""
    import contextlib
    import io

    monkeypatch.setattr(demo, "available_cores", lambda: 1)
    started = []
    import concurrent.futures

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor",
                        lambda *a, **k: started.append(a) or (_ for _ in ()).throw(AssertionError))
    with contextlib.redirect_stdout(io.StringIO()) as buf:
        demo.run_demo(tmp_path / "one", quick=True, jobs=2)
    assert started == [] and "second process" not in buf.getvalue()
