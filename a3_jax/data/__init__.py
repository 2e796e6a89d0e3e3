"""Data: the embedded Shakespeare corpus (`corpus`), document sources (`sources`),
grain packing pipelines (`pipeline`) and a JSON-safe iterator state (`json_state`)."""
