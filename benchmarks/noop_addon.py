"""A benchmark addon with accessgate's per-request hooks and nothing in them.

`benchmarks/proxy.py --noop` runs it as a third proxy: the difference between
it and bare mitmdump is what mitmproxy itself spends on calling a script
addon's hooks, which accessgate cannot make cheaper.
"""

from __future__ import annotations


class Noop:
    def http_connect(self, flow) -> None:
        pass

    def tls_clienthello(self, data) -> None:
        pass

    def requestheaders(self, flow) -> None:
        pass

    def responseheaders(self, flow) -> None:
        pass

    def response(self, flow) -> None:
        pass

    def error(self, flow) -> None:
        pass


addons = [Noop()]
