"""CLIP_benchmark's own zero-shot image loop, timed (run by scripts/perf.py inside .venv-perf).

Loads the model with clip_benchmark's open_clip loader, builds the data the way its CLI does for a
folder dataset (torchvision ImageFolder + the model's transform, DataLoader with --num_workers), and
times `run_classification` (its image-encoding loop). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from clip_benchmark.metrics.zeroshot_classification import (
    run_classification,
    zero_shot_classifier,
)
from clip_benchmark.models.open_clip import load_open_clip
from torchvision.datasets import ImageFolder


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model-dir", required=True)
    p.add_argument("--split-dir", required=True)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=1)
    a = p.parse_args()
    model, transform, tokenizer = load_open_clip(f"local-dir:{a.model_dir}", pretrained=None, device="cpu")
    model.eval()
    ds = ImageFolder(a.split_dir, transform=transform)
    loader = torch.utils.data.DataLoader(ds, batch_size=a.batch_size, shuffle=False, num_workers=a.workers)
    # amp=False: fp32 on CPU, as bench does (their default autocasts to bf16 on CPU, changing the numbers)
    classifier = zero_shot_classifier(model, tokenizer, ds.classes, ["a photo of {c}."], "cpu", amp=False)
    start = time.perf_counter()
    pred, _ = run_classification(model, classifier, loader, "cpu", amp=False)
    seconds = time.perf_counter() - start
    print(json.dumps({"images": int(pred.shape[0]), "seconds": seconds, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
