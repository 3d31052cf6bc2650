"""Scale: streaming cache writes, and torchrun (gloo, 2 CPU processes) matching one process."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.cache import FeatureCache
from bench.features import image_features
from bench.models import resolve_model
from bench.runner import Runner, RunOptions, load_data, resolve_datasets, run

sys.path.insert(0, str(Path(__file__).parent))
from identity_helpers import latest_result  # noqa: E402

LIMIT = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _opts(cache_dir: Path, out: Path, digits_root: Path, shard_size: int = 2048) -> RunOptions:
    return RunOptions(out=out, cache_dir=cache_dir, data_root=digits_root, workers=0, limit=LIMIT, batch_size=16,
                      progress=False, shard_size=shard_size)


def _demo(cache_dir: Path, digits_root: Path, shard_size: int):
    opts = _opts(cache_dir, cache_dir / "unused", digits_root, shard_size)
    runner = Runner(opts)
    backend = runner.backend(resolve_model("demo"))
    ref = resolve_datasets(["digits"], digits_root)[0][0]
    return backend, load_data(ref, "test", LIMIT)


class CountingCache(FeatureCache):
    """Records, at every shard save, how many encoded rows had not yet been written."""

    def __init__(self, root, shard_size, encoded):
        super().__init__(root, shard_size)
        self.encoded, self.saved, self.pending_at_save = encoded, 0, []

    def save_shard(self, key, shard, features, indices, errors):
        super().save_shard(key, shard, features, indices, errors)
        self.pending_at_save.append(self.encoded[0] - self.saved)
        self.saved += int(indices.numel())


def test_cache_writer_holds_at_most_a_shard_and_a_batch(cache_dir, digits_root):
    backend, data = _demo(cache_dir, digits_root, 16)
    encoded = [0]
    inner = backend.encode_images

    def counting(pixels, compiled=False):
        encoded[0] += len(pixels)
        return inner(pixels, compiled)

    backend.encode_images = counting
    cache = CountingCache(cache_dir, 16, encoded)
    feats = image_features(backend, data, cache, batch_size=8, workers=0, progress=False)
    n = len(data)
    assert feats.indices.tolist() == list(range(n))
    assert len(cache.pending_at_save) == -(-n // 16)  # every shard written, each exactly once
    # streamed: when a shard is written, only that shard plus the batch that completed it are held
    assert max(cache.pending_at_save) <= 16 + 8
    assert cache.saved == n
    # and a second call reads the shards back instead of encoding
    again = image_features(backend, data, FeatureCache(cache_dir, 16), batch_size=8, workers=0, progress=False)
    assert again.n_encoded == 0 and torch.equal(again.features, feats.features)


def _rank_main(rank: int, world: int, port: int, cache_dir: str, out: str, digits_root: str, q) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    results = run(["demo"], ["digits"], _opts(Path(cache_dir), Path(out), Path(digits_root), shard_size=16))
    feats_dir = Path(cache_dir) / "features"
    q.put((rank, len(results), sorted(p.name for p in feats_dir.rglob("shard-*.safetensors"))))


def test_distributed_run_matches_single_process(cache_dir, digits_root, tmp_path):
    """Two gloo ranks split the shards (s → rank s % 2), rank 0 merges them: same numbers as one process."""
    shutil.copytree(cache_dir / "models", tmp_path / "cache1" / "models")
    single = run(["demo"], ["digits"], _opts(tmp_path / "cache1", tmp_path / "single", digits_root, 16))[0]

    ctx = torch.multiprocessing.get_context("spawn")
    q = ctx.SimpleQueue()
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, 2, port, str(cache_dir), str(tmp_path / "dist"),
                                                   str(digits_root), q)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert [p.exitcode for p in procs] == [0, 0]
    reports = sorted(q.get() for _ in procs)
    assert [r[1] for r in reports] == [1, 0]  # only rank 0 returns (and writes) a result
    n_shards = -(-LIMIT // 16)
    assert reports[0][2] == [f"shard-{s:05d}.safetensors" for s in range(n_shards)]

    dist = json.loads(latest_result(tmp_path / "dist" / "demo" / "digits", "zeroshot").read_text())
    assert dist["n_samples"] == single["n_samples"] == LIMIT
    assert dist["metrics"] == single["metrics"]
    assert dist["cache"]["images_encoded"] < LIMIT  # rank 0 encoded only its share
    f1 = FeatureCache(tmp_path / "cache1", 16)
    f2 = FeatureCache(cache_dir, 16)
    key = dist["cache"]["image_features"]
    assert key == single["cache"]["image_features"] and f2.is_complete(key)
    for s in range(n_shards):
        a, b = f1.load_shard(key, s), f2.load_shard(key, s)
        assert torch.equal(a["indices"], b["indices"])
        assert torch.allclose(a["features"], b["features"], atol=1e-6)


@pytest.mark.skipif(not (Path(sys.executable).parent / "torchrun").exists(), reason="torchrun not installed")
def test_torchrun_cli(cache_dir, digits_root, tmp_path):
    """The documented command: rank 0 prints the table and writes results; rank 1 exits 0 quietly."""
    common = ["--model", "demo", "--dataset", "digits", "--data-root", str(digits_root), "--limit", "60",
              "--workers", "0", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--nproc-per-node", "2", "--master-port", str(_free_port()),
           "-m", "bench", "-q", "run", *common, "--cache-dir", str(cache_dir), "--out", str(tmp_path / "dist")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("results written under") == 1
    dist = json.loads(latest_result(tmp_path / "dist" / "demo" / "digits", "zeroshot").read_text())
    assert dist["n_samples"] == 60
