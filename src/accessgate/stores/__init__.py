"""Quota state: where the minutes that daily quotas count are kept (memory, SQLite, Redis)."""
