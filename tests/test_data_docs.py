"""The worked examples of docs/data.md run as written (issue 16, point 8).

Each ``### Example: ...`` section of the page runs in a fresh folder: its fenced
blocks tagged ``file=<path>`` are written there, then its ``pycon`` blocks run as
doctests (the shown output must match) and its ``bash run`` blocks as bash scripts
(``set -e``; the package's console scripts on PATH).
"""

from __future__ import annotations

import doctest
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "data.md"
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```\s*$", re.S | re.M)


def examples() -> dict[str, list[tuple[str, str, int]]]:
    """Example title -> its fenced blocks (info string, body, line) in page order."""
    text = DOC.read_text(encoding="utf-8")
    heads = [(m.start(), m.group(1)) for m in re.finditer(r"^### Example: (.+)$", text, re.M)]
    ends = [m.start() for m in re.finditer(r"^##+ ", text, re.M)]
    out: dict[str, list[tuple[str, str, int]]] = {}
    for start, title in heads:
        stop = min([e for e in ends if e > start] + [len(text)])
        section = text[start:stop]
        out[title] = [(m.group(1).strip(), m.group(2), text.count("\n", 0, start + m.start()) + 1)
                      for m in FENCE.finditer(section)]
    return out


EXAMPLES = examples()


def test_one_example_per_format():
    titles = " ".join(EXAMPLES).lower()
    assert "csv" in titles and "parquet" in titles and "movielens" in titles
    for blocks in EXAMPLES.values():
        assert any(info == "pycon" for info, _, _ in blocks)


def _run_pycon(body: str, name: str, line: int, cwd: Path) -> None:
    parser = doctest.DocTestParser()
    test = parser.get_doctest(body, {}, name, str(DOC), line)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    out: list[str] = []
    old = os.getcwd()
    os.chdir(cwd)
    try:
        runner.run(test, out=out.append)
    finally:
        os.chdir(old)
    assert runner.failures == 0, f"docs/data.md:{line} ({name}):\n" + "".join(out)


@pytest.mark.parametrize("title", list(EXAMPLES))
def test_example_runs(title, tmp_path):
    blocks = EXAMPLES[title]
    for info, body, _ in blocks:
        match = re.search(r"\bfile=(\S+)", info)
        if match:
            path = tmp_path / match.group(1)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(body, encoding="utf-8")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONWARNINGS": "ignore"}
    for info, body, line in blocks:
        if info == "pycon":
            _run_pycon(body, title, line, tmp_path)
        elif info == "bash run":
            res = subprocess.run(["bash", "-e", "-c", body], cwd=tmp_path, env=env,
                                 capture_output=True, text=True, timeout=600)
            assert res.returncode == 0, f"docs/data.md:{line}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
