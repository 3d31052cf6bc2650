"""Model registry: YAML entries mapped onto `ModelSpec`, aliases, and model YAML files given by path."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from bench.errors import BenchError
from bench.paths import PACKAGE_DIR
from bench.registry import from_mapping, load_yaml, unknown

LANGUAGES = ("en", "zh")
PREPROCESS = ("model", "cn-clip", "squash", "elevater")  # "model" or a name in bench.preprocess.TRANSFORMS
REGISTRY_FILE = PACKAGE_DIR / "registry" / "models.yaml"


@dataclass(frozen=True)
class ModelSpec:
    """Everything that identifies a model to evaluate (the contract's model YAML)."""

    name: str
    backend: str
    model: str
    language: str
    pretrained: str | None = None
    preprocess: str = "model"
    prompts: str | None = None  # default prompt set; None = openai-<language>
    description: str = ""
    source: str = "registry"  # where the spec came from (registry or a file path)

    def validate(self, where: str) -> ModelSpec:
        from bench.backends import BACKENDS

        if self.language not in LANGUAGES:
            raise BenchError(f"{where}: language must be one of {', '.join(LANGUAGES)}, got '{self.language}'")
        if self.preprocess not in PREPROCESS:
            raise BenchError(f"{where}: preprocess must be one of {', '.join(PREPROCESS)}, got '{self.preprocess}'")
        if self.backend not in BACKENDS:
            raise unknown("backend", self.backend, BACKENDS, hint=f"in {where}")
        return self

    @property
    def default_prompts(self) -> str:
        return self.prompts or f"openai-{self.language}"


def _registry() -> tuple[dict[str, ModelSpec], dict[str, str]]:
    data = load_yaml(REGISTRY_FILE)
    models: dict[str, ModelSpec] = {}
    for i, entry in enumerate(data["models"]):
        spec = from_mapping(ModelSpec, entry, f"{REGISTRY_FILE} (model #{i + 1})")
        if spec.name in models:
            raise BenchError(f"{REGISTRY_FILE}: duplicate model name '{spec.name}'")
        models[spec.name] = spec.validate(f"{REGISTRY_FILE} ({spec.name})")
    aliases = dict(data.get("aliases") or {})
    for alias, target in aliases.items():
        if target not in models:
            raise BenchError(f"{REGISTRY_FILE}: alias '{alias}' points to unknown model '{target}'")
    return models, aliases


def list_models() -> list[ModelSpec]:
    """All registered models, in registry order."""
    return list(_registry()[0].values())


def model_aliases() -> dict[str, str]:
    return _registry()[1]


def resolve_model(name_or_path: str) -> ModelSpec:
    """A registry name, an alias, or a path to a model YAML file."""
    models, aliases = _registry()
    # names and aliases are matched case-insensitively, as dataset names are (OpenAI/ViT-B16 is openai/vit-b16)
    spellings = {**aliases, **{n: n for n in models}}
    by_lower = {k.lower(): v for k, v in spellings.items()}
    path = Path(name_or_path).expanduser()
    if name_or_path.lower() in by_lower:
        return models[by_lower[name_or_path.lower()]]
    if path.suffix in (".yaml", ".yml") or path.is_file():
        data = load_yaml(path)
        spec = from_mapping(ModelSpec, data, str(path))
        return dataclasses.replace(spec, source=str(path)).validate(str(path))
    if path.is_dir():
        raise BenchError(f"--model {name_or_path} is a folder; --model takes a registry name or a model YAML file: "
                         f"write one with `model: {name_or_path}` (and name, backend, language) and pass its path")
    if name_or_path.startswith(("/", "~", "./", "../")) or path.is_absolute():
        raise BenchError(f"--model {name_or_path}: no such file; --model takes a registry name (see "
                         "`bench models list`) or the path to a model YAML file")
    raise unknown("model", name_or_path, spellings, hint="see `bench models list`, or pass a model YAML file")
