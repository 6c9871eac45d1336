"""Shared test and benchmark helpers: real servers and a real mitmdump on 127.0.0.1.

    from support.origin import Origin        # an HTTP origin that records requests
    from support.proxy import start_proxy    # mitmdump + the accessgate addon (or bare)
    from support.clients import curl          # real curl through the proxy
    from support.nginx import start_nginx    # a fast origin, for load
    from support.redis_server import redis_server     # also slapd, kdc, haproxy, squid
    from support.processes import free_port, stop_process   # what every server needs

Everything binds a free port, runs on loopback only and is stopped by PID.
benchmarks/ imports these too (it puts tests/ on sys.path).
"""
