"""A throwaway MIT Kerberos realm for tests: a real krb5kdc on 127.0.0.1, a free port.

    from support.kdc import kdc_realm   # the pytest fixture (one realm per test module)

    def test_x(kdc_realm):
        kdc_realm.keytab                     # HTTP/localhost@ACCESSGATE.TEST's keys
        token = kdc_realm.spnego_token("alice")   # what a browser sends after 'Negotiate '

Built on the `k5test` package, which writes krb5.conf and kdc.conf into a
temp dir, creates the database with kdb5_util, and starts `krb5kdc -n`
(the Debian packages krb5-kdc, krb5-admin-server and krb5-user).  Its
ports come from one free port here; the KDC listens on that port only.
The process environment points at the realm (KRB5_CONFIG, KRB5CCNAME ...)
while the fixture is active, because the Kerberos library reads it there;
it is restored afterwards.  The KDC is stopped by its PID.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REALM = "ACCESSGATE.TEST"
SERVICE_HOST = "localhost"
KRB5KDC = shutil.which("krb5kdc") or "/usr/sbin/krb5kdc"


def free_port_pair() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (the KDC listens on both)."""
    for _ in range(50):
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port for the KDC")


class KdcRealm:
    """A realm with a KDC, an HTTP/localhost keytab and users with passwords."""

    def __init__(self, realm: str = REALM, clockskew: int | None = None) -> None:
        from k5test import realm as k5realm

        libdefaults = {"rdns": "false", "dns_canonicalize_hostname": "false", "dns_lookup_realm": "false",
                       "udp_preference_limit": "1"}
        if clockskew is not None:
            libdefaults["clockskew"] = str(clockskew)
        port = free_port_pair()
        self.realm_name = realm
        self._realm = k5realm.MITRealm(
            realm=realm, portbase=port, create_user=False, create_host=False, get_creds=False,
            start_kdc=False,
            krb5_conf={"libdefaults": libdefaults,
                       "realms": {"$realm": {"kdc": f"127.0.0.1:{port}"}}},
            kdc_conf={"realms": {"$realm": {"kdc_listen": f"127.0.0.1:{port}", "kdc_tcp_listen": f"127.0.0.1:{port}"}}},
        )
        self.dir = Path(self._realm.tmpdir)
        self.env = dict(self._realm.env)
        self.keytab = str(self.dir / "http.keytab")
        self.service = f"HTTP/{SERVICE_HOST}@{realm}"
        self.passwords: dict[str, str] = {}
        self._realm.addprinc(self.service)
        self._realm.extract_keytab(self.service, self.keytab)

    @property
    def pid(self) -> int | None:
        proc = self._realm._kdc_proc
        return proc.pid if proc else None

    def start(self) -> None:
        self._realm.start_kdc()

    def stop(self) -> None:
        if self._realm._kdc_proc is not None:
            self._realm.stop_kdc()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def add_user(self, name: str, password: str | None = None) -> str:
        """Principal NAME@REALM with a password; returns the principal."""
        password = password or f"{name}-pw-{os.urandom(4).hex()}"
        principal = f"{name}@{self.realm_name}"
        self._realm.addprinc(principal, password)
        self.passwords[name] = password
        return principal

    def add_service(self, principal: str, keytab: str) -> None:
        self._realm.addprinc(principal)
        self._realm.extract_keytab(principal, keytab)

    def kadmin(self, query: str) -> str:
        return self._realm.run_kadminl(query).decode(errors="replace")

    def kinit(self, name: str, lifetime: str | None = None) -> str:
        """A credential cache for NAME (its own file); returns the ccache path."""
        ccache = str(self.dir / f"ccache-{name.replace('/', '_')}")
        flags = ["-c", ccache] + (["-l", lifetime] if lifetime else [])
        self._realm.kinit(f"{name}@{self.realm_name}", self.passwords[name], flags=flags)
        return ccache

    def spnego_token(self, name: str, *, ccache: str | None = None, service_host: str = SERVICE_HOST,
                     mutual: bool = True):
        """(token bytes, client context): what NAME's browser sends for HTTP/service_host."""
        import gssapi

        ccache = ccache or self.kinit(name)
        creds = gssapi.Credentials(usage="initiate", store={"ccache": ccache})
        flags = [gssapi.RequirementFlag.out_of_sequence_detection]
        if mutual:
            flags.append(gssapi.RequirementFlag.mutual_authentication)
        ctx = gssapi.SecurityContext(
            name=gssapi.Name(f"HTTP@{service_host}", gssapi.NameType.hostbased_service),
            creds=creds, usage="initiate", mech=gssapi.MechType.kerberos if False else _spnego(), flags=flags)
        return ctx.step(), ctx


def _spnego():
    import gssapi

    return gssapi.OID.from_int_seq("1.3.6.1.5.5.2")


@contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def running_realm(**kwargs) -> Iterator[KdcRealm]:
    if not os.path.exists(KRB5KDC):
        pytest.skip("krb5kdc is not installed (apt-get install krb5-kdc krb5-admin-server krb5-user)")
    pytest.importorskip("gssapi")
    pytest.importorskip("k5test")
    realm = KdcRealm(**kwargs)
    try:
        with environment(realm.env):
            realm.start()
            yield realm
    finally:
        realm.remove()


@pytest.fixture(scope="module")
def kdc_realm() -> Iterator[KdcRealm]:
    with running_realm() as realm:
        yield realm
