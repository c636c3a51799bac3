"""Step 4: the segmenter (DeepLab) trained on the pseudo labels, its test-time inference and its
evaluation."""
