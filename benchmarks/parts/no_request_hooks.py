"""accessgate as shipped, but with its per-request hooks emptied.

Its threads (audit writer, metrics endpoint), tasks (policy watch, reviews)
and connection hooks still run; see benchmarks/proxy_parts.py.
"""

from accessgate.proxy.addon import AccessGate


class NoRequestHooks(AccessGate):
    def requestheaders(self, flow) -> None:
        pass

    def responseheaders(self, flow) -> None:
        pass

    def response(self, flow) -> None:
        pass


addons = [NoRequestHooks()]
