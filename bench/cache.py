"""Content-keyed caches for image features (sharded, checksummed) and text embeddings.

A key is the hash of everything that changes the cached values, so a stale entry can never be
read by accident. Every file is written to a temporary name and renamed into place, so a killed
run leaves finished shards (which the next run reuses) and never a half-written one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import secrets
import stat
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from bench.errors import BenchError

log = logging.getLogger(__name__)
CACHE_VERSION = 1
DEFAULT_SHARD_SIZE = 2048
SHARD_SIZE_ENV = "BENCH_SHARD_SIZE"  # images per feature-cache shard (smaller: less lost on a kill)
DEFAULT_FLUSH_SECONDS = 30.0
FLUSH_SECONDS_ENV = "BENCH_FLUSH_SECONDS"  # seconds of encoding between saves of an unfinished shard


def shard_size_from_env() -> int:
    """$BENCH_SHARD_SIZE if set (a positive integer), else the default."""
    raw = os.environ.get(SHARD_SIZE_ENV, "").strip()
    if not raw:
        return DEFAULT_SHARD_SIZE
    if not raw.isdigit() or int(raw) < 1:
        raise BenchError(f"${SHARD_SIZE_ENV} must be a positive integer, got {raw!r}")
    return int(raw)


def flush_seconds_from_env() -> float:
    """$BENCH_FLUSH_SECONDS if set (a number >= 0; 0 saves after every batch, inf never), else the default."""
    raw = os.environ.get(FLUSH_SECONDS_ENV, "").strip()
    if not raw:
        return DEFAULT_FLUSH_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also refuses nan
        raise BenchError(f"${FLUSH_SECONDS_ENV} must be a number of seconds >= 0 (0: after every batch, inf: "
                         f"only finished shards), got {raw!r}")
    return value


def write_error(path: Path, exc: OSError) -> BenchError:
    """One line for a failed cache/result write (disk full, read-only, permissions)."""
    why = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else (exc.strerror or str(exc))
    return BenchError(f"cannot write {path}: {why}; nothing was left half-written, free space or choose "
                      "another folder and run again (finished cache shards are reused)")


def content_key(parts: dict[str, Any]) -> str:
    """sha256 of a canonical JSON rendering of `parts`."""
    blob = json.dumps({"v": CACHE_VERSION, **parts}, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def create_temp_file(folder: Path, prefix: str, suffix: str = "") -> Path:
    """Create a new empty file with a unique name in `folder`, its mode following the umask.

    tempfile.mkstemp always makes 0600 files, so every result, report and shared cache would be
    private after the rename; os.open with 0o666 lets the kernel apply the umask instead.
    """
    for _ in range(100):
        name = Path(folder) / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return name
    raise FileExistsError(errno.EEXIST, f"no free temporary name in {folder}")


def create_temp_dir(folder: Path, prefix: str) -> Path:
    """Like `create_temp_file` for a folder (tempfile.mkdtemp would make it 0700 whatever the umask)."""
    for _ in range(100):
        name = Path(folder) / f"{prefix}{secrets.token_hex(6)}"
        try:
            os.mkdir(name, 0o777)
        except FileExistsError:
            continue
        return name
    raise FileExistsError(errno.EEXIST, f"no free temporary name in {folder}")


@contextlib.contextmanager
def _temp_beside(path: Path):
    """A temporary file name next to `path` (same file system, so the final rename is atomic).

    The temp file is always removed unless the body renamed it; a failed write (disk full,
    read-only folder) becomes one BenchError naming `path`.
    """
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = str(create_temp_file(path.parent, f".{path.name}.", ".tmp"))
        yield Path(tmp)
    except OSError as exc:
        raise write_error(path, exc) from None
    except SafetensorError as exc:  # safetensors reports I/O failures as its own error type
        raise write_error(path, OSError(errno.EIO, str(exc).splitlines()[0] if str(exc) else "I/O error")) from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same folder and a rename."""
    path = Path(path)
    with _temp_beside(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n").encode())


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str:
    """save_file to a temp name, fsync, rename; returns the file's sha256."""
    path = Path(path)
    with _temp_beside(path) as tmp:
        mode = tmp.stat().st_mode  # 0o666 less the umask; save_file replaces the file with a 0600 one
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.chmod(tmp, stat.S_IMODE(mode))
        digest = file_sha256(tmp)
        os.replace(tmp, path)
        return digest


class FeatureCache:
    """Image features under `<root>/features/<key>/`: shard-NNNNN.safetensors + .json, then index.json."""

    def __init__(self, root: Path, shard_size: int | None = None, flush_seconds: float | None = None):
        self.root = Path(root)
        self.shard_size = shard_size or shard_size_from_env()
        # an unfinished shard is saved as shard-NNNNN.partial.safetensors this often, so a killed run on a
        # set smaller than one shard keeps all but the last interval's work
        self.flush_seconds = flush_seconds_from_env() if flush_seconds is None else flush_seconds

    def entry_dir(self, key: str) -> Path:
        return self.root / "features" / key[:2] / key

    def shard_path(self, key: str, shard: int) -> Path:
        return self.entry_dir(key) / f"shard-{shard:05d}.safetensors"

    def load_shard(self, key: str, shard: int) -> dict | None:
        """A finished shard (features, indices, errors) whose checksum matches, else None."""
        path = self.shard_path(key, shard)
        meta_path = path.with_suffix(".json")
        if not path.is_file() or not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if file_sha256(path) != meta["sha256"]:
                raise ValueError("checksum mismatch")
            tensors = load_file(path)
        except Exception as exc:  # noqa: BLE001 - any damage means: re-encode this shard
            log.warning("cache shard %s is corrupted (%s); it will be re-encoded", path, exc)
            path.unlink(missing_ok=True)
            meta_path.unlink(missing_ok=True)
            (self.entry_dir(key) / "index.json").unlink(missing_ok=True)
            return None
        return {"features": tensors["features"], "indices": tensors["indices"], "errors": meta.get("errors", [])}

    def save_shard(self, key: str, shard: int, features: torch.Tensor, indices: torch.Tensor,
                   errors: list[str]) -> None:
        path = self.shard_path(key, shard)
        digest = atomic_save_tensors(path, {"features": features.float(), "indices": indices.long()})
        atomic_write_json(path.with_suffix(".json"), {"sha256": digest, "n": int(indices.numel()), "errors": errors})

    def partial_path(self, key: str, shard: int) -> Path:
        return self.entry_dir(key) / f"shard-{shard:05d}.partial.safetensors"

    def save_partial(self, key: str, shard: int, features: torch.Tensor, indices: torch.Tensor,
                     errors: list[tuple[int, str]]) -> None:
        """The rows of an unfinished shard so far, in one file (its checksum and errors in the header),
        replaced atomically at each flush: a kill leaves the previous flush or this one, never a mix."""
        f, i = features.float().contiguous(), indices.long().contiguous()
        atomic_save_tensors(self.partial_path(key, shard), {"features": f, "indices": i},
                            metadata={"sha256": _rows_sha(f, i), "errors": json.dumps(errors, ensure_ascii=False)})

    def load_partial(self, key: str, shard: int) -> dict | None:
        """The saved rows of an unfinished shard (features, indices, errors as [index, text]), else None."""
        path = self.partial_path(key, shard)
        if not path.is_file():
            return None
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                f, i = fh.get_tensor("features"), fh.get_tensor("indices")
            if _rows_sha(f, i) != meta.get("sha256"):
                raise ValueError("checksum mismatch")
            errors = [(int(j), str(e)) for j, e in json.loads(meta.get("errors", "[]"))]
        except Exception as exc:  # noqa: BLE001 - any damage means: re-encode these rows
            log.warning("partial cache shard %s is corrupted (%s); its images will be re-encoded", path, exc)
            path.unlink(missing_ok=True)
            return None
        return {"features": f, "indices": i, "errors": errors}

    def drop_partial(self, key: str, shard: int) -> None:
        self.partial_path(key, shard).unlink(missing_ok=True)

    @contextlib.contextmanager
    def lock(self, key: str):
        """Hold while encoding one entry: a second run on the same cache waits, then reads the shards."""
        from filelock import FileLock

        path = self.root / "locks" / f"{key}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path)):
            yield

    def is_complete(self, key: str) -> bool:
        return (self.entry_dir(key) / "index.json").is_file()

    def finish(self, key: str, meta: dict) -> None:
        atomic_write_json(self.entry_dir(key) / "index.json", meta)


def _rows_sha(features: torch.Tensor, indices: torch.Tensor) -> str:
    h = hashlib.sha256(features.numpy().tobytes())
    h.update(indices.numpy().tobytes())
    return h.hexdigest()


def file_signature(path: Path) -> list:
    """What changes when a file's content does: path, size, mtime and ctime (ns), inode, device.

    ctime cannot be set back from user space, so an edit that restores size and mtime still changes it."""
    st = Path(path).stat()
    return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


class IdentityMemo:
    """Small JSON values under `<root>/identity/<key>.json` (a model's weights hash and preprocess)."""

    def __init__(self, root: Path):
        self.root = Path(root) / "identity"

    def load(self, key: str) -> dict | None:
        try:
            value = json.loads((self.root / f"{key}.json").read_text())
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def save(self, key: str, value: dict) -> None:
        atomic_write_json(self.root / f"{key}.json", value)


class TextCache:
    """Text embeddings for one (model, list of texts) under `<root>/text/<key>.safetensors`."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / "text" / key[:2] / f"{key}.safetensors"

    def load(self, key: str) -> torch.Tensor | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            tensors = load_file(path)
            if hashlib.sha256(tensors["embeddings"].numpy().tobytes()).hexdigest() != tensors.get(
                    "sha", torch.empty(0)).numpy().tobytes().decode(errors="ignore"):
                raise ValueError("checksum mismatch")
            return tensors["embeddings"]
        except Exception as exc:  # noqa: BLE001
            log.warning("text cache entry %s is corrupted (%s); re-encoding", path, exc)
            path.unlink(missing_ok=True)
            return None

    def save(self, key: str, embeddings: torch.Tensor) -> None:
        emb = embeddings.float().contiguous()
        sha = hashlib.sha256(emb.numpy().tobytes()).hexdigest().encode()
        atomic_save_tensors(self.path(key), {"embeddings": emb, "sha": torch.frombuffer(bytearray(sha), dtype=torch.uint8)})


def check_writable(folder: Path, what: str) -> None:
    """Fail early, in one line, when `folder` cannot be created or written."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".write-test.", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise BenchError(f"{what} {folder} is not writable ({exc.strerror or exc}); choose another with the flag") from None
