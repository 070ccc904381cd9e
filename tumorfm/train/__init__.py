"""Training: the partial-label loss (and, later, the pretraining loop)."""
