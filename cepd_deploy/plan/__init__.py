"""The Plan: the typed op list every target consumes (ir), how models become one (lower),
what it costs (cost), its invariants (verify) and its executable definition (reference)."""
