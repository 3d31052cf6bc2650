"""Encode images and texts through the caches: each image is encoded once per model × data × split."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from bench import distributed, kernels
from bench.backends.base import Backend
from bench.cache import FeatureCache, TextCache, content_key
from bench.datasets.base import SplitData, collate
from bench.device_decode import CpuStage, DeviceDecoder, RawImageFiles, collate_raw, plan_transform, staged
from bench.errors import BenchError, first_line
from bench.preprocess import split_for_workers

log = logging.getLogger(__name__)


COMPILE_POLICIES = ("auto", "on", "off")
# `--compile auto` compiles when the eager encoding still to do would take longer than this. Compiling a
# ViT-B on a 2-core CPU costs 24-30 s. Against aten's eager linears ("cpu") the tower is ~2x faster, so
# 60 s of eager work repays it; against oneDNN's ("cpu-onednn", bench.kernels: --cpu-gemm auto's choice on
# AMD with AVX-512) only ~1.35x (ViT-B/32, batch 64: 1.39 s vs 1.88 s), which breaks even near 90 s, hence 120.
# On a GPU the gain is smaller and compiling slower, hence the higher bar. Those gains were measured on an
# AVX-512 CPU; on an AVX2-only AMD EPYC the compiled ViT-B-32 tower ran at eager speed (5.6-6.4 s against
# 5.8-6.8 s a batch) after 69 s of building, so there `auto` never compiles (`on` still does).
COMPILE_WORTH_S = {"cpu": 60.0, "cpu-onednn": 120.0, "cpu-no-avx512": math.inf, "cuda": 300.0}


def compile_kind(backend: Backend) -> str:
    """The COMPILE_WORTH_S row that applies to `backend`: its device type, and on CPU whether it has
    AVX-512 and which eager linear kernels it runs (the baseline a compiled tower has to beat)."""
    device = backend.device.type
    if device != "cpu":
        return device
    if not kernels.has_avx512():
        return "cpu-no-avx512"
    return "cpu-onednn" if backend.gemm == "onednn" else "cpu"


def should_compile(policy: str, device: str, eager_s_per_image: float, images_left: int,
                   worth_s: float | None = None, stored: bool = False) -> bool:
    """Whether to switch the image tower to its compiled form: `on` always, `off` never; `auto` when a
    compiled tower is already at hand (`stored`: in memory or on disk, so nothing to compile), or when the
    eager encoding left in the whole run (`images_left`, every dataset still to encode with this model,
    timed from one eager batch) would take longer than `worth_s` (default COMPILE_WORTH_S for the device)."""
    if policy not in COMPILE_POLICIES:
        raise BenchError(f"--compile must be one of {', '.join(COMPILE_POLICIES)}, got '{policy}'")
    if policy != "auto":
        return policy == "on"
    if stored:
        return True
    if worth_s is None:
        worth_s = COMPILE_WORTH_S.get(device, COMPILE_WORTH_S["cuda"])
    return eager_s_per_image * images_left > worth_s


class ImageEncoder:
    """Encodes batches for one cache entry under a compile policy: `on` compiles before the first batch;
    `auto` uses a compiled tower at once if one is in memory or stored, else times the first batch eagerly
    and compiles if the rest of the run would take long enough to repay it (never on a CPU without AVX-512,
    where compiling was measured not to pay). `later` counts the images that
    later datasets of the run will encode with this backend (asked only when this entry alone is not enough).

    A compiler failure is an error under `on` (it was asked for) and a warning plus eager encoding under
    `auto`. Compiled and eager features agree to float32 rounding (about 1e-6), like two batch sizes do,
    so the choice is recorded in results but is not part of the feature cache key."""

    def __init__(self, backend: Backend, policy: str, total: int, worth_s: float | None = None,
                 later: Callable[[], int] | None = None):
        should_compile(policy, backend.device.type, 0.0, 0)  # validate the name before any work
        self.backend, self.policy, self.left, self.worth_s, self.later = backend, policy, total, worth_s, later
        # eager-timing (auto, first batch) → eager | compile-next → compiled | eager
        self.state = {"auto": "eager-timing", "on": "compile-next", "off": "eager"}[policy]
        self.compile_s = 0.0  # wall time of the first compiled call: compiling (or loading) plus that batch
        self.tower = ""  # where the compiled tower came from: memory | stored | built | jit

    @property
    def compiled(self) -> bool:
        return self.state == "compiled"

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.state == "eager-timing" and self._worth() < math.inf and self._has_tower(pixels):
            self.state = "compile-next"
        self.left -= len(pixels)
        if self.state == "compile-next":
            return self._first_compiled(pixels)
        if self.state != "eager-timing":
            return self.backend.encode_images(pixels, compiled=self.compiled)
        start = time.perf_counter()
        out = self.backend.encode_images(pixels)
        per_image = (time.perf_counter() - start) / max(len(pixels), 1)
        bar = self._worth()
        worth = should_compile(self.policy, "", per_image, self.left, bar)
        later = 0
        if not worth and bar < math.inf and self.later is not None:  # inf: never, so nothing to count
            later = self.later()
            worth = should_compile(self.policy, "", per_image, self.left + later, bar)
        if worth:
            self.state = "compile-next"
            log.info("compiling the image tower of %s (about %.0f s of eager encoding left in the run; "
                     "--compile off skips this)", self.backend.spec.name, per_image * (self.left + later))
        else:
            self.state = "eager"
        return out

    def _worth(self) -> float:
        """Seconds of eager encoding left that make compiling worth it here (inf: never, under auto)."""
        if self.worth_s is not None:
            return self.worth_s
        return COMPILE_WORTH_S.get(compile_kind(self.backend), COMPILE_WORTH_S["cuda"])  # mps, xpu: as a GPU

    def _has_tower(self, pixels: torch.Tensor) -> bool:
        has = getattr(self.backend, "has_compiled_tower", None)
        try:
            return bool(has and has(pixels))
        except Exception:  # the key needs the model's identity; any failure just means "not known to exist"
            return False

    def _first_compiled(self, pixels: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        try:
            out = self.backend.encode_images(pixels, compiled=True)
        except Exception as exc:  # inductor/dynamo raise many types (no C compiler, unsupported op, ...)
            reason = first_line(exc)
            if self.policy == "on":
                raise BenchError(f"--compile on: torch.compile failed for {self.backend.spec.name}: {reason}; "
                                 "run with --compile off (or auto)") from None
            log.warning("torch.compile failed for %s (%s); encoding eagerly", self.backend.spec.name, reason)
            self.state = "eager"
            return self.backend.encode_images(pixels)
        self.state, self.compile_s = "compiled", time.perf_counter() - start
        self.tower = getattr(self.backend, "tower_source", "")
        return out


class ThreadTuner:
    """Gives DataLoader workers their cores back when decoding, not the encoder, is the bottleneck.

    With a cheap model the workers' decoding limits throughput, and an encoder that also runs on every
    core makes both sides slower (OpenMP threads spin while a worker holds their core): on 2 cores a tiny
    model ran 1.3-1.7x faster on 1 thread than on 2. With an expensive model the workers are mostly idle
    and the encoder needs every core. So, on CPU with workers, once the prefetched batches are used up, the
    share of time spent waiting for data is measured over a few batches; if it is large, the encoder drops
    to cores - workers threads. The process's thread count is restored on exit."""

    SKIP = 5  # batches before measuring: worker start-up and the prefetched batches (prefetch_factor 4)
    WINDOW = 4  # batches measured
    DATA_BOUND = 0.1  # waiting this share of the time means the decoders are the bottleneck

    def __init__(self, workers: int, device: str):
        self.original = torch.get_num_threads()
        self.fewer = max(1, (os.cpu_count() or 1) - workers)
        self.active = device == "cpu" and workers > 0 and self.fewer < self.original
        self.batches, self.wait_s, self.total_s = 0, 0.0, 0.0
        self.threads = self.original

    def __enter__(self) -> ThreadTuner:
        return self

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self.original)

    def batch_done(self, wait_s: float, total_s: float) -> None:
        """Account one batch: seconds spent waiting for it, and in all (wait + encode + write)."""
        self.batches += 1
        if not self.active or self.batches <= self.SKIP:
            return
        self.wait_s, self.total_s = self.wait_s + wait_s, self.total_s + total_s
        if self.batches < self.SKIP + self.WINDOW:
            return
        self.active = False
        share = self.wait_s / max(self.total_s, 1e-9)
        if share > self.DATA_BOUND:
            self.threads = self.fewer
            torch.set_num_threads(self.fewer)
        log.debug("waited for data %.0f%% of the time: encoder on %d thread(s)", 100 * share, self.threads)


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
    compiled: bool = False  # the image tower ran through torch.compile in this call
    compile_s: float = 0.0
    tower: str = ""  # where the compiled tower came from: memory | stored | built | jit ("" when eager)


