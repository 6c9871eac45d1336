"""The auditors' tools over the audit log: query, report, replay."""
