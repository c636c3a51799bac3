"""Step 2: AffinityNet, its labels from the CAMs and its training, and the random walk that
propagates the CAMs with its affinities."""
