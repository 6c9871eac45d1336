"""The policy language: what a policy says and how it is read.

    model       the policy as the engine sees it, and the outcome codes
    loader      load_policy/parse_policy: sources, nodes, validate, testcases,
                suggest, limits (see its docstring)
    hosts, paths, windows   host names, rule paths and time windows
    dump, pac   the tools built on a policy: one-file dump, proxy auto-config

Nothing here imports the decision engine; running a policy's own tests is
`accessgate.decision.policytests`.
"""
