"""Dataset registry: one YAML file per dataset under bench/registry/datasets/."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from bench.errors import BenchError
from bench.paths import PACKAGE_DIR
from bench.registry import from_mapping, load_yaml, unknown

REGISTRY_DIR = PACKAGE_DIR / "registry" / "datasets"
METRIC_NAMES = ("accuracy", "mean_per_class", "11point_mAP", "roc_auc")
TASK_KINDS = ("classification", "retrieval")  # what a dataset is for; `bench run --task` picks by this
RETRIEVAL_METRICS = ("mean_recall",)


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: identity, classes in canonical order, metric and sources.

    A retrieval set (`task: retrieval`) has no classes (num_classes 0), metric `mean_recall`, the
    language of its captions, and caption counts per split beside the image counts in `splits`."""

    name: str
    num_classes: int
    metric: str
    classes: tuple[str, ...] = ()
    task: str = "classification"
    language: str = ""  # retrieval: the captions' language (en, zh)
    captions: dict[str, int] = field(default_factory=dict)  # retrieval: captions per split
    # retrieval: the split published numbers use when it is not `test` (MUGE's test split is unannotated)
    eval_split: str = ""
    title: str = ""
    aliases: tuple[str, ...] = ()
    elevater_id: str = ""
    multilabel: bool = False
    optional: bool = False
    demo: bool = False  # generated locally for the offline demo; not part of `--dataset all`
    splits: dict[str, int] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    # Names a source uses for a class where they differ from ours (source name -> canonical name);
    # sources are matched onto `classes` by normalised name, so only real differences go here.
    class_map: dict[str, str] = field(default_factory=dict)
    notes: str = ""

    def validate(self, where: str) -> DatasetSpec:
        if self.task not in TASK_KINDS:
            raise BenchError(f"{where}: task must be one of {', '.join(TASK_KINDS)}, got '{self.task}'")
        if self.task == "retrieval":
            if self.metric not in RETRIEVAL_METRICS:
                raise BenchError(f"{where}: a retrieval set's metric must be one of {', '.join(RETRIEVAL_METRICS)}, "
                                 f"got '{self.metric}'")
            if self.num_classes or self.classes:
                raise BenchError(f"{where}: a retrieval set has captions, not classes (num_classes: 0, no classes)")
            return self
        if self.metric not in METRIC_NAMES:
            raise BenchError(f"{where}: metric must be one of {', '.join(METRIC_NAMES)}, got '{self.metric}'")
        if len(self.classes) != self.num_classes:
            raise BenchError(f"{where}: {len(self.classes)} classes listed, num_classes says {self.num_classes}")
        if len(set(self.classes)) != len(self.classes):
            raise BenchError(f"{where}: duplicate class names")
        bad = sorted(v for v in self.class_map.values() if v not in self.classes)
        if bad:
            raise BenchError(f"{where}: class_map maps to name(s) not in classes: {', '.join(bad[:5])}")
        return self

    @property
    def folder_names(self) -> tuple[str, ...]:
        """Folder names this dataset may have under a data root, most specific first."""
        names = [self.sources.get("elevater", ""), self.sources.get("cn-clip", ""), self.name, self.elevater_id,
                 *self.aliases]
        return tuple(dict.fromkeys(n for n in names if n))


@lru_cache(maxsize=1)
def _registry() -> dict[str, DatasetSpec]:
    specs: dict[str, DatasetSpec] = {}
    for path in sorted(REGISTRY_DIR.glob("*.yaml")):
        spec = from_mapping(DatasetSpec, load_yaml(path), str(path)).validate(str(path))
        if spec.name != path.stem:
            raise BenchError(f"{path}: name '{spec.name}' must equal the file name '{path.stem}'")
        specs[spec.name] = spec
    return specs


def list_datasets(include_optional: bool = True, include_demo: bool = True,
                  task: str | None = "classification") -> list[DatasetSpec]:
    """Registered datasets of one task kind (classification by default, None: every kind)."""
    return [s for s in _registry().values()
            if (include_optional or not s.optional) and (include_demo or not s.demo)
            and (task is None or s.task == task)]


def _aliases() -> dict[str, str]:
    out = {}
    for spec in _registry().values():
        for alias in (spec.name, spec.elevater_id, *spec.aliases):
            if alias:
                out[alias.lower()] = spec.name
    return out


def find_dataset(name: str) -> DatasetSpec | None:
    target = _aliases().get(name.lower())
    return _registry()[target] if target else None


def retrieval_spec(name: str, language: str = "") -> DatasetSpec:
    """A spec for a retrieval folder that is not in the registry."""
    return DatasetSpec(name=name, num_classes=0, metric="mean_recall", task="retrieval", title=name,
                       language=language)


def looks_like_folder(name: str) -> bool:
    """A --dataset value that can only be a path (registered names have no slashes)."""
    return "/" in name or "\\" in name or name.startswith(("~", ".")) or Path(name).is_absolute()


def get_dataset(name: str) -> DatasetSpec:
    """A dataset by canonical name or alias; unknown names get close-match suggestions."""
    spec = find_dataset(name)
    if spec is None:
        if looks_like_folder(name):
            path = Path(name).expanduser()
            raise BenchError(f"--dataset {name}: " + ("not a folder; pass the dataset's folder" if path.exists()
                                                      else "no such folder"))
        raise unknown("dataset", name, _aliases(), hint="see `bench datasets list`, or pass a dataset folder path")
    return spec


def ad_hoc_spec(name: str, class_names: list[str]) -> DatasetSpec:
    """A spec for a folder that is not in the registry: accuracy, classes from its label file."""
    return DatasetSpec(name=name, num_classes=len(class_names), metric="accuracy",
                       classes=tuple(class_names), title=name)


def registry_path(spec: DatasetSpec) -> Path:
    return REGISTRY_DIR / f"{spec.name}.yaml"
