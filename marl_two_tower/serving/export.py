"""Export a trained checkpoint to a self-contained serving bundle (DESIGN §8).

A bundle is one folder holding ``bundle.pt`` (written atomically with
``torch.save``; only tensors, strings, numbers, lists and dicts, so it loads with
``torch.load(weights_only=True)``: no arbitrary pickle) and a human-readable
``manifest.json``. It contains:

* ``user_vectors`` z_u ``[n_users, D]`` and ``item_vectors`` y_i ``[n_items, D]``,
  computed once by the model (``TwoTower.mean_user_state`` / ``item_vectors``), so the
  score of a known user is s(u, i) = <z_u, y_i> with no network at request time
  (precomputation is exact because z_u depends only on u's train-time inputs); with
  components that sample at inference, z_u is the mean over the
  ``eval.inference_samples`` draws, as the evaluator scores;
* ``blocks``: which coordinates of z/y belong to which score part (two-tower,
  genre-agent boost, tail boost) for ``/explain``;
* the original user/item ids (the API speaks original ids, never indices);
* the split arrays (train interactions in time order, validation/test targets)
  and which users have timestamps, from which the seen-item sets and the
  per-group popularity of the cold-start list are derived, and from which the
  model can be rebuilt (:meth:`Bundle.split`);
* item metadata (titles, genre multi-hot and names, release year), train
  popularity and the tail mask, user demographics (codes and labels);
* ``familiar_items`` / ``familiar_scores``: when the model has a score adjuster
  (ContextGNN), every user's familiar items F(u) and the pair-wise logits that
  replace the dot product there, precomputed through the model's own
  ``score_adjuster.overrides`` hook (|F| numbers per user); with S > 1 inference
  draws, the union of the draws' F(u) with each item's mean fused score over the
  draws (at most S |F| numbers per user; :func:`compute_user_state`), so served
  lists are the evaluated ones;
* the config (JSON) and the data fingerprint; and, unless ``include_model`` is
  False, the model ``state_dict`` (towers, contexts, agents), from which the model
  can be rebuilt (:meth:`Bundle.build_model`) to compute a user's state per
  request instead of reading it from the bundle.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from marl_two_tower import checkpoint as ckpt_io
from marl_two_tower.config import Config, config_from_dict, with_overrides
from marl_two_tower.data.dataset import Dataset
from marl_two_tower.data.split import Split, build_split
from marl_two_tower.model.two_tower import TwoTower
from marl_two_tower.utils.io import write_text_atomic

log = logging.getLogger(__name__)

BUNDLE_FILE = "bundle.pt"
FORMAT = "marl-two-tower-serving-bundle"
FORMAT_VERSION = 1


# ---------------------------------------------------------------------------
# Score blocks
# ---------------------------------------------------------------------------


def score_blocks(model: TwoTower, n_genres: int) -> dict[str, tuple[int, int]]:
    """Coordinate ranges of z_u / y_i per score part: ``{name: (start, end)}``.

    The first ``model.cfg.dim`` coordinates are the two-tower part <e_u/T, e_i>.
    Controller dimensions follow (DESIGN §3: z_u = [e_u; b_u; t_u],
    y_i = [e_i; m_i; m_i * tail(i)]): 2G extra dimensions are read as the genre boost
    (first G) and the tail boost (next G), any other width as one ``controller`` part.
    """
    d = int(model.cfg.dim)
    blocks = {"two_tower": (0, d)}
    ctrl = model.controller
    if ctrl is None:
        return blocks
    width = int(ctrl.item_features().shape[1])
    if width == 2 * n_genres:
        blocks["genre_boost"] = (d, d + n_genres)
        blocks["tail_boost"] = (d + n_genres, d + 2 * n_genres)
    elif width:
        blocks["controller"] = (d, d + width)
    return blocks


# ---------------------------------------------------------------------------
# Building the bundle dict
# ---------------------------------------------------------------------------


def _ids_to_obj(ids: np.ndarray) -> dict[str, Any]:
    ids = np.asarray(ids)
    if np.issubdtype(ids.dtype, np.integer):
        return {"kind": "int", "values": torch.from_numpy(ids.astype(np.int64))}
    return {"kind": "str", "values": [str(x) for x in ids]}


def _numpy_or_none(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.numpy()


def _ids_from_obj(obj: dict[str, Any]) -> np.ndarray:
    if obj["kind"] == "int":
        return obj["values"].numpy()
    return np.asarray(obj["values"], dtype=object)


@torch.no_grad()
def compute_user_state(model: TwoTower, n_users: int, batch_size: int = 1024
                       ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """(z_u for every user, y_i for every item, familiar items and values or None), in
    float32 on CPU, in eval mode, from :meth:`TwoTower.mean_user_state`.

    With components that sample at inference and ``eval.inference_samples`` = S > 1,
    z_u is the mean of the S draws' user vectors and the familiar set is the union U(u)
    of the S draws' F(u) with each item's mean fused score over the draws, so the
    served score <z_u, y_i> (i not in U(u)) / the stored value (i in U(u)) is exactly
    the evaluated mean score (``TwoTower.scorer``). Familiar items: int32
    ``[n_users, W]`` with -1 padding (W = the largest |U(u)|, at most S |F|), values
    float32 ``[n_users, W]``; None when the model has no score adjuster. Exact to
    precompute: at inference the draws depend on u only (fixed seeds)."""
    model.eval()
    items = model.item_vectors()
    dev = items.device
    zs, fam_i, fam_v = [], [], []
    for s in range(0, n_users, batch_size):
        u = torch.arange(s, min(s + batch_size, n_users), device=dev)
        z, ov_i, ov_v = model.mean_user_state(u, item_vecs=items)
        zs.append(z.float().cpu())
        if ov_i is not None and ov_v is not None:
            fam_i.append(ov_i.cpu())
            fam_v.append(ov_v.float().cpu().masked_fill(ov_i.cpu() < 0, 0.0))
    items = items.float().cpu()
    z_all = torch.cat(zs) if zs else torch.zeros(0, items.shape[1])
    adj = model.score_adjuster
    if adj is None or not adj.max_items or not fam_i:
        return z_all, items, None
    width = max(x.shape[1] for x in fam_i)
    pad_i = [torch.nn.functional.pad(x, (0, width - x.shape[1]), value=-1) for x in fam_i]
    pad_v = [torch.nn.functional.pad(x, (0, width - x.shape[1]), value=0.0) for x in fam_v]
    return (z_all, items,
            (torch.cat(pad_i).to(torch.int32).contiguous(), torch.cat(pad_v).contiguous()))


def bundle_dict(model: TwoTower, cfg: Config, split: Split, include_model: bool = True,
                source: str = "") -> dict[str, Any]:
    """Everything the server needs, as a ``weights_only``-loadable dict."""
    ds = split.dataset
    users_vec, items_vec, familiar = compute_user_state(model, split.n_users, cfg.eval.batch_size)
    obj: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "source": str(source),
        "config": json.dumps(cfg.to_dict()),
        "data_fingerprint": ds.fingerprint(),
        "dataset_name": ds.name,
        "user_vectors": users_vec.contiguous(),
        "item_vectors": items_vec.contiguous(),
        "blocks": {k: [a, b] for k, (a, b) in score_blocks(model, ds.n_genres).items()},
        "user_ids": _ids_to_obj(ds.user_ids),
        "item_ids": _ids_to_obj(ds.item_ids),
        "train_users": torch.from_numpy(np.asarray(split.train_users, np.int64)),
        "train_items": torch.from_numpy(np.asarray(split.train_items, np.int64)),
        "val_items": torch.from_numpy(np.asarray(split.val_items, np.int64)),
        "test_items": torch.from_numpy(np.asarray(split.test_items, np.int64)),
        "tail_by": split.tail_by,
        "tail_fraction": float(split.tail_fraction),
        "item_pop": torch.from_numpy(np.asarray(split.item_pop, np.int64)),
        "tail_mask": torch.from_numpy(np.asarray(split.tail_mask, bool)),
        # which users have timestamps (ContextGNN's temporal hop 1 needs it; the
        # timestamps themselves are not stored)
        "timed_users": torch.from_numpy(split.dataset.timed_users()),
        "item_titles": list(ds.item_titles) if ds.item_titles is not None else None,
        "item_genres": torch.from_numpy(np.asarray(ds.item_genres, bool)),
        "genre_names": list(ds.genre_names),
        "item_year": torch.from_numpy(np.asarray(ds.item_year, np.int64)),
        "user_features": {k: torch.from_numpy(np.asarray(v, np.int64))
                          for k, v in ds.user_features.items()},
        "user_feature_labels": {k: [str(x) for x in v] for k, v in ds.user_feature_labels.items()},
        "familiar_items": familiar[0] if familiar is not None else None,
        "familiar_scores": familiar[1] if familiar is not None else None,
        "model_state": model.state_dict() if include_model else None,
    }
    return obj


def export_bundle(model: torch.nn.Module, cfg: Config, split: Split, out_dir: str | Path,
                  include_model: bool = True, source: str = "") -> Path:
    """Write ``<out_dir>/bundle.pt`` (atomic) and ``manifest.json``; returns the folder."""
    out = Path(out_dir)
    obj = bundle_dict(model, cfg, split, include_model, source)
    ckpt_io.save_atomic(obj, out / BUNDLE_FILE)
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "source": obj["source"],
        "dataset": obj["dataset_name"], "data_fingerprint": obj["data_fingerprint"],
        "n_users": split.n_users, "n_items": split.n_items,
        "dim": int(obj["item_vectors"].shape[1]), "blocks": obj["blocks"],
        "includes_model": include_model, "config": cfg.to_dict(),
    }
    write_text_atomic(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return out


def load_checkpoint_for_serving(path: str | Path, overrides: list[str] | None = None,
                                device: str = "cpu"):
    """(model, cfg, split) from a training checkpoint; ``overrides`` apply to the stored
    config (e.g. ``data.path=...`` where the data live now, ``serving.port=...``)."""
    from marl_two_tower.model.build import load_trained

    stored = config_from_dict(json.loads(ckpt_io.load(path)["config"]))
    cfg = with_overrides(stored, overrides)
    model, _, split = load_trained(path, cfg, device=device)
    return model, cfg, split


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, overrides: list[str] | None = None,
                      include_model: bool = True) -> Path:
    """Load a training checkpoint and write its serving bundle to ``out_dir``."""
    model, cfg, split = load_checkpoint_for_serving(checkpoint, overrides)
    return export_bundle(model, cfg, split, out_dir, include_model, source=str(checkpoint))


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


@dataclass
class Bundle:
    """A loaded serving bundle (numpy views of the saved tensors)."""

    cfg: Config
    data_fingerprint: str
    dataset_name: str
    source: str
    user_vectors: np.ndarray
    item_vectors: np.ndarray
    blocks: dict[str, tuple[int, int]]
    user_ids: np.ndarray
    item_ids: np.ndarray
    train_users: np.ndarray
    train_items: np.ndarray
    val_items: np.ndarray
    test_items: np.ndarray
    tail_by: str
    tail_fraction: float
    item_pop: np.ndarray
    tail_mask: np.ndarray
    item_titles: list[str] | None
    item_genres: np.ndarray
    genre_names: list[str]
    item_year: np.ndarray
    user_features: dict[str, np.ndarray]
    user_feature_labels: dict[str, list[str]]
    familiar_items: np.ndarray | None = None
    familiar_scores: np.ndarray | None = None
    timed_users: np.ndarray | None = None  # None: a bundle from before it was stored
    model_state: dict[str, torch.Tensor] | None = None
    model: torch.nn.Module | None = field(default=None, repr=False)

    @property
    def n_users(self) -> int:
        return int(self.user_vectors.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.item_vectors.shape[0])

    @classmethod
    def from_dict(cls, obj: dict[str, Any], model: torch.nn.Module | None = None) -> Bundle:
        if obj.get("format") != FORMAT:
            raise ValueError(f"not a serving bundle (format {obj.get('format')!r})")
        if int(obj.get("format_version", -1)) > FORMAT_VERSION:
            raise ValueError(f"bundle format {obj['format_version']} is newer than this "
                             f"version supports ({FORMAT_VERSION})")
        return cls(
            cfg=config_from_dict(json.loads(obj["config"])),
            data_fingerprint=obj["data_fingerprint"], dataset_name=obj["dataset_name"],
            source=obj.get("source", ""),
            user_vectors=obj["user_vectors"].float().numpy(),
            item_vectors=obj["item_vectors"].float().numpy(),
            blocks={k: (int(a), int(b)) for k, (a, b) in obj["blocks"].items()},
            user_ids=_ids_from_obj(obj["user_ids"]), item_ids=_ids_from_obj(obj["item_ids"]),
            train_users=obj["train_users"].numpy(), train_items=obj["train_items"].numpy(),
            val_items=obj["val_items"].numpy(), test_items=obj["test_items"].numpy(),
            tail_by=obj["tail_by"], tail_fraction=float(obj["tail_fraction"]),
            item_pop=obj["item_pop"].numpy(), tail_mask=obj["tail_mask"].numpy(),
            item_titles=obj["item_titles"], item_genres=obj["item_genres"].numpy(),
            genre_names=list(obj["genre_names"]), item_year=obj["item_year"].numpy(),
            user_features={k: v.numpy() for k, v in obj["user_features"].items()},
            user_feature_labels={k: list(v) for k, v in obj["user_feature_labels"].items()},
            familiar_items=_numpy_or_none(obj.get("familiar_items")),
            familiar_scores=_numpy_or_none(obj.get("familiar_scores")),
            timed_users=_numpy_or_none(obj.get("timed_users")),
            model_state=obj.get("model_state"), model=model,
        )

    def train_matrix(self) -> sp.csr_matrix:
        """Binary train user-item matrix (duplicates collapsed)."""
        m = sp.csr_matrix((np.ones(len(self.train_users), np.float32),
                           (self.train_users, self.train_items)), shape=(self.n_users, self.n_items))
        m.sum_duplicates()
        m.data[:] = 1.0
        return m

    def seen_matrix(self, which: str = "all") -> sp.csr_matrix:
        """Items never served again per user: train (``which='train'``) or train plus
        the validation and test targets (``'all'``: everything the user consumed)."""
        m = self.train_matrix()
        if which == "train":
            return m
        if which != "all":
            raise ValueError(f"serving.seen must be 'all' or 'train', got {which!r}")
        rows, cols = [], []
        for t in (self.val_items, self.test_items):
            u = np.flatnonzero(t >= 0)
            rows.append(u)
            cols.append(t[u])
        extra = sp.csr_matrix((np.ones(sum(map(len, rows)), np.float32),
                               (np.concatenate(rows), np.concatenate(cols))), shape=m.shape)
        out = (m + extra).tocsr()
        out.sum_duplicates()
        out.data[:] = 1.0
        out.sort_indices()
        return out

    def split(self) -> Split:
        """Rebuild the train/val/test :class:`Split` the model was trained on.

        The interactions are the train ones in train-time order, then the validation
        and the test targets. Timestamps are not stored, only which users had them
        (``timed_users``): a timed user's interactions get their position in that
        order as stand-in timestamps (same time order), the others NaN, so
        :meth:`Dataset.timed_users` (ContextGNN's temporal hop 1) is the trained
        model's. A bundle from before ``timed_users`` was stored rebuilds every user
        as untimed (with a warning): re-export it for exact ContextGNN vectors.
        """
        tu, ti = self.train_users, self.train_items
        vu, tsu = np.flatnonzero(self.val_items >= 0), np.flatnonzero(self.test_items >= 0)
        users = np.concatenate([tu, vu, tsu])
        items = np.concatenate([ti, self.val_items[vu], self.test_items[tsu]])
        if self.timed_users is None:
            log.warning("bundle has no timed_users (exported by an older version): every user "
                        "is rebuilt without timestamps; re-export it for exact ContextGNN vectors")
            timed = np.zeros(self.n_users, dtype=bool)
        else:
            timed = np.asarray(self.timed_users, dtype=bool)
        timestamps = np.where(timed[users], np.arange(len(users), dtype=np.float64), np.nan)
        ds = Dataset(name=self.dataset_name, users=users, items=items, timestamps=timestamps,
                     n_users=self.n_users, n_items=self.n_items, user_ids=self.user_ids,
                     item_ids=self.item_ids, item_genres=self.item_genres,
                     genre_names=self.genre_names, item_year=self.item_year.astype(np.int32),
                     user_features=self.user_features, user_feature_labels=self.user_feature_labels,
                     item_titles=self.item_titles)
        return build_split(ds, tu, ti, self.val_items, self.test_items, self.tail_fraction,
                           self.tail_by)

    def build_model(self) -> torch.nn.Module:
        """The trained model rebuilt from the stored state (cached); needs ``model_state``."""
        if self.model is None:
            if self.model_state is None:
                raise ValueError("this bundle was exported without the model state "
                                 "(export without --no-model)")
            from marl_two_tower.model.build import build_model

            model = build_model(self.cfg, self.split())
            model.load_state_dict(self.model_state)
            self.model = model.eval()
        return self.model


def load_bundle(path: str | Path) -> Bundle:
    """Load ``<dir>/bundle.pt`` (or the file itself) with ``weights_only=True``."""
    p = Path(path)
    f = p / BUNDLE_FILE if p.is_dir() else p
    if not f.exists():
        raise FileNotFoundError(f"serving bundle not found: {f}")
    obj = ckpt_io.load(f)  # weights_only=True; clear errors for refused or truncated files
    return Bundle.from_dict(obj)


def bundle_from_model(model: torch.nn.Module, cfg: Config, split: Split, source: str = "") -> Bundle:
    """An in-memory bundle for a model already loaded (``serve --checkpoint``)."""
    return Bundle.from_dict(bundle_dict(model, cfg, split, include_model=False, source=source),
                            model=model.eval())
