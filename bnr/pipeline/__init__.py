"""How a stage runs: its command line, the params it declared, protocol and metrics files, the
memory check, overlays, the report and the comparison of experiments."""
