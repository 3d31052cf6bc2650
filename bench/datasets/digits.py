"""The offline demo dataset: scikit-learn's bundled handwritten digits, written in ELEVATER-CN layout."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from bench.cache import create_temp_dir

EN = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
ZH = ["零", "一", "二", "三", "四", "五", "六", "七", "八", "九"]
IMAGE_SIZE = 32
TEST_FRACTION = 0.3


def _to_image(pixels: np.ndarray) -> Image.Image:
    # sklearn digits are 8×8 with values 0..16, dark ink on white is what photos look like
    arr = (255 - pixels.reshape(8, 8) * (255 / 16)).clip(0, 255).astype(np.uint8)
    return Image.fromarray(arr, mode="L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR).convert("RGB")


def split_indices(targets: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """A stratified train/test split (same every time for a given seed)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(targets):
        idx = rng.permutation(np.flatnonzero(targets == c))
        n_test = int(round(len(idx) * TEST_FRACTION))
        test.extend(idx[:n_test])
        train.extend(idx[n_test:])
    return {"train": np.sort(train), "test": np.sort(test)}


def prepare_digits(folder: Path, seed: int = 0) -> Path:
    """Write the digits dataset to `folder` (atomically: a temp folder renamed into place)."""
    from sklearn.datasets import load_digits

    folder = Path(folder)
    if (folder / "test").is_dir():
        return folder
    data = load_digits()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = create_temp_dir(folder.parent, f".{folder.name}.")  # follows the umask, unlike mkdtemp
    try:
        for split, idx in split_indices(data.target, seed).items():
            for i in idx:
                d = tmp / split / str(int(data.target[i]))
                d.mkdir(parents=True, exist_ok=True)
                _to_image(data.images[i]).save(d / f"{i:04d}.png")
        (tmp / "label.txt").write_text("\n".join(EN) + "\n", encoding="utf-8")
        (tmp / "label_cn.txt").write_text("\n".join(ZH) + "\n", encoding="utf-8")
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
