"""The `accessgate` command: one module per subcommand in this package.

Each module defines `HELP` (one line), `add_arguments(parser)` and
`run(args) -> int` (the exit status); what several of them need is in
`common`, never in another command's module.  `main` imports a module only when
its command runs, so `accessgate check` never pays for DuckDB.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> module in this package; imported lazily.
COMMANDS: dict[str, str] = {
    "check": "check",
    "explain": "explain",
    "test": "test",
    "run": "run",
    "replay": "replay",
    "audit": "audit",
    "pac": "pac",
    "schema": "schema",
}


def _load(module: str):
    return importlib.import_module(f"accessgate.cli.{module}")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="accessgate",
        description="Role-to-site access policy for corporate web proxies.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Import only the command being run; `accessgate --help` imports them all.
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, module in COMMANDS.items():
        if wanted in COMMANDS and name != wanted:
            sub.add_parser(name, help=f"(see accessgate {name} --help)")
            continue
        mod = _load(module)
        cmd = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(cmd)
        cmd.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
