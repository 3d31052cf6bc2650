"""cn_clip backend (optional extra): Chinese CLIP RN50, which has no transformers port."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import torch

from bench.backends.base import Backend, TextCheck, missing_dependency
from bench.backends.hf import CN_CLIP_CONTEXT, normalize_cn_text
from bench.errors import BenchError
from bench.preprocess import build_transform

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DOWNLOAD = "https://clip-cn-beijing.oss-cn-beijing.aliyuncs.com/checkpoints/"


def find_checkpoint(pretrained: str, cache_dir: Path | None) -> Path:
    """A checkpoint path as given, else looked up in bench's and cn_clip's download folders."""
    candidates = [Path(pretrained).expanduser()]
    if cache_dir is not None:
        candidates.append(Path(cache_dir) / "weights" / pretrained)
    candidates.append(Path(os.path.expanduser("~/.cache/clip")) / pretrained)
    for path in candidates:
        if path.is_file():
            return path
    raise BenchError(f"checkpoint '{pretrained}' not found (looked in: {', '.join(map(str, candidates))}); "
                     f"download {DOWNLOAD}{Path(pretrained).name} and put it in one of those places, "
                     "or set `pretrained:` in a model YAML to its path")


class CnClipBackend(Backend):
    PACKAGE = "cn_clip"
    TEXT_ATTRS = ("_tokenizer", "context_length")

    def __init__(self, spec, device="cpu", cache_dir=None):
        super().__init__(spec, device, cache_dir)
        try:
            import cn_clip.clip  # noqa: F401 (fail here, with the install hint, not at first use)
        except ImportError:
            raise missing_dependency("cn_clip", "pip install -e '.[cn-clip]'") from None
        if not spec.pretrained:
            raise BenchError(f"{spec.name}: the cn_clip backend needs `pretrained:` (a checkpoint file)")

    def source_files(self) -> list[Path] | None:
        try:
            return [find_checkpoint(self.spec.pretrained, self.cache_dir)]
        except BenchError:
            return None

    def _load_text(self) -> None:
        from cn_clip.clip import _tokenizer

        self._tokenizer = _tokenizer
        self.context_length = CN_CLIP_CONTEXT

    def _load_model(self) -> None:
        from cn_clip.clip.utils import create_model

        spec = self.spec
        path = find_checkpoint(spec.pretrained, self.cache_dir)
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise BenchError(f"{path}: not a readable cn_clip checkpoint ({str(exc).splitlines()[0]})") from None
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise BenchError(f"{path}: expected a cn_clip checkpoint with a 'state_dict' entry")
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # cn_clip prints its whole config
                model = create_model(spec.model, checkpoint)
        except (AssertionError, RuntimeError, ValueError) as exc:
            raise BenchError(f"{spec.name}: cannot build cn_clip '{spec.model}' from {path}: "
                             f"{str(exc).splitlines()[0] if str(exc) else 'unknown architecture'}") from None
        self._adopt(model.float())
        # cn_clip's own transform is the squash; a protocol may name another (e.g. ELEVATER's crop)
        kind = "cn-clip" if spec.preprocess == "model" else spec.preprocess
        self.preprocess = build_transform(kind, int(model.visual.input_resolution), CLIP_MEAN, CLIP_STD)

    def _encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        from cn_clip.clip import tokenize

        tokens = tokenize([normalize_cn_text(t) for t in texts], context_length=self.context_length)
        return self.model.encode_text(tokens.to(self.device))

    def check_text(self, text: str) -> TextCheck:
        toks = self._tokenizer.tokenize(normalize_cn_text(text))
        return TextCheck(len(toks) + 2, self.context_length, tuple(t for t in toks if t == "[UNK]"))
