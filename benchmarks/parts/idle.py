"""accessgate imported and its policy loaded and settled, but hooks that do nothing.

What accessgate's mere presence (its modules, the policy in memory, the
collector settings) costs mitmproxy; see benchmarks/proxy_parts.py.
"""

import sys
from pathlib import Path

import accessgate.proxy.addon  # noqa: F401  everything the addon imports
from accessgate import decision as engine
from accessgate.proxy.gctuning import settle_after_load
from accessgate.policy.loader import load_policy

BENCHMARKS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCHMARKS))
from noop_addon import Noop  # noqa: E402  the same empty hooks as the noop control

POLICY = load_policy(BENCHMARKS.parent / "policy" / "example.yaml")
engine.prepare(POLICY)
settle_after_load()

addons = [Noop()]
