"""Old home of the quota stores, until their importers use `accessgate.stores`."""

from accessgate.stores import *  # noqa: F401,F403
from accessgate.stores.redis import expiry, time_to_live  # noqa: F401
