"""Console scripts: one module per command, each a thin absl layer over library calls.

`common` holds what they share: flag parsing, the user-error rule (a
`UserError` is one line on stderr and exit 2; anything else is a bug with a
traceback) and the `--json` convention (one JSON object per result on stdout).
"""
