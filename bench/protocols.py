"""Protocol registry: one YAML per protocol under bench/registry/protocols/ (see docs/protocols.md).

A protocol fixes everything that changes a number apart from the model and the images. Every shipped protocol
runs end to end; one the runner cannot honour (RUNNABLE) is listed and recorded, but refused at run time with a
clear error rather than silently run under bench's settings."""

from __future__ import annotations

import dataclasses
from functools import cache
from pathlib import Path

from bench.errors import BenchError
from bench.registry import load_yaml, unknown

PROTOCOL_DIR = Path(__file__).parent / "registry" / "protocols"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SCORES = ("logits", "softmax100")
IMPLEMENTATIONS = ("bench", "elevater", "clip_benchmark")
# `protocol:NAME` in a study's --sets/--variant or prompts eval's --baseline: that protocol's templates or labels
REF_PREFIX = "protocol:"
# `labels:` values that name a variant of bench's shipped label files (taken where the file defines it)
LABEL_VARIANTS = ("elevater",)
RUNNABLE = ("bench", "cn-clip", "elevater", "datacomp")  # protocols whose every setting the runner implements
# `templates:`/`labels:` sources read from the dataset folder itself, with the language their files are in:
# `wds` is a webdataset copy's zeroshot_classification_templates.txt and classnames.txt (DataComp, clip-benchmark)
FOLDER_SOURCES = {"wds": "en"}
# `data:` the copy of each dataset a protocol expects: a source a copy must have (bench.datasets.sources), and the
# copy `bench datasets prepare --copy` fetches and the runner looks for first ("" = any copy, the default search)
DATA_COPIES = {"elevater-cn": ("", ""), "elevater": ("", ""), "datacomp": ("wds", "datacomp")}
TEMPLATE_KEYS = {"module", "language", "default", "per_dataset", "install"}
# Text normalisations by name: "module:function" applied to every rendered prompt before tokenizing.
TEXT_NORMALISATIONS = {"none": None, "cn_clip": "bench.backends.hf:normalize_cn_text"}
# Image transforms: `model` keeps the model's registry `preprocess`; others replace it with that transform
# (bench.preprocess.TRANSFORMS) for the run. A protocol may name one per dataset: {default, per_dataset}.
IMAGE_TRANSFORMS = ("model", "cn-clip", "squash", "elevater")


@dataclasses.dataclass(frozen=True)
class Protocol:
    name: str
    description: str
    templates: str | dict  # a named source, or {module, language, default, per_dataset} read from a package
    labels: str
    text_normalisation: str
    image_transform: str | dict  # a transform name, or {default: name, per_dataset: {dataset: name}}
    precision: str
    scores: str
    metric_implementation: str
    data: str
    duplicate_labels: str = "error"  # two classes with one name: error | warn
    duplicate_templates: str = "error"  # a template listed twice: error | keep (kept, so it weighs twice)
    published: str | None = None
    path: Path | None = None


def _load(path: Path) -> Protocol:
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise BenchError(f"{path}: expected a mapping of protocol settings")
    fields = {f.name for f in dataclasses.fields(Protocol)} - {"path"}
    extra = sorted(set(raw) - fields)
    if extra:
        raise BenchError(f"{path}: unknown protocol key(s) {', '.join(extra)}; known: {', '.join(sorted(fields))}")
    try:
        proto = Protocol(**raw, path=path)
    except TypeError as exc:
        raise BenchError(f"{path}: {exc}") from None
    for key, allowed in (("precision", PRECISIONS), ("scores", SCORES),
                         ("metric_implementation", IMPLEMENTATIONS), ("text_normalisation", tuple(TEXT_NORMALISATIONS)),
                         ("duplicate_labels", ("error", "warn")), ("duplicate_templates", ("error", "keep"))):
        if getattr(proto, key) not in allowed:
            raise BenchError(f"{path}: {key} is '{getattr(proto, key)}', expected one of {', '.join(allowed)}")
    _check_transforms(proto.image_transform, path)
    if isinstance(proto.templates, dict):
        missing, extra = {"module", "default"} - set(proto.templates), set(proto.templates) - TEMPLATE_KEYS
        if missing or extra:
            raise BenchError(f"{path}: templates from a package need the keys module and default "
                             f"(and optionally language, per_dataset); missing: {', '.join(sorted(missing)) or 'none'}, "
                             f"unknown: {', '.join(sorted(extra)) or 'none'}")
    elif not isinstance(proto.templates, str):
        raise BenchError(f"{path}: templates must be a source name or a mapping with module and default")
    if proto.data not in DATA_COPIES:
        raise BenchError(f"{path}: data is '{proto.data}', expected one of {', '.join(DATA_COPIES)}")
    if proto.name != path.stem:
        raise BenchError(f"{path}: name '{proto.name}' does not match the file name '{path.stem}'")
    return proto


