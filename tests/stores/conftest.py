from support.redis_server import redis_server  # noqa: F401  (the fixture)
