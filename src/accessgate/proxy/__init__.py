"""The mitmproxy adapter: the addon and what it needs to turn flows into decisions and decisions into answers."""
