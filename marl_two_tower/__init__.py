"""marl-two-tower: fairness-aware two-tower retrieval steered by multi-agent RL."""

__version__ = "0.1.0"
