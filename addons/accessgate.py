"""Load accessgate into mitmproxy: `mitmdump -s addons/accessgate.py --set accessgate_policy=...`."""

import os
import sys

# mitmproxy puts this script's directory first on sys.path while it loads
# the script, so `import accessgate` would find this very file, not the
# package.  Look past it.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
if getattr(sys.modules.get("accessgate"), "__path__", None) is None:
    sys.modules.pop("accessgate", None)

from accessgate.proxy.addon import accessgate_addons  # noqa: E402

addons = accessgate_addons()