def _check_transforms(value, path: Path) -> None:
    """`image_transform`: a name, or {default: name, per_dataset: {registry dataset name: name}}."""
    if isinstance(value, dict):
        if set(value) - {"default", "per_dataset"} or "default" not in value:
            raise BenchError(f"{path}: image_transform as a mapping takes the keys default and per_dataset")
        per = value.get("per_dataset") or {}
        names = [value["default"], *per.values()]
        from bench.datasets.registry import find_dataset

        typos = sorted(k for k in per if find_dataset(k) is None or find_dataset(k).name != k)
        if typos:
            raise BenchError(f"{path}: image_transform.per_dataset names no registered dataset: {', '.join(typos)} "
                             "(use the canonical names `bench datasets list` shows)")
    else:
        names = [value]
    bad = [n for n in names if n not in IMAGE_TRANSFORMS]
    if bad:
        raise BenchError(f"{path}: image_transform '{bad[0]}' is not one of {', '.join(IMAGE_TRANSFORMS)}")


def image_transform_for(proto: Protocol, dataset: str | None) -> str:
    """The transform a protocol uses on `dataset` (registry name; None: its default)."""
    t = proto.image_transform
    if isinstance(t, str):
        return t
    return (t.get("per_dataset") or {}).get(dataset, t["default"]) if dataset else t["default"]


@cache
def _registry() -> dict[str, Protocol]:
    return {p.name: p for p in (_load(f) for f in sorted(PROTOCOL_DIR.glob("*.yaml")))}


def list_protocols() -> list[Protocol]:
    """All registered protocols, `bench` first."""
    protos = _registry()
    return sorted(protos.values(), key=lambda p: (p.name != "bench", p.name))


def load_protocol(name: str) -> Protocol:
    """The registered protocol `name`; an unknown name gets did-you-mean."""
    protos = _registry()
    if name not in protos:
        raise unknown("protocol", name, protos, "`bench protocols list` shows them")
    return protos[name]


def variant_protocol(variant: str | None) -> Protocol | None:
    """The protocol whose class names a label variant reproduces (None: an ordinary variant)."""
    if variant not in LABEL_VARIANTS:
        return None
    return next((p for p in _registry().values() if p.labels == variant), None)


def text_normaliser(proto: Protocol):
    """The protocol's text normalisation as a function str -> str (None: texts are used as rendered)."""
    target = TEXT_NORMALISATIONS[proto.text_normalisation]
    if target is None:
        return None
    import importlib

    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def required_source(proto: Protocol) -> str:
    """The dataset source (layout) a protocol's data must come from: `wds` for datacomp; "" for any."""
    return DATA_COPIES[proto.data][0]


def preferred_copy(proto: Protocol) -> str:
    """The registry `sources:` key of the copy a protocol expects (looked for first); "" for the default search."""
    return DATA_COPIES[proto.data][1]


def templates_source(proto: Protocol) -> str:
    """A one-line description of where a protocol's templates come from (for listings and errors)."""
    t = proto.templates
    return t if isinstance(t, str) else f"{t['module']} ({t['default']} unless per_dataset names a list)"


def check_runnable(proto: Protocol) -> None:
    """Refuse a protocol whose settings the runner cannot honour yet (never run it under bench's settings)."""
    if proto.name not in RUNNABLE:
        raise BenchError(f"protocol '{proto.name}' is registered but cannot run yet: bench does not implement its "
                         f"templates ({templates_source(proto)}), labels ({proto.labels}), scores ({proto.scores}) and "
                         f"metric implementation ({proto.metric_implementation}) yet; runnable: {', '.join(RUNNABLE)}")


def default_precision(device_type: str, bf16_supported: bool) -> str:
    """bench's precision today: fp32 on CPU, bf16 autocast on GPU (fp16 without bf16 support)."""
    if device_type != "cuda":
        return "fp32"
    return "bf16" if bf16_supported else "fp16"


def resolve_precision(requested: str, proto: Protocol, device_type: str, bf16_supported: bool = True) -> str:
    """`--precision`: auto takes the protocol's precision, else bench's default for the device."""
    if requested not in PRECISIONS:
        raise BenchError(f"precision '{requested}' is not one of {', '.join(PRECISIONS)}")
    if requested == "auto":
        requested = proto.precision
    if requested == "auto":
        return default_precision(device_type, bf16_supported)
    if device_type != "cuda" and requested != "fp32":
        raise BenchError(f"precision {requested} needs a GPU; on {device_type} bench computes in fp32 "
                         "(use --precision fp32 or auto)")
    return requested
