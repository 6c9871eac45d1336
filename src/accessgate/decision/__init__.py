"""The pure decision engine: `decide(request, identity, policy, now) -> Decision`.

    types   Request, Identity, Decision and the codes a decision carries
    rules   decide() and the contract's rules, in the contract's order
    sites   host -> site
    plan    per-policy tables and caches: what a host decides for a role set
    quota   the ledger of used minutes the engine reads
    continuations   who gave a reason on a warn page, and until when
    content what a request says it does, for read_only_allow rules with an operation
    explain, policytests   requests typed by people, and a policy's own tests

Nothing here imports mitmproxy, structlog or prometheus.
"""

from accessgate.decision.plan import grants_for, prepare, roles_for
from accessgate.decision.sites import site_for
from accessgate.decision.continuations import Continuations, MemoryContinuations, NoContinuations
from accessgate.decision.quota import MemoryLedger, NoQuotaUsed, QuotaLedger, QuotaUsage
from accessgate.decision.content import BODY_LIMIT, Claimed, Content
from accessgate.decision.rules import (
    BUILD, decide, local_day, minute_of, operation_said, operations_asked, read_only_refusal,
)  # fmt: skip
from accessgate.decision.types import (  # the codes a decision carries, and what it is about
    ALLOW, ALLOW_REASONS, ALLOWED, BLOCK, BLOCK_REASONS, DENIED, HEADERS_READ, JUSTIFICATION_REQUIRED, MAX_HOST_NAMES,
    METHOD_OVERRIDE_HEADERS, OUTSIDE_WINDOW, QUOTA_EXHAUSTED, READ_ONLY, RULE_INVALID_HOST, RULE_NO_GRANT,
    RULE_UNAUTHENTICATED, RULE_UNLISTED, SAFE_METHODS, UNAUTHENTICATED, UNLISTED, Decision, Identity, Request,
)  # fmt: skip

__all__ = [
    "ALLOW", "ALLOWED", "ALLOW_REASONS", "BLOCK", "BLOCK_REASONS", "BODY_LIMIT", "BUILD", "Claimed", "Content",
    "Continuations", "DENIED", "HEADERS_READ", "JUSTIFICATION_REQUIRED", "MemoryContinuations", "NoContinuations",
    "MAX_HOST_NAMES", "METHOD_OVERRIDE_HEADERS", "OUTSIDE_WINDOW", "QUOTA_EXHAUSTED", "READ_ONLY",
    "RULE_INVALID_HOST", "RULE_NO_GRANT", "RULE_UNAUTHENTICATED", "RULE_UNLISTED", "SAFE_METHODS",
    "UNAUTHENTICATED", "UNLISTED", "Decision", "Identity", "MemoryLedger", "NoQuotaUsed", "QuotaLedger",
    "QuotaUsage", "Request", "decide", "grants_for", "local_day", "minute_of", "operation_said",
    "operations_asked", "prepare",
    "read_only_refusal", "roles_for", "site_for",
]  # fmt: skip
