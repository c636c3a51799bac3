"""Model families: one family per file, each with named presets."""
