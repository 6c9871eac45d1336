"""`accessgate run`: start mitmproxy with the accessgate addon and sensible defaults.

It is `mitmdump -s addons/accessgate.py --set ...` in this process, with the
defaults a first try needs: the example policy, the proxy on 127.0.0.1:8080,
metrics on 127.0.0.1:9464, quota state and audit log under ./var/.  Every
other mitmproxy option passes through (`--set NAME=VALUE`, `-s SCRIPT`, or
anything after `--`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "run the proxy: mitmdump with the accessgate addon and sensible defaults"

DEFAULT_POLICY = Path("policy") / "example.yaml"
DEFAULT_STATE = "sqlite:var/accessgate-state.sqlite"
DEFAULT_AUDIT = "var/accessgate-audit.jsonl"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy",
        help="policy file (default: policy/example.yaml here, else the example shipped with accessgate)",
    )
    parser.add_argument("--listen-host", default="127.0.0.1", help="proxy address (default 127.0.0.1)")
    parser.add_argument("--listen-port", type=int, default=8080, help="proxy port (default 8080; 0 picks a free one)")
    parser.add_argument(
        "--metrics",
        default="127.0.0.1:9464",
        help="HOST:PORT of the Prometheus endpoint (default 127.0.0.1:9464; empty disables it)",
    )
    parser.add_argument("--state", default=DEFAULT_STATE, help=f"quota store (default {DEFAULT_STATE})")
    parser.add_argument("--audit-log", default=DEFAULT_AUDIT, help=f"audit log path (default {DEFAULT_AUDIT})")
    parser.add_argument("--mode", choices=("enforce", "audit"), default="enforce", help="enforce (default) or audit (block nothing, log everything)")
    parser.add_argument("--contact", help="whom users should ask, shown on the block page")
    parser.add_argument(
        "--set",
        dest="options",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any mitmproxy or accessgate option, e.g. --set proxyauth=@/etc/accessgate/htpasswd (repeatable)",
    )
    parser.add_argument("-s", "--script", dest="scripts", action="append", default=[], help="another mitmproxy addon script (repeatable)")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not print each flow")
    parser.add_argument("mitmproxy_args", nargs=argparse.REMAINDER, help="after --: passed to mitmdump as they are")


def find_policy(given: str | None) -> Path:
    """The policy to run: the one given, else ./policy/example.yaml, else the one shipped."""
    if given:
        return Path(given)
    if DEFAULT_POLICY.exists():
        return DEFAULT_POLICY
    import accessgate

    shipped = [
        Path(accessgate.__file__).parent / "policy" / "example.yaml",  # installed package data
        Path(accessgate.__file__).parents[2] / DEFAULT_POLICY,  # a source checkout
    ]
    return next((p for p in shipped if p.exists()), DEFAULT_POLICY)


def mitmdump_args(args: argparse.Namespace) -> list[str]:
    from accessgate.proxy import script

    defaults = {
        "accessgate_policy": str(find_policy(args.policy)),
        "accessgate_metrics": args.metrics,
        "accessgate_state": args.state,
        "accessgate_audit_log": args.audit_log,
        "accessgate_mode": args.mode,
    }
    if args.contact:
        defaults["accessgate_contact"] = args.contact
    # mitmproxy refuses an option set twice: a --set of one of ours wins.
    given = {option.split("=", 1)[0] for option in args.options}
    out = ["--listen-host", args.listen_host, "--listen-port", str(args.listen_port), "-s", script.__file__]
    for name, value in defaults.items():
        if name not in given:
            out += ["--set", f"{name}={value}"]
    for option in args.options:
        out += ["--set", option]
    for path in args.scripts:
        out += ["-s", path]
    if args.quiet:
        out.append("-q")
    extra = list(args.mitmproxy_args)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    return out + extra


def _greeting(args: argparse.Namespace) -> str:
    proxy = f"http://{args.listen_host}:{args.listen_port}"
    ca = "~/.mitmproxy/mitmproxy-ca-cert.pem"
    for option in args.options:
        if option.startswith("confdir="):
            ca = str(Path(option.split("=", 1)[1]) / "mitmproxy-ca-cert.pem")
    lines = [
        f"accessgate: policy {find_policy(args.policy)}, mode {args.mode}",
        f"  proxy       {proxy}  (point the browser's HTTP and HTTPS proxy here)",
        f"  metrics     http://{args.metrics}/metrics" if args.metrics else "  metrics     off",
        f"  audit log   {args.audit_log}",
        f"  CA cert     {ca}  (created on first start; trust it to inspect HTTPS)",
        f"  try         curl -x {proxy} --cacert {ca} https://www.linkedin.com/",
        "              (with proxyauth: curl -x http://USER:PASSWORD@"
        f"{args.listen_host}:{args.listen_port} ...)",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from mitmproxy.tools.main import mitmdump

    policy = find_policy(args.policy)
    if not policy.exists():
        print(f"accessgate run: policy {policy} not found; give one with --policy FILE", file=sys.stderr)
        return 2
    print(_greeting(args), file=sys.stderr, flush=True)
    try:
        mitmdump(mitmdump_args(args))
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0
