"""Shared primitives of the lowest layer: atomic file writes and JSON cleaning
(:mod:`.io`), seeds, devices and resumable random streams (:mod:`.runtime`), and
the process-group collectives of multi-process runs (:mod:`.distributed`)."""
