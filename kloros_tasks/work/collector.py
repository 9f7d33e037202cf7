"""How often a worker's processes look for cyclic garbage.

Python runs its youngest collection every 700 allocations of container objects, and
a full one, which scans every object not frozen, as older generations fill.  A
file's analysis allocates hundreds of thousands of such objects that live until its
batch is done (the tree, its node lists, facts, decoded replies), so with the
default thresholds a cold scan spent about a fifth of its extraction time collecting
(Django's 883 modules through the three detectors in process: 32 full collections,
19.4 to 20.3 s of CPU, against 2 and 15.6 to 16.7 s with a first threshold of
10,000; docs/performance.md, section 0a).  Trees and facts hold no reference cycles,
so they go by reference counting whatever the threshold; what waits longer is only
the rare cyclic garbage, at most GEN0 young objects of it.
"""

from __future__ import annotations

import gc

GEN0 = 10_000  # container allocations (net) between two young collections


def tune() -> None:
    """Collect less often in this process and those it forks from now on (a forked
    child inherits the thresholds); the older generations' thresholds are kept."""
    _gen0, *older = gc.get_threshold()
    gc.set_threshold(GEN0, *older)
