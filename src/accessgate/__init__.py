"""accessgate: a role-to-site access policy engine for corporate web proxies."""

__version__ = "0.1.0"
