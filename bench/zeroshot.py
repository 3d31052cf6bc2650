"""The zero-shot classifier: prompt ensembles per class, cosine logits. Pure tensor functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOGIT_SCALE = 100.0  # CLIP's learned temperature at convergence; matters only for softmax scores


def normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)


def class_embeddings(per_prompt: torch.Tensor) -> torch.Tensor:
    """[C, T, D] prompt embeddings → [C, D]: normalise each, average over templates, normalise again."""
    return normalize(normalize(per_prompt).mean(dim=1))


def scores(image_features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """[N, D] image features × [C, D] class embeddings → [N, C] scaled cosine logits."""
    return LOGIT_SCALE * normalize(image_features) @ normalize(classes).T


def protocol_scores(logits: torch.Tensor, kind: str) -> torch.Tensor:
    """The scores a protocol's metrics are computed on: `logits` (scaled cosines, as they are) or
    `softmax100`, softmax(100·cos) over the classes, as Chinese CLIP's script and the ELEVATER server use."""
    if kind == "logits":
        return logits
    if kind == "softmax100":
        return (logits * (100.0 / LOGIT_SCALE)).softmax(dim=-1)
    raise ValueError(f"unknown scores kind {kind!r}")
