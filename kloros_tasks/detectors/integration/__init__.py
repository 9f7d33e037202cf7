"""IntegrationMonitor: broken imports, orphaned queues and channels, missing wiring.

``facts`` reads one file, ``rules`` judges it against the index, ``detector`` ties
them together. Pure: imports ``detectors.base``, ``_pyast`` and the ground only."""
