"""Pretrained weights: which file a stage loads (``*.pretrained``), the fingerprints the
``weights`` stage writes, and the pretrain world's training."""
