"""The model: item and user towers, ContextGNN, BUHS, the MARL genre agents, the
losses, and the component registry / factory (:mod:`.build`)."""
