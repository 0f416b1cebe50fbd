"""twophase: the two-phase learning dynamics of neural networks (Chaos and Cone effects).

Importable without Streamlit: the app only draws what this package computes.
"""

import os

# cuBLAS needs this before CUDA starts to be deterministic (SCIENCE.md); harmless on CPU.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

__version__ = "0.1.0"
