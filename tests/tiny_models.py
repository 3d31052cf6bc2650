"""Tiny real models built from configs and saved to disk the way real checkpoints are laid out."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

OPEN_CLIP_CFG = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def make_open_clip_dir(folder: Path, seed: int = 0) -> Path:
    """A random-init open_clip model in `local-dir:` layout (open_clip_config.json + safetensors)."""
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = open_clip.CLIP(**OPEN_CLIP_CFG)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"model_cfg": OPEN_CLIP_CFG,
           "preprocess_cfg": {"mean": CLIP_MEAN, "std": CLIP_STD, "interpolation": "bicubic",
                              "resize_mode": "shortest", "size": 32}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "open_clip_model.safetensors")
    return folder


def cn_vocab_file() -> Path:
    import cn_clip

    return Path(os.path.dirname(cn_clip.__file__)) / "clip" / "vocab.txt"


def make_chinese_clip_dir(folder: Path, seed: int = 0) -> Path:
    """A random-init ChineseCLIPModel saved with save_pretrained (model, tokenizer, image processor)."""
    import shutil

    from transformers import BertTokenizerFast, ChineseCLIPConfig, ChineseCLIPImageProcessor, ChineseCLIPModel

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    vocab_dir = folder / "_vocab"
    vocab_dir.mkdir(exist_ok=True)
    shutil.copy(cn_vocab_file(), vocab_dir / "vocab.txt")
    tokenizer = BertTokenizerFast.from_pretrained(vocab_dir)
    shutil.rmtree(vocab_dir)
    text = dict(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=64)
    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                  image_size=32, patch_size=8, projection_dim=16)
    config = ChineseCLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    model = ChineseCLIPModel(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    ChineseCLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                              image_mean=CLIP_MEAN, image_std=CLIP_STD).save_pretrained(folder)
    return folder


def write_model_yaml(path: Path, **spec) -> Path:
    path.write_text(yaml.safe_dump(spec, allow_unicode=True))
    return path


def make_image_dataset(folder: Path, n_classes: int = 3, per_class: int = 4, size=(48, 24),
                       labels_en=None, labels_zh=None, seed: int = 0) -> Path:
    """An ELEVATER-CN folder of non-square random images (zero-padded class folders, label files)."""
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for c in range(n_classes):
            d = folder / split / f"{c:03d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
                arr[..., c % 3] = np.clip(arr[..., c % 3].astype(int) + 80, 0, 255)
                Image.fromarray(arr).save(d / f"img{i}.png")
    labels_en = labels_en or [f"class {c}" for c in range(n_classes)]
    labels_zh = labels_zh or ["猫", "狗", "汽车", "飞机", "花"][:n_classes]
    (folder / "label.txt").write_text("\n".join(labels_en) + "\n")
    (folder / "label_cn.txt").write_text("\n".join(labels_zh) + "\n", encoding="utf-8")
    return folder


def non_square_images(n: int, seed: int) -> list[Image.Image]:
    """Non-square images (wide and tall) with coloured blocks, so crop and squash differ."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = (24, 56) if i % 2 else (60, 28)
        arr = rng.integers(0, 256, size=(h, w, 3)).astype(np.uint8)
        arr[: h // 2, : w // 3] = rng.integers(0, 256, 3)
        out.append(Image.fromarray(arr))
    return out
