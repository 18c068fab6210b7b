"""The training loop (composite objective, early stopping, resumable checkpoints)."""
