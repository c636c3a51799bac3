"""Datasets, readers and joint image/mask transforms (no model code here)."""
