"""Step 1 of the paper: the CAM network (Conformer), its training with the TransCAM / BNR losses,
the attention-refined maps, seeds and their evaluation, and the attention diagnostics."""
