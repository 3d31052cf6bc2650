"""Studies over cached image features: prompt sensitivity, prompt-set comparison, negation, label variants.

`compute` holds pure functions on tensors/arrays; `study` reads features and text embeddings through the
runner's caches and writes `<out>/<model>/<dataset>/study-*.json`; `cli` adds `bench study ...`.
"""
