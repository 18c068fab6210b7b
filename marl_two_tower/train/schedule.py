"""Learning-rate schedules of the supervised optimiser (``train.lr_schedule``).

The factor multiplying ``train.lr`` is a pure function of the global step, so a resumed
run continues the schedule exactly from its checkpointed ``TrainState.step`` (no
scheduler state to save). The horizon is ``train.epochs`` x steps per epoch: resuming
with a larger ``train.epochs`` stretches the rest of the decay, as it would have been
had the run started with that cap.
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine", "linear")


def lr_factor(step: int, total_steps: int, warmup_steps: int = 0,
              schedule: str = "constant", final_ratio: float = 0.0) -> float:
    """Multiplier of the base learning rate before optimiser step ``step`` (0-based).

    Linear warm-up ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps
    (Goyal et al. 2017), then over the remaining ``T = total_steps - warmup_steps`` steps
    with progress ``p = (step - warmup_steps) / T`` in [0, 1]:

    * ``constant``: 1;
    * ``cosine``: ``r + (1 - r) * (1 + cos(pi * p)) / 2`` (SGDR without restarts,
      Loshchilov & Hutter 2017), ``r = final_ratio``;
    * ``linear``: ``r + (1 - r) * (1 - p)``.

    Steps past ``total_steps`` keep the final value.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"lr schedule {schedule!r}: expected one of {SCHEDULES}")
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(total_steps - warmup_steps, 1)
    p = min(max(step - warmup_steps, 0) / span, 1.0)
    shape = (1 + math.cos(math.pi * p)) / 2 if schedule == "cosine" else 1 - p
    return final_ratio + (1 - final_ratio) * shape
