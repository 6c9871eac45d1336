"""A mitmproxy test script: make accessgate's responseheaders hook raise on every response.

It swaps the Alt-Svc name that the hook compares every response header
with for an object whose comparison raises, so the failure happens inside
accessgate's own hook, where its fail-closed handling must catch it.
"""

import accessgate.addon as addon


class _Raises:
    def __eq__(self, other):
        raise RuntimeError("fault injected by tests/faults/explode_response.py")

    __hash__ = object.__hash__


assert hasattr(addon, "_ALT_SVC_B"), "accessgate.addon changed: update this fault script"
addon._ALT_SVC_B = _Raises()
addons: list = []
