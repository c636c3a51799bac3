"""params.yaml: its typed blocks, the spec of every key, the cross-key constraints and the YAML
loader with DVC's semantics."""
