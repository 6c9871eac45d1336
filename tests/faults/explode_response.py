"""A mitmproxy test script: make accessgate's responseheaders hook raise on every response.

It swaps the helper that accessgate's Alt-Svc addon calls on every response
for one that raises, so the failure happens inside accessgate's own hook,
where its fail-closed handling must catch it.
"""

import accessgate.proxy.hygiene as hygiene


def _raises(headers) -> None:
    raise RuntimeError("fault injected by tests/faults/explode_response.py")


assert hasattr(hygiene, "drop_alt_svc"), "accessgate.proxy.hygiene changed: update this fault script"
hygiene.drop_alt_svc = _raises
addons: list = []
