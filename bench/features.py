"""Encode images and texts through the caches: each image is encoded once per model × data × split."""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from bench.backends.base import Backend
from bench.cache import FeatureCache, TextCache, content_key
from bench.datasets.base import ImageFiles, SplitData, collate
from bench.errors import BenchError

log = logging.getLogger(__name__)


def default_workers() -> int:
    """DataLoader workers: one core stays with the encoder."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))


@dataclass
class ImageFeatures:
    features: torch.Tensor  # [N_ok, D] float32, not normalised
    indices: torch.Tensor  # [N_ok] positions in the split's samples
    errors: list[str] = field(default_factory=list)  # unreadable images skipped (--skip-bad-images)
    key: str = ""
    n_encoded: int = 0  # images encoded in this call (0 = all from cache)
    seconds: float = 0.0


def feature_key(backend: Backend, data: SplitData) -> str:
    return content_key({"kind": "image", "model": backend.identity(), "data": data.fingerprint, "split": data.split})


def image_features(backend: Backend, data: SplitData, cache: FeatureCache, **kwargs) -> ImageFeatures:
    """Features for every sample of `data`, from finished cache shards where possible.

    Options as in `_image_features`. One run encodes a cache entry at a time: a concurrent run on the
    same cache waits for the lock, then reads the finished shards instead of encoding them again.
    """
    with cache.lock(feature_key(backend, data)):
        return _image_features(backend, data, cache, **kwargs)


def _image_features(backend: Backend, data: SplitData, cache: FeatureCache, *, batch_size: int = 64,
                    workers: int | None = None, skip_bad_images: bool = False, progress: bool = True) -> ImageFeatures:
    start = time.perf_counter()
    key = feature_key(backend, data)
    n, size = len(data), cache.shard_size
    n_shards = max(1, math.ceil(n / size))
    shards = {s: cache.load_shard(key, s) for s in range(n_shards)}
    missing = [s for s, v in shards.items() if v is None]
    encoded = 0
    if missing and n:
        todo = [i for s in missing for i in range(s * size, min(n, (s + 1) * size))]
        workers = default_workers() if workers is None else workers
        loader = torch.utils.data.DataLoader(
            ImageFiles(data.root, data.paths, backend.preprocess, todo), batch_size=batch_size,
            num_workers=workers, collate_fn=collate, pin_memory=backend.device.type == "cuda",
            persistent_workers=False, prefetch_factor=4 if workers else None)
        buffers: dict[int, dict] = {}
        desc = f"{backend.spec.name} · {data.spec.name}/{data.split}"
        with tqdm(total=len(todo), desc=desc, unit="img", disable=not progress, leave=False) as bar:
            for pixels, idxs, errors in loader:
                if errors and not skip_bad_images:
                    raise BenchError(f"cannot read image {errors[0]}; fix or remove it, or pass --skip-bad-images")
                feats = backend.encode_images(pixels).cpu() if pixels is not None else None
                for row, i in enumerate(idxs):
                    buf = buffers.setdefault(i // size, {"f": [], "i": [], "e": [], "n": 0})
                    buf["f"].append(feats[row])
                    buf["i"].append(i)
                    buf["n"] += 1
                for i, err in errors:
                    buf = buffers.setdefault(i // size, {"f": [], "i": [], "e": [], "n": 0})
                    buf["e"].append(err)
                    buf["n"] += 1
                for s in [s for s, b in buffers.items() if b["n"] == min(n, (s + 1) * size) - s * size]:
                    b = buffers.pop(s)
                    f = torch.stack(b["f"]) if b["f"] else torch.empty(0, 0)
                    cache.save_shard(key, s, f, torch.tensor(b["i"], dtype=torch.long), b["e"])
                    shards[s] = {"features": f, "indices": torch.tensor(b["i"], dtype=torch.long), "errors": b["e"]}
                bar.update(len(idxs) + len(errors))
                encoded += len(idxs)
    cached_errors = [e for s in range(n_shards) for e in (shards[s] or {}).get("errors", [])]
    if cached_errors and not skip_bad_images:  # skipped by an earlier run with --skip-bad-images
        raise BenchError(f"cannot read image {cached_errors[0]}; fix or remove it, or pass --skip-bad-images")
    parts = [shards[s] for s in range(n_shards) if shards[s] is not None and shards[s]["indices"].numel()]
    if not parts:
        raise BenchError(f"{data.spec.name}/{data.split}: no readable images")
    out = ImageFeatures(
        features=torch.cat([p["features"] for p in parts]),
        indices=torch.cat([p["indices"] for p in parts]),
        errors=cached_errors,
        key=key, n_encoded=encoded, seconds=time.perf_counter() - start)
    if not cache.is_complete(key):
        cache.finish(key, {"n": n, "shards": n_shards, "model": backend.identity(), "split": data.split,
                           "dataset": data.spec.name, "n_ok": int(out.indices.numel())})
    return out


def text_identity(backend: Backend) -> dict:
    ident = {k: v for k, v in backend.identity().items() if k != "preprocess"}
    return {**ident, "context_length": backend.context_length, "class": type(backend).__name__}


def text_embeddings(backend: Backend, texts: list[str], cache: TextCache | None, *, batch_size: int = 256,
                    progress: bool = True) -> torch.Tensor:
    """[len(texts), D] float32 embeddings (not normalised); duplicates encoded once, results cached."""
    unique = list(dict.fromkeys(texts))
    key = content_key({"kind": "text", "model": text_identity(backend), "texts": unique})
    emb = cache.load(key) if cache is not None else None
    if emb is None:
        chunks = []
        for i in tqdm(range(0, len(unique), batch_size), desc=f"{backend.spec.name} · text", unit="batch",
                      disable=not progress or len(unique) <= batch_size, leave=False):
            chunks.append(backend.encode_texts(unique[i:i + batch_size]).cpu())
        emb = torch.cat(chunks)
        if cache is not None:
            cache.save(key, emb)
    pos = {t: i for i, t in enumerate(unique)}
    return emb[torch.tensor([pos[t] for t in texts], dtype=torch.long)]
