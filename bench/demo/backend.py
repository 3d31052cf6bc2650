"""The demo backend: loads the cached tiny CLIP, training it first if it is not cached yet."""

from __future__ import annotations

import logging
from pathlib import Path

from safetensors.torch import load_file

from bench.backends.base import Backend, TextCheck
from bench.demo.model import UNK, TinyCLIP, Tokenizer
from bench.demo.train import load_config, preprocess, train
from bench.paths import default_cache_dir

log = logging.getLogger(__name__)


class DemoBackend(Backend):
    def __init__(self, spec, device="cpu", cache_dir=None):
        super().__init__(spec, device, cache_dir)
        self.folder = Path(cache_dir or default_cache_dir()) / "models" / spec.model

    def _config(self):
        if not (self.folder / "model.safetensors").is_file():
            log.warning("training the demo model once (about a minute on CPU); cached in %s", self.folder)
            train(self.folder)
        return load_config(self.folder)

    def source_files(self) -> list[Path] | None:
        files = [self.folder / "config.json", self.folder / "model.safetensors"]
        return files if all(f.is_file() for f in files) else None

    def _load_text(self) -> None:
        cfg = self._config()
        self.tokenizer = Tokenizer(list(cfg.vocab), cfg.context_length)
        self.context_length = cfg.context_length

    def _load_model(self) -> None:
        model = TinyCLIP(self._config())
        model.load_state_dict(load_file(self.folder / "model.safetensors"))
        self._adopt(model)
        self.preprocess = preprocess(self.spec.preprocess)

    def _encode_images(self, pixels):
        return self.model.encode_image(pixels)

    def _encode_texts(self, texts):
        return self.model.encode_text(self.tokenizer(texts).to(self.device))

    def check_text(self, text: str) -> TextCheck:
        toks = self.tokenizer.tokenize(text)
        return TextCheck(len(toks) + 1, self.context_length, tuple(t for t in toks if t == UNK))
