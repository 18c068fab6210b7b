"""Studies built on trained runs: results files, the ablation, reports, business
simulation, the demo and the train-then-evaluate workflow (:mod:`.run`)."""
