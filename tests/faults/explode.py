"""A mitmproxy test script: make accessgate's engine raise for any request naming boom.test.

Loaded after accessgate, it wraps `accessgate.decision.decide`, which every
hook calls, so that a test can watch each hook fail and fail closed.
boom.test is otherwise an unlisted name, which accessgate would allow.
"""

import accessgate.decision as engine

_decide = engine.decide


def decide(request, *args, **kwargs):
    if any("boom" in str(host) for host in request.hosts):
        raise RuntimeError("fault injected by tests/faults/explode.py")
    return _decide(request, *args, **kwargs)


engine.decide = decide
addons: list = []
