"""Shared test helpers: real servers and a real mitmdump on 127.0.0.1.

    from support.origin import Origin        # an HTTP origin that records requests
    from support.proxy import start_proxy    # mitmdump + the accessgate addon
    from support.clients import curl          # real curl through the proxy

Everything binds port 0, runs on loopback only and is stopped by PID.
"""
