"""The compiled build of accessgate for a benchmark run (scripts/build-compiled).

    with compiled_build() as env:   # os.environ, plus PYTHONPATH -> the compiled package
        subprocess.run([...], env=env)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build-compiled"


@contextmanager
def compiled_build() -> Iterator[dict[str, str]]:
    """Build accessgate with its compiled engine into a temporary directory;
    yield an environment whose Python imports it first; remove it after."""
    target = tempfile.mkdtemp(prefix="accessgate-compiled-")
    try:
        print(f"building the compiled engine (scripts/build-compiled {target}) ...", flush=True)
        subprocess.run([str(SCRIPT), target], check=True, stdout=subprocess.DEVNULL)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [target, env.get("PYTHONPATH")]))
        yield env
    finally:
        shutil.rmtree(target, ignore_errors=True)
