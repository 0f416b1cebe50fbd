"""An example twophase plugin: one model factory (models.tanh_mlp) and one dataset loader (data.spirals)."""
