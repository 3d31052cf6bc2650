"""Train the demo model on the digits train split (never the test split); cached as safetensors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.cache import atomic_save_tensors, atomic_write_json
from bench.datasets.digits import EN, ZH, _to_image, split_indices
from bench.demo.model import CLS, PAD, UNK, TinyCLIP, TinyConfig, split_words
from bench.preprocess import build_transform, squash_transform

log = logging.getLogger(__name__)
MEAN = STD = (0.5, 0.5, 0.5)
# Captions the model is trained on; the shipped demo prompt sets use some of these and some not.
TRAIN_TEMPLATES = {
    "en": ["a photo of the number {}.", "a handwritten {}.", "the digit {}.", "a drawing of the number {}.",
           "{}", "a picture of a {}.", "the number {}, written by hand.", "a blurry {}."],
    "zh": ["一张数字{}的照片。", "手写的{}。", "数字{}。", "一张手写数字{}的图片。", "{}",
           "一幅{}的图。", "手写数字{}。", "模糊的{}。"],
}
LABELS = {"en": EN, "zh": ZH}


def preprocess(kind: str = "model"):
    """The demo model's transform (a squash to 32 px, what it was trained on), or a protocol's at 32 px."""
    return squash_transform(32, MEAN, STD) if kind == "model" else build_transform(kind, 32, MEAN, STD)


def build_vocab() -> list[str]:
    words = set()
    for lang, templates in TRAIN_TEMPLATES.items():
        for t in templates:
            for label in LABELS[lang]:
                words.update(split_words(t.format(label)))
    for path in (Path(__file__).resolve().parents[2] / "prompts").glob("demo-*.yaml"):
        words.update(split_words(path.read_text(encoding="utf-8")))
    return [PAD, UNK, CLS] + sorted(words)


def train(folder: Path, steps: int = 600, seed: int = 0) -> Path:
    """Train and save `model.safetensors` + `config.json` into `folder`; returns the folder."""
    from sklearn.datasets import load_digits

    from bench.demo.model import Tokenizer

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    data = load_digits()
    idx = split_indices(data.target, seed=0)["train"]
    tf = preprocess()
    images = torch.stack([tf(_to_image(data.images[i])) for i in idx])
    targets = torch.tensor(data.target[idx], dtype=torch.long)
    cfg = TinyConfig(vocab=tuple(build_vocab()))
    tok = Tokenizer(list(cfg.vocab), cfg.context_length)
    model = TinyCLIP(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    log.info("training the demo model on %d digit images (%d steps)", len(idx), steps)
    for _ in range(steps):
        batch = torch.from_numpy(rng.choice(len(idx), 128, replace=False))
        img = F.normalize(model.encode_image(_augment(images[batch], rng)), dim=-1)
        loss = 0.0
        for lang in ("en", "zh"):
            caps = [TRAIN_TEMPLATES[lang][rng.integers(len(TRAIN_TEMPLATES[lang]))].format(label)
                    for label in LABELS[lang]]
            txt = F.normalize(model.encode_text(tok(caps)), dim=-1)
            logits = model.logit_scale.exp() * img @ txt.T
            loss = loss + F.cross_entropy(logits, targets[batch]) + F.cross_entropy(logits.T, _first_of_each(targets[batch]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6)
    folder = Path(folder)
    atomic_save_tensors(folder / "model.safetensors", {k: v.contiguous() for k, v in model.state_dict().items()})
    atomic_write_json(folder / "config.json", {**cfg.to_dict(), "steps": steps, "seed": seed,
                                               "mean": MEAN, "std": STD})
    return folder


def _augment(x: torch.Tensor, rng) -> torch.Tensor:
    shift = rng.integers(-2, 3, size=2)
    return torch.roll(x, shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))


def _first_of_each(targets: torch.Tensor) -> torch.Tensor:
    """For the text→image direction: for each class, the index of one image of that class (-100 if none)."""
    out = torch.full((10,), -100, dtype=torch.long)
    for i, t in enumerate(targets.tolist()):
        if out[t] == -100:
            out[t] = i
    return out


def load_config(folder: Path) -> TinyConfig:
    raw = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    return TinyConfig(vocab=tuple(raw["vocab"]), embed_dim=raw["embed_dim"], width=raw["width"],
                      context_length=raw["context_length"], image_size=raw["image_size"])
