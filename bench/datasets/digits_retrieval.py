"""The offline retrieval demo: the digits demo's test images in Chinese CLIP's retrieval layout.

``test_imgs.tsv`` holds ``image_id<TAB>base64 PNG`` lines and ``test_texts.jsonl`` two Chinese captions
per digit, each naming every test image of that digit: several positives per caption (as in MUGE), and
each image found by either of its two captions. It exercises the tsv/jsonl reader, the base64 image
path and both retrieval directions with the `demo` model, offline.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

from bench.cache import create_temp_dir
from bench.datasets.digits import ZH, _to_image, split_indices

# Two caption templates in the demo model's vocabulary (one it was trained on, one from its prompt set).
CAPTIONS = ("手写数字{}。", "一张手写数字{}的图片。")


def prepare_digits_retrieval(folder: Path, seed: int = 0) -> Path:
    """Write the demo retrieval set to `folder` (atomically: a temp folder renamed into place)."""
    from sklearn.datasets import load_digits

    folder = Path(folder)
    if (folder / "test_texts.jsonl").is_file():
        return folder
    data = load_digits()
    test = split_indices(data.target, seed)["test"]
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = create_temp_dir(folder.parent, f".{folder.name}.")
    try:
        by_digit: dict[int, list[int]] = {}
        with open(tmp / "test_imgs.tsv", "w", encoding="utf-8") as f:
            for i in test:
                buf = io.BytesIO()
                _to_image(data.images[i]).save(buf, format="PNG")
                image_id = 100000 + int(i)  # integer ids, as Chinese CLIP's files have
                f.write(f"{image_id}\t{base64.urlsafe_b64encode(buf.getvalue()).decode('ascii')}\n")
                by_digit.setdefault(int(data.target[i]), []).append(image_id)
        with open(tmp / "test_texts.jsonl", "w", encoding="utf-8") as f:
            text_id = 0
            for template in CAPTIONS:
                for digit in sorted(by_digit):
                    f.write(json.dumps({"text_id": text_id, "text": template.format(ZH[digit]),
                                        "image_ids": by_digit[digit]}, ensure_ascii=False) + "\n")
                    text_id += 1
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
