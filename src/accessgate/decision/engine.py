"""Old home of the engine's names, until their importers use `accessgate.decision`."""

from accessgate.decision import *  # noqa: F401,F403
from accessgate.decision.plan import index_of as _compiled  # noqa: F401 - benchmarks/engine.py
