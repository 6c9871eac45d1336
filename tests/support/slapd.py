"""A real OpenLDAP `slapd` (Debian package) for tests: its own config, loopback, free ports.

    from support.slapd import slapd   # the pytest fixture

    def test_x(slapd):
        slapd.add_user("alice", "pw")                     # uid=alice,ou=people,dc=example,dc=test
        slapd.add_group("pr", [slapd.user_dn("alice")])   # cn=pr,ou=groups,...
        slapd.url, slapd.ldaps_url, slapd.ca_file
        slapd.stop(); slapd.start()                      # an outage; the data stays
        slapd.pause(); slapd.resume()                    # a hung server (SIGSTOP)

The server is started by the test with `slapd -f` and a config in a temp
dir (never the system's /etc/ldap, never as a service), listens on
127.0.0.1 only (LDAP with StartTLS, and LDAPS), and is stopped by its PID.
Its TLS certificate comes from a throwaway CA made here with `cryptography`;
`wrong_name_cert()` swaps in one for another host name.  The stats log
(`log_text()`) shows every search filter and bind the server received.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest

from support.certs import TestCA, make_ca
from support.processes import ServerProcess, free_port

SLAPD = shutil.which("slapd") or "/usr/sbin/slapd"
SCHEMA = Path("/etc/ldap/schema")
MODULES = Path("/usr/lib/ldap")
SUFFIX = "dc=example,dc=test"


@dataclass
class Slapd(ServerProcess):
    dir: Path
    port: int = field(default_factory=free_port)
    ldaps_port: int = field(default_factory=free_port)
    suffix: str = SUFFIX
    admin_password: str = "admin-secret"
    reader_password: str = "reader-secret"
    process: subprocess.Popen | None = None
    tls: TestCA | None = None
    stop_timeout: ClassVar[float] = 15.0

    @property
    def admin_dn(self) -> str:
        return f"cn=admin,{self.suffix}"

    @property
    def reader_dn(self) -> str:
        return f"cn=reader,ou=services,{self.suffix}"

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.ldaps_port}"

    @property
    def ca_file(self) -> Path:
        assert self.tls is not None
        return self.tls.ca_file

    @property
    def log_path(self) -> Path:
        return self.dir / "slapd.log"

    def user_dn(self, uid: str, ou: str = "people") -> str:
        return f"uid={uid},ou={ou},{self.suffix}"

    def group_dn(self, cn: str) -> str:
        return f"cn={cn},ou=groups,{self.suffix}"

    # ---- lifecycle ----------------------------------------------------------------

    def configure(self) -> None:
        (self.dir / "db").mkdir(parents=True, exist_ok=True)
        if self.tls is None:
            self.tls = make_ca(self.dir)
        conf = f"""
include {SCHEMA}/core.schema
include {SCHEMA}/cosine.schema
include {SCHEMA}/inetorgperson.schema
include {SCHEMA}/nis.schema
modulepath {MODULES}
moduleload back_mdb
moduleload memberof
pidfile {self.dir}/slapd.pid
argsfile {self.dir}/slapd.args
TLSCACertificateFile {self.tls.ca_file}
TLSCertificateFile {self.dir}/active.pem
TLSCertificateKeyFile {self.dir}/active.key
sizelimit 500

