"""Speed, measured against baselines in the same run (`twophase bench`)."""
