"""Keep CPython's cyclic garbage collector off the loaded policy.

A proxy holds one large, immutable policy (a 50,000-domain catalog is
hundreds of thousands of objects) and fills bounded caches as it decides.
With CPython's defaults the collector runs every 700 new container objects
and, on its older generations, walks the whole policy again and again:
measured here, that tripled the cost of a first decision for a new host.
After a load, the policy is moved out of the collector's sight
(`gc.freeze`); reference counting still frees every object, and a reload
frees the old policy.

The collector's thresholds are left as CPython sets them.  Raising the
young generation's (to 20,000, once) sped up the engine benchmark's
first decisions for new hosts but slowed the proxy by 1-2.5 %: mitmproxy
leaves about 80 objects of cyclic garbage per request, and the collector
then reached each one long after it was made, from main memory instead
of the cache.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

@contextmanager
def collector_paused() -> Iterator[None]:
    """Keep the cyclic collector still while a policy is built.

    Building a large policy allocates a few hundred thousand objects, almost
    none of them garbage; with the collector on, it walks them over and over
    (measured: half of a 50,000-domain load).  Reference counting still frees
    everything in the meantime, and the collector resumes as it was.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def settle_after_load() -> None:
    """Call once a policy is loaded and installed: collect now, then freeze.

    What an earlier call froze is thawed first, so that nothing frozen then
    (an old policy, a flow since closed) escapes collection for good.  This
    costs one full collection per policy load.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
