"""transformers backend: ChineseCLIPModel (Chinese CLIP) and CLIPModel (English HF checkpoints)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bench.backends.base import Backend, TextCheck, folder_files, hub_snapshot_files, missing_dependency
from bench.errors import BenchError
from bench.preprocess import build_transform

# Chinese CLIP's own pipeline: context length 52, lower-cased text, curly quotes normalised.
CN_CLIP_CONTEXT = 52


def normalize_cn_text(text: str) -> str:
    return text.lower().replace("“", '"').replace("”", '"')


class HFImageTransform:
    """A picklable PIL → tensor wrapper around a transformers image processor (its own protocol)."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, img):
        return self.processor(images=img.convert("RGB"), return_tensors="pt")["pixel_values"][0]

    def __repr__(self):
        return f"HFImageTransform({json.dumps(self.processor.to_dict(), sort_keys=True, default=str)})"


def looks_like_path(src: str) -> bool:
    """`model:` names a local folder, not a Hub repo id (`org/name`): absolute, ~, ./ or ../, or deeper than
    org/name, or a Windows path."""
    return (src.startswith(("/", "~", "./", "../", ".\\", "..\\")) or src.count("/") > 1 or "\\" in src
            or Path(src).is_absolute())


class TransformersBackend(Backend):
    PACKAGE = "transformers"
    TEXT_ATTRS = ("tokenizer", "context_length", "model_type", "is_cn_clip")

    def __init__(self, spec, device="cpu", cache_dir=None):
        super().__init__(spec, device, cache_dir)
        try:
            from transformers.utils import logging as hf_logging
        except ImportError:
            raise missing_dependency("transformers", "pip install transformers") from None
        hf_logging.disable_progress_bar()  # our own progress bars are enough
        local = Path(spec.model).expanduser()
        self.where = str(local) if local.is_dir() else spec.model
        self.revision = spec.pretrained if not local.is_dir() else None

    def _from_pretrained(self, cls):
        try:
            return cls.from_pretrained(self.where, **({"revision": self.revision} if self.revision else {}))
        except (OSError, ValueError) as exc:
            src = self.spec.model
            if looks_like_path(src) and not Path(src).expanduser().exists():
                # a folder that is not there is not a Hub repo to download: say so, not `hf download /path`
                raise BenchError(f"cannot load {self.spec.name}: {src}: no such folder (model: in {self.spec.source}); "
                                 "fix the path to a folder saved with save_pretrained, or name a Hugging Face "
                                 "repo id (org/name)") from None
            hint = (f"download it once with `hf download {src}` (into the Hugging Face cache, $HF_HOME/hub)"
                    if not Path(src).expanduser().exists() else "the folder must hold a model saved with "
                    "save_pretrained (config.json, weights, tokenizer and preprocessor files)")
            raise BenchError(f"cannot load {self.spec.name} from '{src}': {str(exc).splitlines()[0]}; {hint}") from None

    def source_files(self) -> list[Path] | None:
        local = Path(self.where)
        if local.is_dir():
            return folder_files(local)
        return hub_snapshot_files(None, self.where, self.revision)

    def _load_text(self) -> None:
        from transformers import AutoConfig, AutoTokenizer

        config = self._from_pretrained(AutoConfig)
        self.tokenizer = self._from_pretrained(AutoTokenizer)
        self.model_type = config.model_type
        self.is_cn_clip = self.model_type == "chinese_clip"
        text_config = getattr(config, "text_config", None)
        if text_config is None:
            raise BenchError(f"{self.spec.name}: '{self.spec.model}' is a {self.model_type} model, "
                             "not a CLIP-style dual encoder")
        self.context_length = CN_CLIP_CONTEXT if self.is_cn_clip else int(text_config.max_position_embeddings)

    def _load_model(self) -> None:
        from transformers import AutoImageProcessor, AutoModel

        model = self._from_pretrained(AutoModel)
        processor = self._from_pretrained(AutoImageProcessor)
        if not hasattr(model, "get_image_features") or not hasattr(model, "get_text_features"):
            raise BenchError(f"{self.spec.name}: '{self.spec.model}' is a {model.config.model_type} model, "
                             "not a CLIP-style dual encoder")
        self._adopt(model)
        if self.spec.preprocess != "model":
            size = int(model.config.vision_config.image_size)
            self.preprocess = build_transform(self.spec.preprocess, size, processor.image_mean, processor.image_std)
        else:
            self.preprocess = HFImageTransform(processor)

    def _prepare_text(self, text: str) -> str:
        return normalize_cn_text(text) if self.is_cn_clip else text

    @staticmethod
    def _features(out) -> torch.Tensor:
        # transformers 5.x may return an output object whose pooler_output holds the projection.
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def _encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._features(self.model.get_image_features(pixel_values=pixels))

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer([self._prepare_text(t) for t in texts], padding="max_length", truncation=True,
                             max_length=self.context_length, return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items()}
        return self._features(self.model.get_text_features(**enc))

    def check_text(self, text: str) -> TextCheck:
        toks = self.tokenizer.tokenize(self._prepare_text(text))
        unk = tuple(t for t in toks if t == self.tokenizer.unk_token)
        return TextCheck(len(toks) + 2, self.context_length, unk)
