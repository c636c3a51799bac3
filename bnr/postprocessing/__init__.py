"""Seed post-processing: affinity labels, random walk, dense CRF (PSA as configured by TransCAM)."""
