"""`accessgate schema`: print the policy language's JSON Schema, for editors."""

from __future__ import annotations

import argparse
import sys

HELP = "print the JSON Schema of the policy language (completion and checks in editors)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Save it next to your policy (accessgate schema > policy.schema.json) and put "
        "'# yaml-language-server: $schema=policy.schema.json' as the policy's first line: "
        "VS Code (with the YAML extension) and other editors then complete and check it as you type. "
        "`accessgate check` still has the last word."
    )


def run(args: argparse.Namespace) -> int:
    from accessgate.policy.schema import shipped

    sys.stdout.write(shipped())
    return 0
