"""accessgate deciding every request, with its response hooks emptied (no audit record).

See benchmarks/proxy_parts.py.
"""

from accessgate.proxy.addon import AccessGate


class RequestHookOnly(AccessGate):
    def responseheaders(self, flow) -> None:
        pass

    def response(self, flow) -> None:
        pass


addons = [RequestHookOnly()]
