"""Evaluation: the full and sampled ranking protocols (shard-aware), per-user arrays,
significance tests, the seed's evaluation modes and scoring of external lists."""
