"""A mitmproxy test addon that makes accessgate's engine fail for `boom.test`.

Loaded with a second `-s` after accessgate, it wraps `accessgate.decision.decide`
(the addon calls it through the module, at call time), so the test exercises
the real failure path: an exception inside a hook, nothing simulated in the
addon itself.
"""

from __future__ import annotations

import accessgate.decision as engine

_real = getattr(engine.decide, "__wrapped_by_explode__", engine.decide)


def _exploding(request, identity, policy, now, quota=None):
    if any("boom.test" in h.lower() for h in request.hosts):
        raise RuntimeError("engine exploded (test hook support/explode.py)")
    return _real(request, identity, policy, now, quota)


_exploding.__wrapped_by_explode__ = _real
engine.decide = _exploding
addons: list = []
