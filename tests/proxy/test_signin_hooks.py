"""The sign-in addon's hooks, in-process: synchronous when nothing is slow, absent when there is nothing to do."""

from __future__ import annotations

import asyncio
import inspect

import pytest
from mitmproxy import exceptions

from accessgate.proxy.identity import SIGNED_IN, SignedIn
from accessgate.proxy.signin import SignIn
from support.authfiles import basic_header, write_entry
from support.inprocess import connect, loaded, request


def signin_of(proxy) -> SignIn:
    return next(a for a in proxy.addons if isinstance(a, SignIn))


def test_without_sign_in_or_directory_the_addon_has_no_hooks(tmp_path):
    with loaded(tmp_path) as proxy:
        signin = signin_of(proxy)
        assert not any(hasattr(signin, hook) for hook in ("requestheaders", "http_connect", "responseheaders"))


def test_a_slow_check_is_awaited_and_a_cached_one_is_not(tmp_path):
    path = write_entry(tmp_path / "htpasswd", "Alice", "pw", "-B", "-C", "5")
    with loaded(tmp_path, accessgate_auth=f"htpasswd:{path}") as proxy:
        signin = signin_of(proxy)
        first = request("GET", "http://www.linkedin.com/", [("Host", "www.linkedin.com"),
                                                            ("Proxy-Authorization", basic_header("Alice", "pw"))])
        pending = signin.requestheaders(first)
        assert inspect.iscoroutine(pending)
        asyncio.run(pending)
        assert first.metadata[SIGNED_IN] == SignedIn("alice", "htpasswd", frozenset())
        assert "proxy-authorization" not in first.request.headers
        again = request("GET", "http://www.linkedin.com/", [("Host", "www.linkedin.com"),
                                                            ("Proxy-Authorization", basic_header("Alice", "pw"))])
        assert signin.requestheaders(again) is None  # from the cache, in the hook itself
        assert again.metadata[SIGNED_IN].user == "alice"
        proxy.hook("requestheaders", again)
        assert proxy.gate.identity(again).user == "alice"


def test_a_connect_signs_in_its_tunnel(tmp_path):
    path = write_entry(tmp_path / "htpasswd", "bob", "pw", "-m")
    with loaded(tmp_path, accessgate_auth=f"htpasswd:{path}") as proxy:
        signin = signin_of(proxy)
        tunnel = connect("www.linkedin.com:443")
        tunnel.request.headers["Proxy-Authorization"] = basic_header("bob", "pw")
        pending = signin.http_connect(tunnel)
        if pending is not None:
            asyncio.run(pending)
        assert tunnel.response is None
        inner = request("GET", "https://www.linkedin.com/feed", client=tunnel.client_conn)
        inner.request.headers["Proxy-Authorization"] = basic_header("mallory", "x")  # the site's, not ours
        assert signin.requestheaders(inner) is None
        assert inner.metadata[SIGNED_IN].user == "bob"
        signin.client_disconnected(tunnel.client_conn)
        assert signin.connection_user(tunnel.client_conn) is None


def test_no_credentials_get_407_with_every_challenge(tmp_path):
    path = write_entry(tmp_path / "htpasswd", "bob", "pw", "-m")
    with loaded(tmp_path, accessgate_auth=f"htpasswd:{path}") as proxy:
        flow = request("GET", "http://www.linkedin.com/")
        assert signin_of(proxy).requestheaders(flow) is None
        assert flow.response.status_code == 407
        assert flow.response.headers.get_all("Proxy-Authenticate") == ['Basic realm="accessgate", charset="UTF-8"']
        proxy.hook("requestheaders", flow)  # AccessGate leaves the 407 alone
        assert flow.response.status_code == 407


@pytest.mark.parametrize(
    "options, message",
    [
        pytest.param({"accessgate_auth": "ldap"}, "no directory.ldap", id="ldap-without-a-directory"),
        pytest.param({"accessgate_auth": "htpasswd"}, "needs the file", id="htpasswd-without-a-file"),
        pytest.param({"accessgate_auth_cache_seconds": -1}, "0 \\(no cache\\) or more", id="negative-cache"),
    ],
)
def test_option_errors_say_what_to_write(tmp_path, options, message):
    with loaded(tmp_path) as proxy:
        with pytest.raises(exceptions.OptionsError, match=message):
            proxy.gate.signin.apply_options(_Options(proxy.tctx.options, options), set(options))


class _Options:
    def __init__(self, base, override):
        self._base, self._override = base, override

    def __getattr__(self, name):
        return self._override[name] if name in self._override else getattr(self._base, name)
