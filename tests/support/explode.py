"""A mitmproxy test script that makes accessgate fail from inside, on input that asks for it.

Load it with a second `-s` after accessgate.  It replaces functions that
accessgate's hooks call through their module at call time with ones that
raise for a marked input, so a test exercises the real failure path (an
exception inside a hook, or inside a policy load) and nothing in the addon
is simulated.  Unmarked traffic and policies pass as without it.

    marked input                                  what raises              where
    a request or tunnel naming boom.test          engine.decide            every hook that decides
    a response carrying an Alt-Svc header          hygiene.drop_alt_svc     responseheaders (StripAltSvc)
      (the origin's /alt-svc)
    a policy file with `# load_fails: MemoryError` reload.load_policy       the option's load, every reload
      (or RecursionError)
"""

from __future__ import annotations

from pathlib import Path

import accessgate.decision as engine
import accessgate.proxy.hygiene as hygiene
import accessgate.proxy.reload as reload

BOOM = "boom.test"
_LOAD_ERRORS = {"MemoryError": MemoryError, "RecursionError": RecursionError}


def _original(module, name: str):
    """The function as accessgate has it, also when this script is loaded again."""
    fn = getattr(module, name)
    return getattr(fn, "__wrapped_by_explode__", fn)


_decide = _original(engine, "decide")
_drop_alt_svc = _original(hygiene, "drop_alt_svc")
_load_policy = _original(reload, "load_policy")


def decide(request, *args, **kwargs):
    if any(BOOM in str(host).lower() for host in request.hosts):
        raise RuntimeError("fault injected by tests/support/explode.py: the engine")
    return _decide(request, *args, **kwargs)


def drop_alt_svc(headers) -> None:
    if "alt-svc" in headers:
        raise RuntimeError("fault injected by tests/support/explode.py: a response with Alt-Svc")
    _drop_alt_svc(headers)


def load_policy(path, *args, **kwargs):
    text = Path(path).read_text(errors="replace")
    for name, error in _LOAD_ERRORS.items():
        if f"# load_fails: {name}" in text:
            raise error(f"raised by tests/support/explode.py for {path}")
    return _load_policy(path, *args, **kwargs)


for _module, _name, _fn, _real in (
    (engine, "decide", decide, _decide),
    (hygiene, "drop_alt_svc", drop_alt_svc, _drop_alt_svc),
    (reload, "load_policy", load_policy, _load_policy),
):
    _fn.__wrapped_by_explode__ = _real  # type: ignore[attr-defined]
    setattr(_module, _name, _fn)

addons: list = []
