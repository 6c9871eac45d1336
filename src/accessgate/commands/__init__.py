"""One module per `accessgate` subcommand.

Each module defines `HELP` (one line), `add_arguments(parser)` and
`run(args) -> int` (the exit status).  `accessgate.cli` imports a module
only when its command runs, so `accessgate check` never pays for DuckDB.
"""
