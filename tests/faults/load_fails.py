"""A mitmproxy test script: loading a policy whose text asks for it raises that error.

A policy file with a line `# load_fails: MemoryError` (or RecursionError)
makes `accessgate.proxy.reload.load_policy` raise it, as a load that exhausted
memory or the stack would.  Loaded after accessgate with a second `-s`.
"""

from pathlib import Path

import accessgate.proxy.reload as reload

_load = reload.load_policy
_ERRORS = {"MemoryError": MemoryError, "RecursionError": RecursionError}


def load_policy(path, *args, **kwargs):
    text = Path(path).read_text(errors="replace")
    for name, error in _ERRORS.items():
        if f"# load_fails: {name}" in text:
            raise error(f"raised by tests/faults/load_fails.py for {path}")
    return _load(path, *args, **kwargs)


reload.load_policy = load_policy
addons: list = []
