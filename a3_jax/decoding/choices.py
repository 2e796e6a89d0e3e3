"""The names of decoding options, importable without JAX (console scripts list them in
their flags before JAX loads; the decoders validate against the same tuples)."""

ORDERS = ("l2r", "random")  # group and speculative decoding: the order of the groups
# Dynamic decoding's ranking scores (chosen by a traced index: one compiled decoder for
# all four); 'threshold' ranks by confidence but commits a variable number per step.
SCORES = ("confidence", "entropy", "margin", "random")
CRITERIA = SCORES + ("threshold",)
