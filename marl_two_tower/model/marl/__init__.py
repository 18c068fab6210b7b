"""The genre agents (multi-agent actor-critic controller): reward, environment, agents."""
