"""The zero-shot classifier: prompt ensembles per class, cosine logits. Pure tensor functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOGIT_SCALE = 100.0  # CLIP's learned temperature at convergence; matters only for softmax scores


def normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)


PerPrompt = torch.Tensor | list[torch.Tensor]  # [C, T, D], or per class [T_c, D] when counts differ


def class_embeddings(per_prompt: PerPrompt) -> torch.Tensor:
    """[C, T, D] prompt embeddings → [C, D]: normalise each, average over templates, normalise again.

    A ragged list (one [T_c, D] tensor per class: classes with their own descriptions or CuPL
    prompts) is averaged per class. Classes with equal counts go through the [C, T, D] path together,
    so a class's embedding does not depend on which other classes share its count.
    """
    if isinstance(per_prompt, torch.Tensor):
        return normalize(normalize(per_prompt).mean(dim=1))
    groups: dict[int, list[int]] = {}
    for c, rows in enumerate(per_prompt):
        groups.setdefault(rows.shape[0], []).append(c)
    out = torch.empty(len(per_prompt), per_prompt[0].shape[-1])
    for idx in groups.values():
        out[idx] = class_embeddings(torch.stack([per_prompt[c] for c in idx]))
    return out


def n_prompts(per_prompt: PerPrompt | list[list]) -> int | list[int]:
    """Prompts per class: one number for a [C, T, D] grid, one per class when they differ."""
    if isinstance(per_prompt, torch.Tensor):
        return per_prompt.shape[1]
    counts = [len(r) for r in per_prompt]
    return counts[0] if len(set(counts)) == 1 else counts


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
