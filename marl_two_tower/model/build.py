"""The component registry and the model factory.

:data:`COMPONENTS` lists the switchable components in the order of the ablation
study (DESIGN §6); :func:`build_model` assembles the two-tower model with every
component a config switches on, :func:`build_components` the training components
(:class:`marl_two_tower.model.components.TrainingComponent`) the trainer calls, and
:func:`load_trained` rebuilds a trained model from its checkpoint. Serving,
evaluation and studies build models here, never through the training loop.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from marl_two_tower import checkpoint as ckpt_io
from marl_two_tower.config import Config, config_from_dict
from marl_two_tower.data import load_split
from marl_two_tower.data.split import Split
from marl_two_tower.model.two_tower import TwoTower
from marl_two_tower.utils.runtime import resolve_device

if TYPE_CHECKING:  # built lazily: serving and evaluation never load the training parts
    from marl_two_tower.model.components import TrainingComponent
    from marl_two_tower.utils.distributed import DistContext

# exposure_budget acts at evaluation only (it re-allocates a trained model's lists and
# trains nothing; fairness/exposure.py); the others change the model or the objective.
COMPONENTS = ("context_gnn", "marl", "fair_sampler", "buhs", "gini", "tail_loss",
              "exposure_budget")
EVAL_ONLY_COMPONENTS = ("exposure_budget",)

# The components with training hooks (docs/architecture.md, "How a component plugs into
# training"), in the order the trainer calls them: the objective is
# rec + tail + gini in this order, and the epoch record lists sampler/*, gini/*, marl/*
# in this order (a different order would change float sums and the history's layout).
# context_gnn and buhs act inside the model (TwoTower extension points) and have none.
TRAINING_ORDER = ("fair_sampler", "tail_loss", "gini", "marl")






def build_model(cfg: Config, split: Split) -> TwoTower:
    """The two-tower model with every component the config switches on."""
    model = TwoTower(split, cfg.model)
    if cfg.context_gnn.enabled:
        from marl_two_tower.model.context_gnn import attach_context_gnn

        attach_context_gnn(model, split, cfg.context_gnn)
    if cfg.buhs.enabled:
        from marl_two_tower.model.buhs import build_buhs

        model.add_user_context("buhs", build_buhs(split, cfg.buhs, model))
    if cfg.marl.enabled:
        from marl_two_tower.model.marl.agents import build_genre_agents

        model.set_controller(build_genre_agents(cfg, split, model))
    model.inference_samples = cfg.eval.inference_samples  # draws averaged by model.scorer()
    return model


def build_components(cfg: Config, split: Split, model: TwoTower, device: torch.device,
                     dist: DistContext | None = None) -> list[TrainingComponent]:
    """The training components the config switches on, in :data:`TRAINING_ORDER`.

    ``model`` is the (already placed) model they act on; ``dist`` the DDP context
    (None = one process).
    """

    from marl_two_tower.model.components import FairSamplerComponent, GiniTerm, TailLoss

    def marl() -> TrainingComponent:
        from marl_two_tower.model.marl.agents import MARLTrainer

        return MARLTrainer(cfg, split, model, device)

    builders: dict[str, Callable[[], TrainingComponent]] = {
        "fair_sampler": lambda: FairSamplerComponent(cfg, split, device),
        "tail_loss": lambda: TailLoss(cfg, split, device, model),
        "gini": lambda: GiniTerm(cfg, split, model, device, dist),
        "marl": marl,
    }
    comps = [builders[name]() for name in TRAINING_ORDER if getattr(cfg, name).enabled]
    if cfg.model.user_encoder == "transformer":  # batches of whole user sequences
        from marl_two_tower.model.sequence_training import SequenceBatches

        # (the Fair Sampler then reweights the positives instead of drawing them)
        comps.insert(0, SequenceBatches(cfg, split))
    return comps


def load_trained(path: str | Path, cfg: Config | None = None, split: Split | None = None,
                 device: str = "auto") -> tuple[TwoTower, Config, Split]:
    """Load a checkpoint into a fresh model: returns (model, cfg, split).

    The config stored in the checkpoint is used unless ``cfg`` is given; the data
    fingerprint must match the loaded data.
    """
    ck = ckpt_io.load(path)
    stored = config_from_dict(json.loads(ck["config"]))
    cfg = cfg or stored
    split = split or load_split(cfg.data)
    if ck["data_fingerprint"] != split.dataset.fingerprint():
        raise ckpt_io.CheckpointMismatch(
            f"{path}: trained on data {ck['data_fingerprint']}, but the configured data is "
            f"{split.dataset.fingerprint()} ({split.dataset.name})")
    model = build_model(stored, split)
    model.load_state_dict(ck["model"])
    model.to(resolve_device(device)).eval()
    return model, stored, split
