"""accessgate imported and its policy loaded and settled, but hooks that do nothing.

What accessgate's mere presence (its modules, the policy in memory, the
collector settings) costs mitmproxy; see benchmarks/proxy_parts.py.
"""

from pathlib import Path

import accessgate.addon  # noqa: F401  everything the addon imports
from accessgate import engine
from accessgate.gcsettle import settle_after_load
from accessgate.loader import load_policy

POLICY = load_policy(Path(__file__).resolve().parents[2] / "policy" / "example.yaml")
engine.prepare(POLICY)
settle_after_load()


class Idle:
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


addons = [Idle()]
