"""The script `accessgate run` hands to mitmproxy; the same as addons/accessgate.py."""

import os
import sys

# mitmproxy puts this script's directory first on sys.path while it loads
# the script, so sibling modules (logging.py, state.py ...) would shadow top-level
# modules of the same name.  Look past it.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
if getattr(sys.modules.get("accessgate"), "__path__", None) is None:
    sys.modules.pop("accessgate", None)

from accessgate.addon import AccessGate  # noqa: E402

addons = [AccessGate()]
