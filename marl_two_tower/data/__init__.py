"""Data layer: loaders, the synthetic generator, splits (DESIGN §2)."""

from __future__ import annotations

from pathlib import Path

from marl_two_tower.config import DataConfig
from marl_two_tower.data.dataset import Dataset, PredefinedSplit
from marl_two_tower.data.errors import DataError
from marl_two_tower.data.split import Split, check_split, drop_repeats, leave_one_out, tail_items

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


def data_location(cfg: DataConfig) -> str:
    """What error messages name as the data: the file or folder, or the config key."""
    if cfg.source == "synthetic":
        return "data.synthetic"
    if cfg.source in ("csv", "parquet"):
        return cfg.path or "data.path"
    return str(Path(cfg.path) if cfg.path else DEFAULT_DATA_ROOT / cfg.source)


def _rating_range(cfg: DataConfig) -> tuple[float, float] | None:
    r = list(cfg.rating_range)
    if r and (len(r) != 2 or not r[0] <= r[1]):
        raise DataError("data.rating_range", f"expected [] or [lo, hi] with lo <= hi, got {r}")
    return (float(r[0]), float(r[1])) if r else None


def load_dataset(cfg: DataConfig) -> Dataset:
    """Load the dataset named by ``cfg.source`` (see :class:`DataConfig`).

    Then: ``min_rating``, ``repeats`` (drop: first occurrence of each (user, item)
    pair), ``min_item_count``. Raises DataError when nothing is left."""
    src = cfg.source
    scale = _rating_range(cfg)
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
        opts = {"rating_range": scale or movielens.MOVIELENS_SCALE, "unknown": cfg.unknown_items}
        ds = loader(path, **opts)
    elif src in ("csv", "parquet"):
        from marl_two_tower.data.generic import load_table

        ds = load_table(cfg.path, cfg.items_path or None, cfg.users_path or None,
                        rating_range=scale, unknown=cfg.unknown_items)
    else:
        raise DataError("data.source", f"unknown source {src!r}")
    ds = ds.filter_min_rating(cfg.min_rating)
    if cfg.repeats == "drop" and src != "synthetic":  # the generator never repeats a pair
        ds = drop_repeats(ds)
    if cfg.min_item_count > 1 and ds.predefined is not None:
        raise DataError("data.min_item_count",
                        f"not supported with {src} (its test pairs are given; use 0)")
    ds = ds.filter_min_item_count(cfg.min_item_count)
    if ds.n_interactions == 0:
        raise DataError(data_location(cfg), "no interactions left to train on (after "
                        "data.unknown_items / data.min_item_count)")
    return ds


def load_split(cfg: DataConfig) -> Split:
    """Load and split: leave-one-out by time, train-only popularity and tail.

    A split nothing can be trained or evaluated on (no train interaction, no user
    with a validation and a test item, a single user or item) is a DataError naming
    the data, raised here, before any training."""
    split = leave_one_out(load_dataset(cfg), cfg.tail_fraction, cfg.tail_by)
    check_split(split, data_location(cfg))
    return split
