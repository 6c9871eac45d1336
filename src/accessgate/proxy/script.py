"""The script `accessgate run` hands to mitmproxy; the same as addons/accessgate.py.

mitmproxy puts a script's folder first on sys.path while it loads it, so no
module in this folder may share a name with a top-level module
(tests/proxy/test_script.py checks it).
"""

from accessgate.proxy.addon import accessgate_addons

addons = accessgate_addons()