def feature_key(backend: Backend, data: SplitData, decode: str = "cpu") -> str:
    """The feature cache entry of one split under one model; `--decode device` features (resized by torch,
    not PIL, so not the same to the last bit) are an entry of their own."""
    key = {"kind": "image", "model": backend.identity(), "data": data.fingerprint, "split": data.split}
    if decode != "cpu":
        key["decode"] = decode
    return content_key(key)


def image_features(backend: Backend, data: SplitData, cache: FeatureCache, **kwargs) -> ImageFeatures:
    """Features for every sample of `data`, from finished cache shards where possible.

    Options as in `_image_features`. One run encodes a cache entry at a time: a concurrent run on the
    same cache waits for the lock, then reads the finished shards instead of encoding them again.
    """
    # Under torchrun the ranks already split the entry into disjoint shards and meet at a barrier;
    # a lock held by one rank across that barrier would deadlock the others.
    single = distributed.current().world == 1
    with cache.lock(feature_key(backend, data, kwargs.get("decode", "cpu"))) if single else contextlib.nullcontext():
        return _image_features(backend, data, cache, **kwargs)


def _image_features(backend: Backend, data: SplitData, cache: FeatureCache, *, batch_size: int = 64,
                    workers: int | None = None, skip_bad_images: bool = False, progress: bool = True,
                    compile: str = "auto", later: Callable[[str], int] | None = None,
                    decode: str = "cpu") -> ImageFeatures:
    # `later(key)`: the images the rest of the run will encode with this backend, besides entry `key`;
    # `decode`: cpu (PIL in the workers) | device (bench.device_decode)
    start = time.perf_counter()
    key = feature_key(backend, data, decode)
    n, size = len(data), cache.shard_size
    n_shards = max(1, math.ceil(n / size))
    shards = {s: cache.load_shard(key, s) for s in range(n_shards)}
    missing = [s for s, v in shards.items() if v is None]
    dist = distributed.current()
    mine = [s for s in missing if dist.owns(s)]  # under torchrun: this rank's disjoint share
    encoded = 0
    encoder = None
    if mine and n:
        writer = ShardWriter(cache, key, n)
        done_before: set[int] = set()  # rows a killed run already saved in a partial shard
        for s in mine:
            part = cache.load_partial(key, s)
            if part is not None:
                done_before.update(part["indices"].tolist())
                done_before.update(i for i, _ in part["errors"])
                shards.update(writer.seed(s, part))
        todo = [i for s in mine for i in range(s * size, min(n, (s + 1) * size)) if i not in done_before]
        workers = default_workers() if workers is None else workers
        per_image, per_batch = split_for_workers(backend.preprocess)
        if decode == "device":
            images, collate_fn = RawImageFiles(data.root, data.paths, per_image, todo, data.spans), collate_raw
            stage = DeviceDecoder(plan_transform(backend.preprocess, backend.spec.name), images, backend.device)
        else:
            stage, images, collate_fn = CpuStage(per_batch, backend.device), data.images(per_image, todo), collate
        loader = torch.utils.data.DataLoader(
            images, batch_size=batch_size,
            num_workers=workers, collate_fn=collate_fn, pin_memory=backend.device.type == "cuda",
            persistent_workers=False, prefetch_factor=4 if workers else None)
        encoder = ImageEncoder(backend, compile, len(todo), later=(lambda: later(key)) if later else None)
        desc = f"{backend.spec.name} · {data.spec.name}/{data.split}"
        tuner = ThreadTuner(workers, backend.device.type)
        with tqdm(total=len(todo), desc=desc, unit="img", disable=not progress, leave=False) as bar, tuner:
            last = time.perf_counter()
            for pixels, idxs, errors in staged(loader, stage, backend.device):
                waited = time.perf_counter() - last
                if errors and not skip_bad_images:
                    raise BenchError(f"cannot read image {errors[0][1]}; fix or remove it, or pass --skip-bad-images")
                if encoder.state == "compile-next":
                    bar.set_postfix_str("compiling")
                feats = encoder(pixels).cpu() if pixels is not None else None
                bar.set_postfix_str("compiled" if encoder.compiled else "")
                shards.update(writer.add(feats, idxs, errors))
                bar.update(len(idxs) + len(errors))
                encoded += len(idxs)
                now = time.perf_counter()
                tuner.batch_done(waited, now - last)
                last = now
    if dist.world > 1:
        dist.barrier()  # every rank's shards are in the cache now
        if not dist.main:
            return ImageFeatures(torch.empty(0, 0), torch.empty(0, dtype=torch.long), key=key, n_encoded=encoded,
                                 seconds=time.perf_counter() - start)
        shards.update({s: cache.load_shard(key, s) for s in missing if not dist.owns(s)})
        lost = [s for s in missing if shards[s] is None]
        if lost:
            raise BenchError(f"{data.spec.name}/{data.split}: shards {lost[:5]} written by other ranks are not in "
                             f"{cache.root}; under torchrun on several nodes --cache-dir must be a shared folder")
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
        key=key, n_encoded=encoded, seconds=time.perf_counter() - start,
        compiled=bool(encoder and encoder.compiled), compile_s=encoder.compile_s if encoder else 0.0,
        tower=encoder.tower if encoder and encoder.compiled else "")
    if not cache.is_complete(key):
        cache.finish(key, {"n": n, "shards": n_shards, "model": backend.identity(), "split": data.split,
                           "dataset": data.spec.name, "n_ok": int(out.indices.numel())})
    return out


