"""open_clip backend: registry arch + pretrained tag, `hf-hub:` and `local-dir:` models."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch

from bench.backends.base import Backend, TextCheck, folder_files, hub_snapshot_files, missing_dependency
from bench.errors import BenchError
from bench.preprocess import build_transform

SCHEMAS = ("hf-hub:", "local-dir:")


def _weights_hint(open_clip, arch: str, tag: str | None) -> str:
    cfg = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
    hub = (cfg or {}).get("hf_hub", "").rstrip("/")
    if hub:
        return (f"download them once with `hf download {hub}` (into the Hugging Face cache, "
                f"$HF_HOME/hub), or set `pretrained:` in a model YAML to a local checkpoint file")
    return "set `pretrained:` in a model YAML to a local checkpoint file, or `model: local-dir:/path`"


class _DropOpenClipLogs(logging.Filter):
    """Our one-line error says it all; open_clip's own 'Failed to download' log would be a second line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "open_clip" not in record.pathname


def _open_clip():
    try:
        import open_clip
    except ImportError as exc:  # installed but broken (a dependency missing): still one line with the fix
        raise missing_dependency("open_clip_torch", f"pip install open_clip_torch ({exc})") from None
    return open_clip


class OpenClipBackend(Backend):
    PACKAGE = "open_clip_torch"

    def __init__(self, spec, device="cpu", cache_dir=None):
        super().__init__(spec, device, cache_dir)
        # found, not imported: importing open_clip costs about a second, which a cached run can skip
        if importlib.util.find_spec("open_clip") is None:
            raise missing_dependency("open_clip_torch", "pip install open_clip_torch")
        name = spec.model
        self.pretrained = None if name.startswith(SCHEMAS) else spec.pretrained
        folder = Path(name[len("local-dir:"):]).expanduser() if name.startswith("local-dir:") else None
        if folder is not None and not folder.is_dir():
            raise BenchError(f"{spec.name}: {folder}: no such folder (model: local-dir:… in {spec.source}); "
                             "fix the path to a folder holding open_clip_config.json and the weights")
        if folder is not None and not (folder / "open_clip_config.json").is_file():
            raise BenchError(f"{spec.name}: {name[len('local-dir:'):]} has no open_clip_config.json; "
                             "save the model with open_clip's push_to_hf_hub/save layout or fix the path")
        if not name.startswith(SCHEMAS) and name not in (open_clip := _open_clip()).list_models():
            from bench.registry import unknown

            raise unknown("open_clip architecture", name, open_clip.list_models(), hint=f"in model '{spec.name}'")

    def _weights_cache(self) -> Path | None:
        """Where open_clip downloads registry weights for us (None: a file path, or no weights)."""
        p = self.pretrained
        return self.cache_dir / "open_clip" if self.cache_dir and p and not Path(p).is_file() else None

    def source_files(self) -> list[Path] | None:
        name, p = self.spec.model, self.pretrained
        if name.startswith("local-dir:"):
            return folder_files(Path(name[len("local-dir:"):]))
        if name.startswith("hf-hub:"):
            return hub_snapshot_files(None, name[len("hf-hub:"):])
        if p and Path(p).is_file():
            return [Path(p)]
        if p:  # a registry tag: the snapshot of its hub repo in our download folder
            open_clip = _open_clip()
            hub = (open_clip.get_pretrained_cfg(name, p) or {}).get("hf_hub", "")
            return hub_snapshot_files(self._weights_cache(), "/".join(hub.split("/")[:2])) if hub else None
        return None  # random init: nothing on disk names these weights

    def _load_text(self) -> None:
        open_clip = _open_clip()
        self.tokenizer = open_clip.get_tokenizer(self.spec.model)
        self.context_length = int(self.tokenizer.context_length)

    def _load_model(self) -> None:
        open_clip = _open_clip()
        spec, name, pretrained = self.spec, self.spec.model, self.pretrained
        quiet = _DropOpenClipLogs()  # open_clip logs its own download error on the root logger
        logging.getLogger().addFilter(quiet)
        try:
            weights_cache = self._weights_cache()
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=pretrained, weights_only=True, cache_dir=str(weights_cache) if weights_cache else None)
        except BenchError:
            raise
        except Exception as exc:  # open_clip raises RuntimeError/OSError/hub errors for missing weights
            raise BenchError(
                f"cannot load weights for {spec.name} (open_clip {name}, pretrained {pretrained!r}): "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; "
                f"{_weights_hint(open_clip, name, pretrained)}") from None
        finally:
            logging.getLogger().removeFilter(quiet)
        self._adopt(model)
        if spec.preprocess != "model":
            cfg = self.model.visual.preprocess_cfg
            size = cfg.get("size", self.model.visual.image_size)
            size = size[0] if isinstance(size, (tuple, list)) else size
            self.preprocess = build_transform(spec.preprocess, size, cfg["mean"], cfg["std"])
        else:
            self.preprocess = preprocess

    def _encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(texts).to(self.device))

    def check_text(self, text: str) -> TextCheck:
        inner = getattr(self.tokenizer, "tokenizer", None)  # HFTokenizer wraps a transformers tokenizer
        if inner is not None and hasattr(inner, "tokenize"):
            toks = inner.tokenize(text)
            unk = tuple(t for t in toks if t == inner.unk_token)
            return TextCheck(len(toks) + 2, self.context_length, unk)
        return TextCheck(len(self.tokenizer.encode(text)) + 2, self.context_length)
