"""utils.io: the one atomic writer (every file the package writes) and the JSON cleaner."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from marl_two_tower import checkpoint as ckpt_io
from marl_two_tower.utils.io import atomic_write, to_jsonable, write_bytes_atomic, write_text_atomic


class Boom(Exception):
    pass


def test_atomic_write_replaces_the_file(tmp_path):
    p = tmp_path / "sub" / "a.txt"  # missing folder is created
    assert write_text_atomic(p, "one\n") == p
    write_text_atomic(p, "two\n")
    assert p.read_text() == "two\n"
    write_bytes_atomic(p, b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    assert sorted(x.name for x in p.parent.iterdir()) == ["a.txt"]


@pytest.mark.parametrize("mode", ["w", "wb"])
def test_failure_mid_write_keeps_the_old_file_and_no_temp(tmp_path, mode):
    p = tmp_path / "results.json"
    p.write_text("old")
    with pytest.raises(Boom), atomic_write(p, mode) as fh:
        fh.write("half" if mode == "w" else b"half")
        fh.flush()  # the partial content is on disk, in the temporary file only
        assert p.read_text() == "old"
        raise Boom
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["results.json"]


def test_failure_on_a_new_file_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic_write(tmp_path / "new.csv") as fh:
        fh.write("a,b\n")
        raise KeyboardInterrupt  # BaseException too: a killed run cleans up
    assert list(tmp_path.iterdir()) == []


def test_text_mode_keeps_newlines_as_written(tmp_path):
    """newline='' : the csv module's \\r\\n and plain \\n are written unchanged."""
    p = tmp_path / "t.csv"
    with atomic_write(p) as fh:
        fh.write("a\r\nb\n")
    assert p.read_bytes() == b"a\r\nb\n"


def test_checkpoint_save_failure_keeps_the_previous_checkpoint(tmp_path):
    p = tmp_path / "model_best.pt"
    ckpt_io.save_atomic({"model": {"w": torch.ones(2)}, "config": "{}", "data_fingerprint": "x"}, p)
    with pytest.raises(Exception):  # noqa: B017 - torch.save cannot pickle a lambda
        ckpt_io.save_atomic({"model": lambda: 0}, p)
    assert torch.equal(torch.load(p, weights_only=True)["model"]["w"], torch.ones(2))
    assert [x.name for x in tmp_path.iterdir()] == ["model_best.pt"]


def test_to_jsonable_maps_numpy_and_non_finite_values():
    src = {
        1: np.float32(0.5), "i": np.int64(7), "b": np.bool_(True), "nan": float("nan"),
        "inf": -math.inf, "np_nan": np.float64("nan"), "arr": np.array([[1, 2], [3, 4]], np.int32),
        "farr": np.array([1.5, np.inf]), "t": (1, (2.0, None)), "s": "x",
    }
    out = to_jsonable(src)
    assert out == {"1": 0.5, "i": 7, "b": True, "nan": None, "inf": None, "np_nan": None,
                   "arr": [[1, 2], [3, 4]], "farr": [1.5, None], "t": [1, [2.0, None]], "s": "x"}
    assert type(out["i"]) is int and type(out["1"]) is float and type(out["b"]) is bool
    assert type(out["arr"][0][0]) is int
    json.dumps(out, allow_nan=False)  # valid strict JSON