class ShardWriter:
    """Streams encoded batches into cache shards: a shard is saved (and its rows dropped) as soon as its
    last row arrives, so at most the open shards plus one batch are held, whatever the dataset size.
    Rows are kept as per-batch slices and concatenated once per shard (no per-row tensors).

    Every `cache.flush_seconds` the rows of still-open shards are also saved as partial shards, so a
    killed run loses at most that much encoding even on a set smaller than one shard; the shard itself
    (torchrun's unit of work) is unchanged, and its partial file is removed once it is finished."""

    def __init__(self, cache: FeatureCache, key: str, n: int):
        self.cache, self.key, self.n = cache, key, n
        self.open: dict[int, dict] = {}
        self.changed: set[int] = set()  # open shards with rows not yet in their partial file
        self.last_flush = time.monotonic()

    def pending_rows(self) -> int:
        return sum(sum(len(c) for c in b["i"]) for b in self.open.values())

    def seed(self, s: int, part: dict) -> dict[int, dict]:
        """Start shard `s` from the rows a killed run saved (`FeatureCache.load_partial`)."""
        buf = self._buf(s)
        if part["indices"].numel():
            buf["f"].append(part["features"])
            buf["i"].append(part["indices"])
        buf["e"].extend(part["errors"])
        buf["n"] += part["indices"].numel() + len(part["errors"])
        return self._save_full()

    def add(self, feats: torch.Tensor | None, idxs: list[int], errors: list[tuple[int, str]]) -> dict[int, dict]:
        """Take one batch; returns the shards it completed (already saved), by shard number."""
        size = self.cache.shard_size
        if idxs:
            index = torch.tensor(idxs, dtype=torch.long)
            shard_of = index // size
            for s in torch.unique(shard_of).tolist():
                rows = (shard_of == s).nonzero().squeeze(1)
                buf = self._buf(s)
                buf["f"].append(feats.index_select(0, rows))
                buf["i"].append(index.index_select(0, rows))
                buf["n"] += rows.numel()
                self.changed.add(s)
        for i, err in errors:
            buf = self._buf(i // size)
            buf["e"].append((int(i), err))
            buf["n"] += 1
            self.changed.add(i // size)
        done = self._save_full()
        if self.changed and time.monotonic() - self.last_flush >= self.cache.flush_seconds:
            for s in sorted(self.changed):
                f, i, e = self._rows(self.open[s])
                self.cache.save_partial(self.key, s, f, i, e)
            self.changed.clear()
            self.last_flush = time.monotonic()
        return done

    def _save_full(self) -> dict[int, dict]:
        size = self.cache.shard_size
        done = {}
        for s in [s for s, b in self.open.items() if b["n"] == min(self.n, (s + 1) * size) - s * size]:
            f, i, e = self._rows(self.open.pop(s))
            self.changed.discard(s)
            texts = [text for _, text in e]
            self.cache.save_shard(self.key, s, f, i, texts)
            self.cache.drop_partial(self.key, s)
            done[s] = {"features": f, "indices": i, "errors": texts}
        return done

    @staticmethod
    def _rows(b: dict) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, str]]]:
        f = torch.cat(b["f"]) if b["f"] else torch.empty(0, 0)
        i = torch.cat(b["i"]) if b["i"] else torch.empty(0, dtype=torch.long)
        order = torch.argsort(i)  # workers may deliver out of order only across shards, but be safe
        f, i = (f[order], i[order]) if i.numel() else (f, i)
        if len(b["f"]) > 1:  # keep the concatenation: the next flush or the final save reuses it
            b["f"], b["i"] = [f], [i]
        return f, i, sorted(b["e"])

    def _buf(self, s: int) -> dict:
        return self.open.setdefault(s, {"f": [], "i": [], "e": [], "n": 0})


def text_embeddings(backend: Backend, texts: list[str], cache: TextCache | None, *, batch_size: int = 256,
                    progress: bool = True) -> torch.Tensor:
    """[len(texts), D] float32 embeddings (not normalised); duplicates encoded once, results cached."""
    unique = list(dict.fromkeys(texts))
    key = content_key({"kind": "text", "model": backend.text_identity(), "texts": unique})
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
