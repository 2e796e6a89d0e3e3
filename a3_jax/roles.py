"""Per-token roles of a fine-tuning batch (`roles` [B, T] int32, beside the segment ids).

  PADDING   0  no token (segment id 0)
  PROMPT    1  given: group 0 of its example, never scored
  RESPONSE  2  scored: grouped by the curriculum over the response alone

A batch without `roles` is pretraining data: every token is scored.
"""

PADDING, PROMPT, RESPONSE = 0, 1, 2
