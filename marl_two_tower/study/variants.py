"""The ablation ladder of DESIGN §6: each variant adds components to the previous one."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    """One ablation step: ``adds`` are switched on on top of the previous variants."""

    key: str  # folder name
    label: str  # name in tables and plots
    adds: tuple[str, ...] = ()


VARIANTS: tuple[Variant, ...] = (
    Variant("base", "Base"),
    Variant("context_gnn", "+ContextGNN", ("context_gnn",)),
    Variant("marl", "+MARL", ("marl",)),
    Variant("fair_sampler", "+Fair Sampler", ("fair_sampler",)),
    Variant("buhs", "+BUHS", ("buhs",)),
    Variant("gini", "+GINI loss", ("gini",)),
    Variant("tail_loss", "+Tail loss", ("tail_loss",)),
    Variant("exposure_budget", "+Exposure budget (full)", ("exposure_budget",)),
)
"""Until the frontier work the last step was one row, "+GINI (full)" = gini + tail_loss
+ the exposure budget (``gini.enabled`` switched both the loss and the budget); the
three are now separate switches and separate rows. The last row trains nothing: it
evaluates the "+Tail loss" checkpoints under the budget (:data:`EVAL_ONLY_COMPONENTS`)."""
