"""Squid (Debian's `squid`) as the reference proxy a reader compares accessgate with.

    squid = start_squid(origin, rules=RULES, htpasswd=path, core=proxy_core)
    ...  # point clients at squid.port, as at a mitmdump
    squid.stop()                      # by its PID; removes its directory

Its own config in a temporary directory (never the system's /etc/squid,
never as a service; under /tmp, since Squid started by root runs as the
user `proxy`, which must reach its files), listening on 127.0.0.1 only: no cache (memory or disk), one
process (`squid -N`, no SMP workers), no access log.  Like the proxies'
route_to_origin.py, it sends every request to `origin` whatever site it
names (`never_direct` and the origin as its only `cache_peer`) and points
DNS at 127.0.0.1, so nothing leaves the machine.  `rules` are the
`acl` and `http_access` lines of the policy being compared; with
`htpasswd` (APR-MD5 entries: Squid's basic_ncsa_auth reads no {SHA}),
clients sign in as at the proxies and `proxy_auth` ACLs can name them.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from support.processes import accepts, await_ready, free_port, pin, stop_process

SQUID = shutil.which("squid") or "/usr/sbin/squid"
NCSA_AUTH = Path("/usr/lib/squid/basic_ncsa_auth")
USER = "proxy"  # Debian's cache_effective_user: Squid started by root runs as this user

CONFIG = """\
http_port 127.0.0.1:{port}
workers 1
pid_filename {dir}/squid.pid
cache_log {dir}/cache.log
access_log none
cache_store_log none
coredump_dir {dir}
cache deny all
cache_mem 0 MB
shutdown_lifetime 1 seconds
pinger_enable off
visible_hostname accessgate-bench
dns_nameservers 127.0.0.1
cache_peer {origin_host} parent {origin_port} 0 no-query no-digest originserver name=origin
cache_peer_access origin allow all
never_direct allow all
{auth}
{rules}
http_access deny all
"""

AUTH = """\
auth_param basic program {helper} {htpasswd}
auth_param basic children 2 startup=1
auth_param basic credentialsttl 2 hours
acl signed_in proxy_auth REQUIRED
"""


class SquidMissing(RuntimeError):
    """Squid is not installed; the message says how to get it."""


@dataclass
class Squid:
    process: subprocess.Popen
    port: int
    dir: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        logs = [self.dir / "stderr.txt", self.dir / "cache.log"]
        return "".join(log.read_text(errors="replace") for log in logs if log.exists())

    def stop(self) -> int | None:
        status = stop_process(self.process, signal.SIGTERM, timeout=15)
        shutil.rmtree(self.dir, ignore_errors=True)
        return status


def start_squid(origin, *, rules: str, htpasswd: Path | None = None, core: int | None = None) -> Squid:
    """Squid in the foreground on a free port of 127.0.0.1, forwarding everything to `origin`."""
    if not Path(SQUID).exists():
        raise SquidMissing("squid is not installed: apt-get install squid")
    directory = Path(tempfile.mkdtemp(prefix="accessgate-squid-"))
    auth = ""
    if htpasswd is not None:
        shutil.copyfile(htpasswd, directory / "htpasswd")
        auth = AUTH.format(helper=NCSA_AUTH, htpasswd=directory / "htpasswd")
    port = free_port()
    origin_host, _, origin_port = origin.address.rpartition(":")
    conf = directory / "squid.conf"
    conf.write_text(CONFIG.format(port=port, dir=directory, origin_host=origin_host, origin_port=origin_port,
                                  auth=auth, rules=rules))
    if os.geteuid() == 0:  # Squid drops root for its user, which must then write its logs here
        entry = pwd.getpwnam(USER)
        for path in [directory, *directory.iterdir()]:
            os.chown(path, entry.pw_uid, entry.pw_gid)
    parse = subprocess.run([SQUID, "-k", "parse", "-f", str(conf)], capture_output=True, text=True, timeout=30)
    if parse.returncode != 0:
        shutil.rmtree(directory, ignore_errors=True)
        raise RuntimeError(f"squid rejected its config:\n{conf.read_text()}\n{parse.stdout}{parse.stderr}")
    with open(directory / "stderr.txt", "wb") as log:
        process = subprocess.Popen(pin([SQUID, "-N", "-f", str(conf)], core),
                                   stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    squid = Squid(process, port, directory)
    try:
        await_ready(process, lambda: accepts(port), f"squid on port {port}", timeout=30, output=squid.output)
    except RuntimeError:
        squid.stop()
        raise
    return squid
