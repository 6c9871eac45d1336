"""Keep CPython's cyclic garbage collector off the loaded policy.

A proxy holds one large, immutable policy (a 50,000-domain catalog is
hundreds of thousands of objects) and fills bounded caches as it decides.
With CPython's defaults the collector runs every 700 new container objects
and, on its older generations, walks the whole policy again and again.
After a load, the policy is moved out of the collector's sight
(`gc.freeze`) and young-generation collections are made rarer; reference
counting still frees every object, and a reload frees the old policy.

Rarer is a trade: new hosts are decided faster, but mitmproxy leaves cyclic
garbage on every request, and a young generation that outgrows the CPU's
cache costs the proxy throughput; 5,000 keeps both (docs/performance.md).
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
