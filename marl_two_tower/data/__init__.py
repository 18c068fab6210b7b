"""Data layer: loaders, the synthetic generator, splits (DESIGN §2)."""

from __future__ import annotations

from pathlib import Path

from marl_two_tower.config import DataConfig
from marl_two_tower.data.dataset import Dataset, PredefinedSplit
from marl_two_tower.data.errors import DataError
from marl_two_tower.data.split import Split, drop_repeats, leave_one_out, tail_items

DEFAULT_DATA_ROOT = Path("data")

__all__ = [
    "DataError",
    "Dataset",
    "PredefinedSplit",
    "Split",
    "leave_one_out",
    "load_dataset",
    "load_split",
    "tail_items",
]


def load_dataset(cfg: DataConfig) -> Dataset:
    """Load the dataset named by ``cfg.source`` (see :class:`DataConfig`)."""
    src = cfg.source
    if cfg.min_item_count < 0:
        raise DataError("data.min_item_count", f"expected an int >= 0, got {cfg.min_item_count}")
    if src == "synthetic":
        from marl_two_tower.data.synthetic import generate

        ds = generate(cfg.synthetic)
    elif src in ("ml-100k", "ml-1m", "ml-1m-ncf", "ml-1m-ordered"):
        from marl_two_tower.data import movielens

        path = Path(cfg.path) if cfg.path else DEFAULT_DATA_ROOT / src
        loader = {
            "ml-100k": movielens.load_ml100k,
            "ml-1m": movielens.load_ml1m,
            "ml-1m-ncf": movielens.load_ncf,
            "ml-1m-ordered": movielens.load_ml1m_ordered,
        }[src]
        ds = loader(path)
    elif src in ("csv", "parquet"):
        from marl_two_tower.data.generic import load_table

        ds = load_table(cfg.path, cfg.items_path or None, cfg.users_path or None)
    else:
        raise DataError("data.source", f"unknown source {src!r}")
    ds = ds.filter_min_rating(cfg.min_rating)
    if cfg.repeats == "drop" and src != "synthetic":  # the generator never repeats a pair
        ds = drop_repeats(ds)
    if cfg.min_item_count > 1 and ds.predefined is not None:
        raise DataError("data.min_item_count",
                        f"not supported with {src} (its test pairs are given; use 0)")
    return ds.filter_min_item_count(cfg.min_item_count)


def load_split(cfg: DataConfig) -> Split:
    """Load and split: leave-one-out by time, train-only popularity and tail."""
    return leave_one_out(load_dataset(cfg), cfg.tail_fraction, cfg.tail_by)
