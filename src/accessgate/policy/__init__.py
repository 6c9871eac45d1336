"""The policy language: its model, the loader that reads and checks YAML, host names, rule paths, windows, and the tools built on them (dump, PAC, a policy's own tests)."""
