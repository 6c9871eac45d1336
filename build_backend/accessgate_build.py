"""setuptools' PEP 517 backend, plus mypyc when ACCESSGATE_COMPILE=1.

`ACCESSGATE_COMPILE=1 pip install .` builds the decision engine (the
modules in setup.py's COMPILED) as C extensions with mypyc, as black ships
its compiled wheels: the same source, more decisions per second
(docs/performance.md).  Only then is mypy a build requirement, and only wheels are
compiled: an editable install keeps the sources it points at, so a
compiled module could never shadow an edited one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403 - the rest of the backend as setuptools has it

# mypyc comes with mypy; one version, the one the compiled build was tested with:
# another may reject code this one accepts, or compile it differently.
MYPY = "mypy==1.20.2"


def compile_requested() -> bool:
    return os.environ.get("ACCESSGATE_COMPILE", "") == "1"


def get_requires_for_build_wheel(config_settings=None):
    if not compile_requested():
        return _setuptools.get_requires_for_build_wheel(config_settings)
    # setuptools runs setup.py to answer, and setup.py cannot import mypyc
    # before this answer has it installed: ask as for a pure build.
    with _pure():
        return [*_setuptools.get_requires_for_build_wheel(config_settings), MYPY]


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    if compile_requested():
        _drop_built_extensions()
    return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)


def _drop_built_extensions() -> None:
    """Extension modules an earlier compiled build left in build/.

    setuptools packs everything in build/lib.<platform>/ into the wheel,
    including modules compiled from an older list or older source that this
    build does not make again: stale code that would shadow the .py file.
    This build makes every extension it ships anew.
    """
    for built in Path("build").glob("lib.*/**/*"):
        if built.suffix in (".so", ".pyd") and built.is_file():
            built.unlink()


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    with _pure():  # the metadata are the same; compiling is for build_wheel alone
        return _setuptools.prepare_metadata_for_build_wheel(metadata_directory, config_settings)


@contextmanager
def _pure() -> Iterator[None]:
    wanted = os.environ.get("ACCESSGATE_COMPILE")
    os.environ["ACCESSGATE_COMPILE"] = "0"
    try:
        yield
    finally:
        if wanted is None:
            del os.environ["ACCESSGATE_COMPILE"]
        else:
            os.environ["ACCESSGATE_COMPILE"] = wanted


def get_requires_for_build_editable(config_settings=None):
    _refuse_compiled_editable()
    return _setuptools.get_requires_for_build_editable(config_settings)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    _refuse_compiled_editable()
    return _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)


def _refuse_compiled_editable() -> None:
    if compile_requested():
        raise RuntimeError(
            "ACCESSGATE_COMPILE=1 builds a wheel, not an editable install: compiled modules "
            "next to the sources would hide every later edit. Use `pip install .` without -e, "
            "or unset ACCESSGATE_COMPILE for development."
        )
