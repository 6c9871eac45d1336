"""Keep CPython's cyclic garbage collector off the loaded policy.

A proxy holds one large, immutable policy (a 50,000-domain catalog is
hundreds of thousands of objects) and fills bounded caches as it decides.
With CPython's defaults the collector runs every 700 new container objects
and, on its older generations, walks the whole policy again and again:
measured here, that tripled the cost of a first decision for a new host.
After a load, the policy is moved out of the collector's sight
(`gc.freeze`) and young-generation collections are made rarer; reference
counting still frees every object, and a reload frees the old policy.

How much rarer is a trade, measured both ways (docs/performance.md): the
engine's first decisions for new hosts gain from rare collections, but
mitmproxy leaves about 80 objects of cyclic garbage per request, and at
20,000 the collector reached them long after they were made, from main
memory instead of the cache: the proxy lost 1-2.5 % of its throughput.
At 5,000 (under a megabyte of young objects, within a core's cache here)
the proxy serves as much as with CPython's 700, and the engine's p99
stays where 20,000 had it.
"""

from __future__ import annotations

import gc

# Young generation every 5,000 allocations instead of 700; the older ones as usual.
THRESHOLDS = (5_000, 10, 10)


def settle_after_load() -> None:
    """Call once a policy is loaded and installed: collect now, then freeze.

    What an earlier call froze is thawed first, so that nothing frozen then
    (an old policy, a flow since closed) escapes collection for good.  This
    costs one full collection per policy load.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    if gc.get_threshold()[0] < THRESHOLDS[0]:
        gc.set_threshold(*THRESHOLDS)
