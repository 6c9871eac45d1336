"""The accessgate_inspect modes each proxy kind's cases run under (not in conftest.py: a test module
that imports `conftest` gets whichever conftest was imported first when several suites run together).

The table holds under both; the inspect kinds' cases are about what `needed` passes through.
"""

MODES = {"plain": ("needed", "all"), "passthrough": ("needed", "all"), "streaming": ("needed", "all"),
         "inspect": ("needed",), "inspect-refuse-ech": ("needed",), "balanced": ("needed",)}
