"""bench: zero-shot image classification benchmarks for CLIP-family models, in Chinese and English."""

__version__ = "0.1.0"
