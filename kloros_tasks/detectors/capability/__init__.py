"""CapabilityDiscovery: imports, executables, environment variables and dependencies
the tree needs but the target environment lacks.

Pure, except ``environment``: the one edge that probes the target interpreter."""
