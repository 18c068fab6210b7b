"""Thread defaults safe on a shared CPU (issue 15): one intra-op thread unless told
otherwise, in training (Trainer), evaluation (``evaluate``) and the demo."""

from __future__ import annotations

import pytest
import torch

from marl_two_tower.config import TrainConfig, load_config
from marl_two_tower.data import load_split
from marl_two_tower.train.trainer import Trainer
from marl_two_tower.utils.runtime import apply_threads

TINY = ["data.synthetic.n_users=60", "data.synthetic.n_items=40", "model.dim=8", "model.id_dim=8",
        "model.hidden=8", "train.batch_size=64", "train.epochs=1"]


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_default_is_one_thread():
    assert TrainConfig().num_threads == 1
    assert load_config(None, []).train.num_threads == 1


def test_apply_threads(restore_threads):
    assert apply_threads(2) == 2 == torch.get_num_threads()
    assert apply_threads(0) == 2  # 0 leaves whatever is in effect (torch's default)
    assert apply_threads(1) == 1 == torch.get_num_threads()
    with pytest.raises(ValueError, match="num_threads"):
        apply_threads(-1)


@pytest.mark.parametrize("n", [1, 3])
def test_trainer_applies_num_threads(tmp_path, restore_threads, n):
    torch.set_num_threads(2)
    cfg = load_config(None, TINY + [f"train.num_threads={n}", f"checkpoint_dir={tmp_path}"])
    Trainer(cfg, load_split(cfg.data), progress=False)
    assert torch.get_num_threads() == n


def test_evaluate_and_demo_apply_the_default(tmp_path, restore_threads, monkeypatch):
    """``evaluate`` on a checkpoint whose stored config says 0 (the old default) and the
    demo both run with one thread unless told otherwise."""
    from marl_two_tower.cli.main import main
    from marl_two_tower.study import demo

    cfg = load_config(None, TINY + ["train.num_threads=0", f"checkpoint_dir={tmp_path / 'ck'}",
                                    f"output_dir={tmp_path / 'runs'}", "train.tensorboard=false"])
    torch.set_num_threads(2)
    Trainer(cfg, load_split(cfg.data), progress=False).fit()
    assert torch.get_num_threads() == 2  # the training run's 0 = leave it
    main(["evaluate", "-p", str(tmp_path / "ck" / "model_best.pt"), "-m", "quick",
          "-o", str(tmp_path / "eval")])
    assert torch.get_num_threads() == 1
    torch.set_num_threads(2)
    main(["evaluate", "-p", str(tmp_path / "ck" / "model_best.pt"), "-m", "quick",
          "-o", str(tmp_path / "eval2"), "--set", "train.num_threads=3"])
    assert torch.get_num_threads() == 3

    seen = []
    monkeypatch.setattr(demo, "load_split", lambda data: seen.append(torch.get_num_threads())
                        or (_ for _ in ()).throw(RuntimeError("stop")))
    torch.set_num_threads(2)
    with pytest.raises(RuntimeError, match="stop"):
        demo.run_demo(tmp_path / "demo", quick=True)
    assert seen == [1]
