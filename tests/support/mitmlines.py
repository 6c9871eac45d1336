"""What differs between the mitmproxy lines accessgate supports (11.0.x on Python 3.11, 12 on 3.12 and later).

Each difference is probed in the running environment (the tests run mitmdump
from the same one: support.proxy.MITMDUMP), never guessed from a version
number, so a test expects what this mitmdump will really do.
"""

from __future__ import annotations

from functools import cache

# mitmproxy's log line when h2 refuses a request with two `host` headers.
REPEATED_HOST_REFUSED = "multiple Host headers"


@cache
def h2_refuses_repeated_host() -> bool:
    """Whether h2, as mitmproxy configures it, refuses a request with two `host` headers itself.

    h2 4.2 and later (mitmproxy 12's) raise a connection-level ProtocolError
    for it while reading the HEADERS frame: mitmproxy answers GOAWAY, logs
    "HTTP/2 protocol error: ... multiple Host headers" and makes no flow, so
    no hook (and no accessgate answer) sees the request.  h2 4.1
    (mitmproxy 11's) passes every such header on, and accessgate decides
    each of them.
    """
    import h2.config
    import h2.connection
    import h2.exceptions

    client = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False))
    client.initiate_connection()
    client.send_headers(1, [(":method", "GET"), (":scheme", "https"), (":authority", "a.test"), (":path", "/"),
                            ("host", "a.test"), ("host", "a.test")], end_stream=True)
    # mitmproxy's server side: validate_inbound_headers is its option's default (true).
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, validate_inbound_headers=True))
    server.initiate_connection()
    try:
        server.receive_data(client.data_to_send())
    except h2.exceptions.ProtocolError as exc:
        return REPEATED_HOST_REFUSED in str(exc)
    return False


def logged(proxy, text: str, timeout: float = 3.0) -> bool:
    """Whether mitmdump's own output (its log) shows `text` within `timeout`."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        if text in proxy.output():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
