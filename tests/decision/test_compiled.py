"""The compiled build (ACCESSGATE_COMPILE=1, mypyc) decides exactly as the Python source does.

Built once per module by scripts/build-compiled, as a wheel unpacked into a
directory that goes first on PYTHONPATH; the editable install stays as it
is.  The engine's table tests, property tests and policy tests, and the
end-to-end enforcement cases through a real mitmdump, then run again in a
child pytest on the compiled modules (tests/conftest.py refuses to run
there on pure Python, and every proxy started must log the compiled engine).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]

# What runs again on the compiled build: everything that exercises decide()
# and host normalization, and the proxy cases that put them on the wire.
SUITES = [
    "tests/decision",
    "tests/policy",
    "tests/cli/test_policy_commands.py",
    "tests/e2e/test_enforcement.py",
    "tests/e2e/test_host_names.py",
]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("compiled")
    done = subprocess.run(
        [str(REPO / "scripts" / "build-compiled"), str(target)],
        capture_output=True, text=True, timeout=240,
        env={**os.environ, "PYTHON": sys.executable},  # built for the Python (and venv) running the tests
    )  # fmt: skip
    assert done.returncode == 0, f"scripts/build-compiled failed:\n{done.stderr[-3000:]}"
    return target


def _env(compiled: Path) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(compiled), os.environ.get("PYTHONPATH", "")]))
    # Without the caller's PYTEST_ADDOPTS: a second -q would hide the summary line read below.
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    return {**env, "PYTHONPATH": path, "ACCESSGATE_EXPECT_COMPILED": "1"}


# As setup.py's COMPILED: every module a decision runs through.
COMPILED = [
    "accessgate.decision.plan", "accessgate.decision.rules", "accessgate.decision.sites",
    "accessgate.decision.types", "accessgate.policy.hosts",
]  # fmt: skip


def test_the_engine_and_host_modules_are_compiled_extensions(compiled):
    done = subprocess.run(
        [sys.executable, "-c",
         f"import importlib; import accessgate.decision as d; print(d.BUILD); "
         f"print(*(importlib.import_module(m).__file__ for m in {COMPILED!r}))"],
        capture_output=True, text=True, timeout=60, env=_env(compiled), cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    build, files = done.stdout.splitlines()
    assert build == "compiled"
    for name, file in zip(COMPILED, files.split(), strict=True):
        assert file.startswith(str(compiled)) and file.endswith(".so"), (name, file)


def test_the_source_tree_is_the_python_build():
    import accessgate.decision as decision
    from accessgate.decision import rules

    assert decision.BUILD == "python"
    assert rules.__file__ == str(REPO / "src" / "accessgate" / "decision" / "rules.py")


def test_the_engine_proxy_and_policy_suites_pass_on_the_compiled_build(compiled):
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SUITES,
         "--ignore", str(Path(__file__).relative_to(REPO))],
        capture_output=True, text=True, timeout=280, env=_env(compiled), cwd=REPO,
    )  # fmt: skip
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0, f"{summary}\n{done.stdout[-6000:]}\n{done.stderr[-2000:]}"
    assert " passed" in summary and "failed" not in summary, summary


def test_an_editable_install_refuses_to_compile(tmp_path):
    # Compiled modules beside the sources would hide every later edit.
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--dry-run", "-e", str(REPO)],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
        env={**os.environ, "ACCESSGATE_COMPILE": "1"},
    )  # fmt: skip
    assert done.returncode != 0
    assert "builds a wheel, not an editable install" in done.stdout + done.stderr


def test_without_accessgate_compile_the_wheel_is_pure_python(tmp_path):
    # What `pip install .` builds by default: no compiler, no mypy needed.
    env = {key: value for key, value in os.environ.items() if key != "ACCESSGATE_COMPILE"}
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=240, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("accessgate-*.whl")
    assert wheel.name.endswith("-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "accessgate/decision/rules.py" in names
    assert not [name for name in names if name.endswith(".so")]


def test_a_compiled_build_ships_no_extension_left_in_build_by_an_earlier_one(tmp_path):
    # setuptools packs everything in build/lib.<platform>/ into the wheel: a
    # module compiled by an earlier build (an older list of compiled modules,
    # or older source) would shadow its .py file in the new wheel.
    source = tmp_path / "source"
    shutil.copytree(
        REPO, source,
        ignore=shutil.ignore_patterns(".git", ".venv", ".venv-*", "build", "var", "node_modules", "__pycache__",
                                      "*.egg-info", ".hypothesis", ".pytest_cache"),
    )  # fmt: skip
    left = source / "build" / f"lib.{sysconfig.get_platform()}-{sys.implementation.cache_tag}"
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    (left / "accessgate" / "proxy").mkdir(parents=True)
    (left / "accessgate" / "proxy" / f"flows{suffix}").write_bytes(b"stale")
    (left / f"0123456789abcdef0123__mypyc{suffix}").write_bytes(b"stale")
    wheels = tmp_path / "wheels"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source)],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
        env={**os.environ, "ACCESSGATE_COMPILE": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = wheels.glob("accessgate-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        extensions = sorted(name for name in archive.namelist() if name.endswith(".so"))
    assert [name.split(".")[0].replace("/", ".") for name in extensions if name.startswith("accessgate/")] == COMPILED
    assert not [name for name in extensions if "0123456789abcdef0123" in name or "flows" in name]
