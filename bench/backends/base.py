"""The one small interface every model backend implements."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

from bench import kernels
from bench.cache import IdentityMemo, content_key, file_signature
from bench.errors import BenchError, first_line
from bench.models import ModelSpec

log = logging.getLogger("bench.runner")  # the runner's logger: `-q` and the CLI's format apply as before


@dataclass(frozen=True)
class TextCheck:
    """How a tokenizer sees one text: token count, truncation at the context length, unknown tokens."""

    n_tokens: int
    context_length: int
    unknown: tuple[str, ...] = ()

    @property
    def truncated(self) -> bool:
        return self.n_tokens > self.context_length


def fingerprint_module(module: torch.nn.Module) -> str:
    """A content hash of every parameter and buffer: changes whenever the weights do."""
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        if t.numel():  # the tensor's own bytes, not a copy (the same digest as hashing tobytes())
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def folder_files(folder: Path) -> list[Path] | None:
    """Every regular file under `folder` (a saved model), sorted; None if there is none."""
    root = Path(folder).expanduser()
    # `.cache` inside a saved model is download bookkeeping; the folder itself may well sit in ~/.cache
    files = sorted(f for f in root.rglob("*") if f.is_file() and ".cache" not in f.relative_to(root).parts)
    return files or None


def hub_snapshot_files(cache_root: Path | None, repo_id: str, revision: str | None = None) -> list[Path] | None:
    """The files of a Hugging Face hub snapshot already in a hub cache (`cache_root`, default $HF_HUB_CACHE),
    at `revision` (a branch or a commit; default main). None when it is not there."""
    from huggingface_hub import constants

    repo = Path(cache_root or constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    revision = revision or "main"
    ref = repo / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = repo / "snapshots" / commit
    return folder_files(snapshot) if snapshot.is_dir() else None


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"--device {device} asked for, but no CUDA GPU is available; use --device cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise BenchError(f"--device {device!r} is not a device torch knows ({exc}); use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise BenchError(f"--device {device!r} is not supported by bench; use auto, cpu, cuda or cuda:N")
    return dev


def missing_dependency(package: str, install: str) -> BenchError:
    return BenchError(f"this model needs the '{package}' package, which is not installed: run `{install}`")


class Backend(ABC):
    """Encode images and texts into one embedding space.

    Subclasses implement two loaders, `_load_text` (sets `tokenizer` and `context_length`: cheap) and
    `_load_model` (sets `model` through `_adopt`, and `preprocess`, a picklable PIL → tensor callable run
    in DataLoader workers: slow), plus `_encode_images`, `_encode_texts` and `check_text`. Both load on
    first use, and `source_files` lets the model's identity be known without loading it at all: a re-run
    whose features and text embeddings are all cached never reads the weights.
    """

    model: torch.nn.Module
    preprocess: Callable
    context_length: int
    # attributes set by _load_text (any other missing attribute loads the model)
    TEXT_ATTRS: tuple[str, ...] = ("tokenizer", "context_length")
    PACKAGE: str | None = None  # the distribution whose code builds the model (its version keys the memo)
    # "auto" (bench's default for the device) or an explicit fp32 | bf16 | fp16 that differs from it; the
    # runner sets it. Not "auto", it is part of the identity, so features and text embeddings computed at
    # another precision are cached apart.
    precision: str = "auto"
    # eager CPU linears: auto | onednn | aten (bench.kernels); the runner sets it from --cpu-gemm
    cpu_gemm: str = "auto"
    load_note: str = ""  # appended to the "loading <model>" line (the runner: an image transform not the model's)

    def __init__(self, spec: ModelSpec, device: str = "cpu", cache_dir: Path | None = None):
        self.spec = spec
        self.device = resolve_device(device)
        self.cache_dir = cache_dir
        self._towers: dict[tuple, Callable] = {}  # compiled image towers by (image shape, dtype)
        self.tower_source = ""  # how the last compiled tower was obtained: memory | stored | built | jit
        self._known_values: dict | None = None
        self._memo_entry: tuple[IdentityMemo | None, str] | None = None
        self._state = {"text": False, "model": False}
        # fixed costs paid by this backend and not yet reported in a result (see take_fixed_costs)
        self._fixed = {"model_load_s": 0.0, "weights_hash_s": 0.0}

    def take_fixed_costs(self) -> dict[str, float]:
        """Seconds spent loading the model (tokenizer included) and hashing its weights since the last call:
        a result reports the fixed costs its own step paid (0 when an earlier dataset paid them, or a memo
        or the caches made them unnecessary)."""
        taken = {k: round(v, 3) for k, v in self._fixed.items()}
        self._fixed = dict.fromkeys(self._fixed, 0.0)
        return taken

    def __getattr__(self, name: str):
        # Called only for attributes not set yet: the tokenizer or the model loads on first use.
        state = self.__dict__.get("_state")
        if state is None or name.startswith("__"):
            raise AttributeError(name)
        part = "text" if name in type(self).TEXT_ATTRS else "model"
        if state[part]:
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
        self.load(part)
        return getattr(self, name)

    def load(self, part: str = "model") -> None:
        """Load the text side (tokenizer) or the model (weights, preprocess) now, if not loaded yet."""
        if not self._state[part]:
            if not any(self._state.values()):  # said when something loads, not when a cached run only names it
                log.info("loading %s%s", self.spec.name, self.load_note)
            self._state[part] = True  # set first: a failed load raises, it is not retried per attribute
            start = time.perf_counter()
            try:
                (self._load_text if part == "text" else self._load_model)()
            except AttributeError as exc:
                # raised out of __getattr__ it would read as "no such attribute" on the backend
                raise RuntimeError(f"loading the {part} of {self.spec.name} failed: {exc}") from exc
            self._fixed["model_load_s"] += time.perf_counter() - start
            taken = self._memo_entry[1] if self._memo_entry is not None else ""
            if taken and self._memo_key()[1] != taken:
                # e.g. a hub download fetched a newer revision after the identity was taken from the old
                # files: features would be cached under the old weights' identity
                raise BenchError(f"the files of {self.spec.name} changed while bench was loading it (a newer "
                                 "revision downloaded?); run again, or pin `pretrained:` to a commit")

    @abstractmethod
    def _load_text(self) -> None: ...

    @abstractmethod
    def _load_model(self) -> None: ...

    def source_files(self) -> list[Path] | None:
        """Every file the model is built from (weights and configs), found without loading it; None when
        they cannot be named (the identity is then computed from the loaded weights on every run)."""
        return None

    def _adopt(self, model: torch.nn.Module) -> None:
        """Take a loaded model: eval mode, on the device."""
        self.model = model.eval().to(self.device)

    # -- identity -----------------------------------------------------------------------------
    @property
    def weights_fingerprint(self) -> str:
        return self.identity()["weights"]

    @property
    def preprocess_id(self) -> str:
        """A stable description of the image transform (sizes, interpolation, crop, mean/std).

        Memory addresses in reprs (`<function f at 0x7f...>`) are dropped: they differ per process and
        would make the feature cache miss on every new run and across torchrun ranks."""
        return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(self.preprocess))

    def identity(self) -> dict:
        """Everything that changes image features: for cache keys and result manifests."""
        known = self._known()
        ident = {
            "name": self.spec.name,
            "backend": self.spec.backend,
            "model": self.spec.model,
            "pretrained": self.spec.pretrained,
            "weights": known["weights"],
            "preprocess": known["preprocess"],
        }
        if self.precision != "auto":  # absent at the default, so caches written before this key still match
            ident["precision"] = self.precision
        return ident

    def text_identity(self) -> dict:
        """Everything that changes text embeddings: for the text cache key."""
        ident = {k: v for k, v in self.identity().items() if k != "preprocess"}
        return {**ident, "context_length": self._known()["context_length"], "class": type(self).__name__}

    def unknown_tokens(self, texts: list[str]) -> list[str]:
        """The texts whose tokens include the tokenizer's unknown token, memoised like the identity
        (a fully cached run then needs no tokenizer, and no import of the library behind it)."""
        texts = list(texts)
        known = self._known()
        key = content_key({"kind": "unknown-tokens", "texts": texts})
        if key not in known["unknown"]:
            known["unknown"][key] = [t for t in texts if self.check_text(t).unknown]
            memo, memo_key = self._memo()
            if memo is not None:
                memo.save(memo_key, known)
        return list(known["unknown"][key])

    def _known(self) -> dict:
        """Weights hash, preprocess, context length and [UNK] verdicts, memoised in the cache directory
        under a key made of the spec, the library versions and the stat (size, mtime, ctime, inode) of
        every source file; any change to those misses the memo and recomputes them from the model."""
        if self._known_values is None:
            memo, key = self._memo()
            known = memo.load(key) if memo is not None else None
            if known is None or not {"weights", "preprocess", "context_length", "unknown"} <= known.keys():
                model = self.model  # loads it (timed as loading)
                start = time.perf_counter()
                weights = fingerprint_module(model)
                self._fixed["weights_hash_s"] += time.perf_counter() - start
                known = {"weights": weights, "preprocess": self.preprocess_id,
                         "context_length": int(self.context_length), "unknown": {}}
                if memo is not None:
                    memo.save(key, known)
            self._known_values = known
        return self._known_values

    def _memo(self) -> tuple[IdentityMemo | None, str]:
        """The memo and this model's key in it ((None, "") without a cache dir or nameable files);
        computed once per backend: finding the files may import the model's library."""
        if self._memo_entry is None:
            self._memo_entry = self._memo_key()
        return self._memo_entry

    def _memo_key(self) -> tuple[IdentityMemo | None, str]:
        files = self.source_files() if self.cache_dir is not None else None
        if not files:
            return None, ""
        packages = ("torch", "torchvision", "transformers", "tokenizers", self.PACKAGE)
        versions = {pkg: _version(pkg) for pkg in packages if pkg}
        key = content_key({"kind": "identity", "class": type(self).__name__, "spec": {
            k: getattr(self.spec, k) for k in ("backend", "model", "pretrained", "preprocess")},
            "versions": versions, "code": self._code_fingerprint(), "files": [file_signature(f) for f in files]})
        return IdentityMemo(Path(self.cache_dir)), key

    def _code_fingerprint(self) -> str:
        """A hash of bench's own code that builds this model and its transform: the backend's package
        (every module beside it), the base class and bench.preprocess. bench's version number does not
        change with each edit of an editable install, so the code itself keys the memo."""
        here = Path(__file__).resolve()
        own = Path(sys.modules[type(self).__module__].__file__).resolve()
        sources = sorted({*own.parent.glob("*.py"), here, here.parents[1] / "preprocess.py"})
        h = hashlib.sha256()
        for path in sources:
            h.update(path.name.encode() + b"\0" + path.read_bytes())
        return h.hexdigest()

    # -- encoding -----------------------------------------------------------------------------
    def autocast(self):
        """bench's default (`precision` auto): bf16 autocast on GPU (fp16 without bf16), fp32 on CPU; an explicit
        precision (a protocol's fp32, or --precision) replaces it."""
        if self.device.type != "cuda":
            return torch.autocast("cpu", enabled=False)
        if self.precision == "fp32":
            return torch.autocast("cuda", enabled=False)
        if self.precision in ("bf16", "fp16"):
            return torch.autocast("cuda", dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor, compiled: bool = False) -> torch.Tensor:
        """[N, 3, H, W] preprocessed pixels → [N, D] float32 features (not normalised).

        `compiled`: run the image tower through torch.compile (built on the first such call, which
        takes seconds to minutes; errors from the compiler surface from that call)."""
        pixels = pixels.to(self.device, non_blocking=True)
        if compiled:
            # Only the batch size varies; a fully dynamic graph would also guard on "batch == image size"
            # (duck sizing) and compile again for a batch that differs.
            torch._dynamo.maybe_mark_dynamic(pixels, 0)
        encode = self._compiled_image_tower(pixels) if compiled else self._encode_images
        with self.autocast(), self._compile_config(compiled), kernels.using(None if compiled else self.gemm):
            out = encode(pixels)
        return out.float()

    @property
    def gemm(self) -> str | None:
        """The linear kernels eager encoding runs on: onednn | aten on CPU, None on GPU (bench.kernels)."""
        return kernels.resolve(self.cpu_gemm, self.device)

    def _compile_config(self, compiled: bool):
        """Inductor settings for compiled calls, scoped to them (compiling happens lazily inside a call).

        freezing (CPU): weights become constants that inductor pre-packs for oneDNN, which is where most
        of the CPU speed-up comes from (MKL's sgemm is the slow part of an eager ViT here). It must be
        set this way: passed as torch.compile(options=...) it was not applied (half the speed-up)."""
        if not compiled or self.device.type != "cpu":
            return contextlib.nullcontext()
        import torch._inductor.config as inductor_config

        return inductor_config.patch(freezing=True)

    def autocast_id(self) -> str:
        """The autocast this backend encodes under, as text (part of a compiled tower's key)."""
        ac = self.autocast()
        return f"{ac.device}:{ac._enabled}:{ac.fast_dtype}"

    def _tower_path(self, pixels: torch.Tensor) -> Path | None:
        from bench import towers

        folder = towers.store_dir(self.cache_dir)
        if folder is None:
            return None
        return folder / f"{towers.tower_key(self, tuple(pixels.shape[1:]), pixels.dtype)}.pt2"

    def has_compiled_tower(self, pixels: torch.Tensor) -> bool:
        """Whether a compiled tower for pixels like these is in memory or stored (no compiling needed)."""
        if (tuple(pixels.shape[1:]), pixels.dtype) in self._towers:
            return True
        path = self._tower_path(pixels)
        return path is not None and path.is_file()

    def _compiled_image_tower(self, pixels: torch.Tensor) -> Callable:
        """The compiled tower for pixels like these: from memory, else from the store (checked against
        eager features on two images), else built as an AOTInductor package and stored. A stored
        package that fails to load or disagrees is rebuilt with a warning. If AOTInductor cannot build
        one, torch.compile compiles in memory (this process only)."""
        import tempfile

        from bench import towers

        slot = (tuple(pixels.shape[1:]), pixels.dtype)
        if slot in self._towers:
            self.tower_source = "memory"
            return self._towers[slot]
        path = self._tower_path(pixels)
        if path is not None and path.is_file():
            try:
                tower = towers.load_package(path, self.device)
                probe = pixels[:2]
                with self.autocast():
                    ok = towers.agrees(tower(probe), self._encode_images(probe), self.device.type)
                if not ok:
                    raise ValueError("its features differ from eager ones")
                self._towers[slot], self.tower_source = tower, "stored"
                return tower
            except Exception as exc:  # a truncated/corrupt zip, a foreign build, ...: any reason rebuilds
                log.warning("the stored compiled image tower %s of %s could not be used (%s); rebuilding it",
                            path, self.spec.name, first_line(exc))
                with contextlib.suppress(OSError):  # a read-only cache: build in a temporary folder below
                    path.unlink(missing_ok=True)
                if path.exists():
                    path = None
        try:
            stored = False
            if path is not None:
                try:
                    towers.build_package(self, pixels, path)
                    stored = True
                except OSError as exc:  # a read-only or full cache: still compile, just do not store
                    log.warning("cannot store the compiled image tower of %s in %s (%s); keeping it in memory",
                                self.spec.name, path.parent, exc)
            if stored:
                tower = towers.load_package(path, self.device)
            else:  # no (writable) cache dir: build in a temporary folder, keep it in memory only
                with tempfile.TemporaryDirectory() as tmp:
                    built = Path(tmp) / "tower.pt2"
                    towers.build_package(self, pixels, built)
                    tower = towers.load_package(built, self.device)
            self.tower_source = "built"
        except Exception as exc:  # export cannot trace some models (data-dependent control flow, ...)
            log.warning("AOTInductor could not compile the image tower of %s (%s); compiling it in memory with "
                        "torch.compile instead (not stored)", self.spec.name, first_line(exc))
            tower, self.tower_source = torch.compile(self._encode_images), "jit"
        self._towers[slot] = tower
        return tower

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Texts → [M, D] float32 features (not normalised)."""
        with self.autocast(), kernels.using(self.gemm):
            out = self._encode_texts(list(texts))
        return out.float()

    @abstractmethod
    def _encode_images(self, pixels: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def _encode_texts(self, texts: list[str]) -> torch.Tensor: ...

    @abstractmethod
    def check_text(self, text: str) -> TextCheck:
        """Tokenize one text for linting: token count and unknown tokens."""
