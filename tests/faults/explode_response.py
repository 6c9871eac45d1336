"""A mitmproxy test script: make accessgate's responseheaders hook raise on every response.

It swaps the helper that the hook calls on every response (to drop Alt-Svc)
for one that raises, so the failure happens inside accessgate's own hook,
where its fail-closed handling must catch it.
"""

import accessgate.proxy.addon as addon


def _raises(headers) -> None:
    raise RuntimeError("fault injected by tests/faults/explode_response.py")


assert hasattr(addon, "drop_alt_svc"), "accessgate.proxy.addon changed: update this fault script"
addon.drop_alt_svc = _raises
addons: list = []
