"""Where results, records and checkpoints are kept, and how they are checked before use."""
