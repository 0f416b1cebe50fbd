"""The science: data, models, training with branches, metrics, the eNTK, the transition."""
