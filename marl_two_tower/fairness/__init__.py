"""Fairness components that are not part of the model: the Fair Sampler, the GINI
agent (differentiable exposure Gini + dual ascent) and the exposure budget."""
