#!/usr/bin/env python3
"""What `accessgate check` costs on hostile policies and on normal ones: time and peak memory.

Each file is checked by the real CLI in a process of its own (time and peak
RSS from GNU time), `--rounds` times; the median time and the largest peak
are printed.

    hostile: aliases that stand for a million domains (28 KB, and a 58 KB
             variant), a file of aliased unknown names (did-you-mean work)
    normal:  policy/example.yaml, and the 50,000-domain policy of
             benchmarks/engine.py (1.4 MB)

`--src DIR` checks with another source tree instead of the installed one
(for example an export of an older commit: `git archive 7d7f787 | tar -x -C
/tmp/old`, then `--src /tmp/old/src`), so that before and after can be
printed by one script; `--only NAME` runs some files only (the old loader
needs minutes and gigabytes on the hostile ones).

    .venv/bin/python benchmarks/policy_limits.py [--rounds 3] [--src DIR] [--only alias-1000 ...]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIME = "/usr/bin/time"  # GNU time (Debian package `time`)
sys.path.insert(0, str(ROOT / "benchmarks"))


def alias_file(sites: int, domains: int) -> str:
    lines = ["version: 1", "sites:", f"  s0: {{domains: &d [{', '.join(f'd{i}.com' for i in range(domains))}]}}"]
    lines += [f"  s{i}: {{domains: *d}}" for i in range(1, sites)]
    lines += ["roles: {}", "unlisted: allow"]
    return "\n".join(lines) + "\n"


def suggestion_file() -> str:
    sites = [f"  site{i}: {{domains: [x{i}.com]}}" for i in range(2000)]
    access = "{" + ", ".join(f"site{i}x: full" for i in range(300)) + "}"
    roles = [f"  r{i}: {{members: [all], access: *acc}}" for i in range(1, 150)]
    return "\n".join(["version: 1", "sites:", *sites, "roles:",
                      f"  r0: {{members: [all], access: &acc {access}}}", *roles]) + "\n"


def big_policy() -> str:
    from engine import make_policy_yaml  # benchmarks/engine.py

    return make_policy_yaml(random.Random(7))[0]


FILES = {
    "alias-1000": ("1,000 sites alias one 1,000-domain list", lambda: alias_file(1000, 1000)),
    "alias-2000": ("1,000 sites alias one 2,000-domain list", lambda: alias_file(1000, 2000)),
    "suggestions": ("45,000 aliased unknown site names against 2,000 sites", suggestion_file),
    "example": ("policy/example.yaml (18 sites, 36 tests)", None),
    "engine-50k": ("benchmarks/engine.py's policy: 50,000 domains, 100 roles, 1.4 MB", big_policy),
}


def check(path: Path, src: str | None) -> tuple[float, float, int, str]:
    """(seconds, peak RSS MB, exit status, last line) of one `accessgate check` in its own process.

    Run under /usr/bin/time: a child's peak RSS includes the address space it
    was forked from, so the parent that forks it must be small (time is).
    """
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src
    with tempfile.TemporaryFile() as out, tempfile.NamedTemporaryFile("r") as measured:
        done = subprocess.run([TIME, "-f", "%e %M", "-o", measured.name,
                               sys.executable, "-m", "accessgate", "check", str(path)],
                              cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        seconds, peak_kb = measured.read().split()[-2:]
        out.seek(max(0, out.seek(0, 2) - 4096))
        tail = out.read().decode(errors="replace").strip().splitlines()
    return float(seconds), int(peak_kb) / 1024, done.returncode, tail[-1] if tail else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--src", help="source tree to check with (its src/ folder); default: the installed one")
    parser.add_argument("--only", nargs="*", choices=sorted(FILES), help="check only these files")
    args = parser.parse_args()
    names = args.only or list(FILES)
    with tempfile.TemporaryDirectory(prefix="policy-limits-") as tmp:
        paths = {}
        for name in names:
            what, make = FILES[name]
            if make is None:
                paths[name] = ROOT / "policy" / "example.yaml"
            else:
                paths[name] = Path(tmp) / f"{name}.yaml"
                paths[name].write_text(make())
        print(f"accessgate check, {args.rounds} rounds each, "
              f"{'source ' + args.src if args.src else 'installed accessgate'}")
        for name in names:
            size = paths[name].stat().st_size
            runs = [check(paths[name], args.src) for _ in range(args.rounds)]
            seconds = statistics.median(r[0] for r in runs)
            peak = max(r[1] for r in runs)
            print(f"{name:17} {size / 1024:7.0f} KB  {seconds:7.2f} s  peak RSS {peak:7.0f} MB  "
                  f"exit {runs[0][2]}  {FILES[name][0]}")
            print(f"{'':17} -> {runs[0][3][:110]}")


if __name__ == "__main__":
    main()
