"""Making sparse checkpoints: pruning plans and masks, the methods (magnitude, Wanda,
SparseGPT, OWL allocation) and their calibration; written out through checkpoint/."""
