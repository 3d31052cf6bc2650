"""A tiny CLIP: a small CNN image tower and a one-layer transformer text tower over words / Han characters."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import torch
from torch import nn

PAD, UNK, CLS = "[PAD]", "[UNK]", "[CLS]"
_TOKEN_RE = re.compile(r"[a-z]+|[\u3400-\u9fff]|[0-9]")


def split_words(text: str) -> list[str]:
    """English words and single Han characters (Chinese has no spaces); punctuation is dropped."""
    return _TOKEN_RE.findall(text.lower())


class Tokenizer:
    def __init__(self, vocab: list[str], context_length: int):
        self.vocab = list(vocab)
        self.index = {t: i for i, t in enumerate(self.vocab)}
        self.context_length = context_length

    def tokenize(self, text: str) -> list[str]:
        return [w if w in self.index else UNK for w in split_words(text)]

    def __call__(self, texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.index[CLS]] + [self.index[t] for t in self.tokenize(text)]
            ids = ids[: self.context_length]
            out[row, : len(ids)] = torch.tensor(ids)
        return out


@dataclass(frozen=True)
class TinyConfig:
    vocab: tuple[str, ...]
    embed_dim: int = 64
    width: int = 64
    context_length: int = 24
    image_size: int = 32

    def to_dict(self) -> dict:
        d = asdict(self)
        d["vocab"] = list(self.vocab)
        return d


class TinyCLIP(nn.Module):
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.cfg = cfg
        self.visual = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
            nn.Flatten(), nn.Linear(64 * 16, 128), nn.ReLU(), nn.Linear(128, cfg.embed_dim),
        )
        self.token_embedding = nn.Embedding(len(cfg.vocab), cfg.width)
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.context_length, cfg.width))
        self.text = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(cfg.width, nhead=2, dim_feedforward=2 * cfg.width, dropout=0.0,
                                       batch_first=True), num_layers=1, enable_nested_tensor=False)
        self.text_projection = nn.Linear(cfg.width, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(2.3))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual(pixels)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        x = self.text(x, src_key_padding_mask=tokens == 0)
        return self.text_projection(x[:, 0])  # the [CLS] position
