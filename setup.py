"""Only the optional compiled engine needs code here; everything else is in pyproject.toml."""

import os

from setuptools import setup

# The modules every decision runs through; they are written to type-check
# under mypy, which mypyc needs.  See build_backend/accessgate_build.py;
# tests/decision/test_compiled.py checks the wheel holds exactly these.
COMPILED = [
    "src/accessgate/policy/hosts.py",
    "src/accessgate/decision/types.py",
    "src/accessgate/decision/plan.py",
    "src/accessgate/decision/rules.py",
    "src/accessgate/decision/sites.py",
]


def ext_modules() -> list:
    if os.environ.get("ACCESSGATE_COMPILE", "") != "1":
        return []
    from mypyc.build import mypycify

    # Imports without type information (e.g. idna) are taken as Any.
    return mypycify([*COMPILED, "--ignore-missing-imports"], opt_level="3")


setup(ext_modules=ext_modules())
