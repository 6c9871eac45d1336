"""Who may import whom: the library never the commands, a command never another command."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "accessgate"


def imports(path: Path) -> set[str]:
    """Every accessgate module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("accessgate"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("accessgate"))
    return found


# `python -m accessgate` is the command's entry point, not the library.
LIBRARY = sorted(p for p in SRC.rglob("*.py") if "cli" not in p.relative_to(SRC).parts and p.name != "__main__.py")
COMMANDS = sorted((SRC / "cli").glob("*.py"))


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(SRC)))
def test_the_library_does_not_import_the_commands(path):
    assert not {m for m in imports(path) if m.startswith("accessgate.cli")}


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: p.name)
def test_a_command_imports_no_other_command_only_the_shared_helpers(path):
    others = {m for m in imports(path) if m.startswith("accessgate.cli.")} - {"accessgate.cli.common"}
    assert not {m for m in others if not m.startswith("accessgate.cli.common.")}
