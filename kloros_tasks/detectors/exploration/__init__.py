"""ExplorationScanner: hardware and optimisation opportunities of a host.

``rules`` and ``detector`` are pure; ``probes`` is the one edge that reads the host."""
