"""The pure decision engine: `decide(request, identity, policy, now) -> Decision`, no I/O, and what explains a decision."""
