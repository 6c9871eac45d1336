"""Old name of `accessgate.decision.policytests`, until its importers use that."""

from accessgate.decision.policytests import *  # noqa: F401,F403
