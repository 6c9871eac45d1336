"""`accessgate run` turns its flags into mitmdump arguments; a --set of its own option wins."""

from __future__ import annotations

import pytest

from accessgate.cli import build_parser
from accessgate.cli.run import mitmdump_args


def _args(*argv: str) -> list[str]:
    argv = ("run", *argv)
    return mitmdump_args(build_parser(list(argv)).parse_args(list(argv)))


def _sets(args: list[str]) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == "--set"]


@pytest.mark.parametrize(
    "argv,expected",
    [
        ((), {"accessgate_metrics=127.0.0.1:9464", "accessgate_state=sqlite:var/accessgate-state.sqlite",
              "accessgate_audit_log=var/accessgate-audit.jsonl", "accessgate_mode=enforce"}),
        (("--mode", "audit", "--metrics", ""), {"accessgate_mode=audit", "accessgate_metrics="}),
        (("--set", "accessgate_mode=audit"), {"accessgate_mode=audit"}),
        (("--set", "proxyauth=@/etc/htpasswd"), {"proxyauth=@/etc/htpasswd"}),
    ],
    ids=["defaults", "own-flags", "a-set-of-our-option-replaces-the-default", "mitmproxy-options-pass"],
)  # fmt: skip
def test_flags_become_mitmdump_options(argv, expected):
    sets = _sets(_args(*argv))
    assert expected <= set(sets)
    names = [s.split("=", 1)[0] for s in sets]
    assert len(names) == len(set(names)), "mitmproxy refuses an option set twice"


def test_listen_address_script_and_passthrough():
    args = _args("--listen-host", "0.0.0.0", "--listen-port", "3128", "-s", "x.py", "--", "--ssl-insecure")
    assert args[:4] == ["--listen-host", "0.0.0.0", "--listen-port", "3128"]
    assert args[4] == "-s" and args[5].endswith("accessgate/proxy/script.py")
    assert args[-3:] == ["-s", "x.py", "--ssl-insecure"]
