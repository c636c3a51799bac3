"""Step 3: the pseudo labels: dense CRF of the random-walk labels (and its settings), and their
evaluation against the ground truth."""