database mdb
maxsize 67108864
suffix "{self.suffix}"
rootdn "{self.admin_dn}"
rootpw {self.admin_password}
directory {self.dir}/db
index objectClass eq
index uid,cn,member eq
overlay memberof
access to attrs=userPassword by anonymous auth by * none
access to * by users read by * none
"""
        (self.dir / "slapd.conf").write_text(conf)
        self.use_certificate(self.tls.cert_file, self.tls.key_file)

    def use_certificate(self, cert: Path, key: Path) -> None:
        """The certificate the server presents from its next start."""
        shutil.copyfile(cert, self.dir / "active.pem")
        shutil.copyfile(key, self.dir / "active.key")
        (self.dir / "active.key").chmod(0o600)

    def wrong_name_cert(self) -> None:
        """From the next start, present a certificate from the same CA for another host name."""
        assert self.tls is not None
        cert, key = self.tls.issue(self.dir, ("ldap.elsewhere.test",), ("192.0.2.1",), "wrong-name")
        self.use_certificate(cert, key)

    def start(self, timeout: float = 15.0) -> None:
        assert self.process is None, "already running"
        if not (self.dir / "slapd.conf").exists():
            self.configure()
        log = open(self.dir / "slapd.log", "ab")
        try:
            self.process = subprocess.Popen(
                [SLAPD, "-f", str(self.dir / "slapd.conf"),
                 "-h", f"ldap://127.0.0.1:{self.port}/ ldaps://127.0.0.1:{self.ldaps_port}/",
                 "-d", "stats"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )
        finally:
            log.close()
        self._await_ready(self.answers, f"slapd on port {self.port}", timeout)

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                # An anonymous "Who am I?" extended operation would need a client; a bind does.
                s.sendall(bytes.fromhex("300c020101600702010304008000"))
                s.settimeout(1.0)
                return s.recv(64)[:1] == b"\x30"
        except OSError:
            return False

    # ---- data ----------------------------------------------------------------------

    def admin(self):
        import ldap3

        conn = ldap3.Connection(ldap3.Server("127.0.0.1", port=self.port, get_info=ldap3.NONE),
                                user=self.admin_dn, password=self.admin_password, auto_bind=True,
                                receive_timeout=10)
        return conn

    def _add(self, dn: str, classes: list[str], attributes: dict) -> None:
        conn = self.admin()
        try:
            if not conn.add(dn, classes, attributes):
                raise RuntimeError(f"cannot add {dn}: {conn.result}")
        finally:
            conn.unbind()

    def seed(self) -> None:
        """The base entries: the suffix, ou=people, ou=groups, ou=services and the reader account."""
        dc = self.suffix.split(",")[0].split("=")[1]
        self._add(self.suffix, ["dcObject", "organization"], {"dc": dc, "o": "Example"})
        for ou in ("people", "groups", "services", "contractors"):
            self._add(f"ou={ou},{self.suffix}", ["organizationalUnit"], {"ou": ou})
        self._add(self.reader_dn, ["organizationalRole", "simpleSecurityObject"],
                  {"cn": "reader", "userPassword": self.reader_password})

    def add_user(self, uid: str, password: str, ou: str = "people", aliases: tuple[str, ...] = (), **extra) -> str:
        """uid=UID,ou=OU; `aliases` are further uid values (the RDN stays UID)."""
        dn = self.user_dn(uid, ou)
        attributes = {"uid": [uid, *aliases], "cn": uid, "sn": uid, "userPassword": password, **extra}
        self._add(dn, ["inetOrgPerson"], attributes)
        return dn

    def add_group(self, cn: str, members: list[str]) -> str:
        dn = self.group_dn(cn)
        # groupOfNames needs at least one member; an empty group names the suffix.
        self._add(dn, ["groupOfNames"], {"cn": cn, "member": members or [self.suffix]})
        return dn

    def set_members(self, cn: str, members: list[str]) -> None:
        import ldap3

        conn = self.admin()
        try:
            if not conn.modify(self.group_dn(cn), {"member": [(ldap3.MODIFY_REPLACE, members or [self.suffix])]}):
                raise RuntimeError(f"cannot change {cn}: {conn.result}")
        finally:
            conn.unbind()

    def set_password(self, dn: str, password: str) -> None:
        import ldap3

        conn = self.admin()
        try:
            conn.modify(dn, {"userPassword": [(ldap3.MODIFY_REPLACE, [password])]})
        finally:
            conn.unbind()


@contextmanager
def running_slapd(directory: Path) -> Iterator[Slapd]:
    if not os.path.exists(SLAPD):
        pytest.skip("slapd is not installed (apt-get install slapd ldap-utils)")
    server = Slapd(directory)
    server.configure()
    with server.running():
        server.seed()
        yield server


@pytest.fixture
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    with running_slapd(tmp_path_factory.mktemp("slapd")) as server:
        yield server
