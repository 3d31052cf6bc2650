"""Class names per language and dataset (contract: label_translations/<language>/<dataset>.yaml)."""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.datasets.base import SplitData
from bench.datasets.registry import DatasetSpec
from bench.errors import BenchError
from bench.paths import labels_dir
from bench.prompts import check_name, is_path_arg
from bench.registry import load_yaml, unknown

log = logging.getLogger("bench")


@dataclass(frozen=True)
class Labels:
    names: tuple[str, ...]
    source: str  # file the names came from
    variant: str | None = None  # named variant applied, if any
    # per-class fields from the file's `classes:` ({"definition": str, "descriptions": (str, ...)}),
    # one dict per class in index order; () when the file has none
    fields: tuple[dict, ...] = field(default=(), compare=False, repr=False)

    @property
    def description(self) -> str:
        return f"{self.source}" + (f"#{self.variant}" if self.variant else "")


def parse_label_file(path: Path) -> tuple[tuple[str, ...], dict[str, dict[int, str]]]:
    """(labels, variants) from a label YAML file, with types checked."""
    data = load_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("labels"), list):
        raise BenchError(f"{path}: a label file is a mapping with a 'labels' list")
    extra = set(data) - {"labels", "variants", "classes"}
    if extra:
        raise BenchError(f"{path}: unknown key(s) {', '.join(sorted(map(str, extra)))}; "
                         "allowed: labels, variants, classes")
    labels = data["labels"]
    bad = [i for i, x in enumerate(labels) if not isinstance(x, (str, int, float)) or not str(x).strip()]
    if bad:
        raise BenchError(f"{path}: label #{bad[0]} is empty or not text")
    variants_raw = data.get("variants") or {}
    if not isinstance(variants_raw, dict):
        raise BenchError(f"{path}: variants must map a variant name to {{class index: name}}")
    variants: dict[str, dict[int, str]] = {}
    for vname, mapping in variants_raw.items():
        if not isinstance(mapping, dict) or not all(isinstance(k, int) and not isinstance(k, bool) for k in mapping):
            raise BenchError(f"{path}: variant '{vname}' must map class indices (integers) to names")
        out_of_range = [k for k in mapping if not 0 <= k < len(labels)]
        if out_of_range:
            raise BenchError(f"{path}: variant '{vname}' names class {out_of_range[0]}, "
                             f"but the file has {len(labels)} labels")
        variants[str(vname)] = {k: str(v) for k, v in mapping.items()}
    return tuple(str(x).strip() for x in labels), variants


# Per-class fields a label file may give under `classes:`, and the type of each (the template variable
# each fills is in bench.prompts.FIELD_VARIABLES).
CLASS_FIELDS = {"definition": str, "descriptions": list}


def parse_label_fields(path: Path, names: tuple[str, ...] | None = None) -> tuple[dict, ...]:
    """The per-class fields of a label file, one dict per class (empty for a class not listed).

    ``classes:`` maps a class, by its name in ``labels:`` or by its index, to ``definition:`` (text)
    and ``descriptions:`` (a list of texts). Keys that name no class and unknown fields are errors.
    """
    data = load_yaml(path)
    if names is None:
        names = parse_label_file(path)[0]
    raw = data.get("classes") if isinstance(data, dict) else None
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise BenchError(f"{path}: classes must map a class name (or index) to its fields "
                         f"({', '.join(CLASS_FIELDS)})")
    index = {n: i for i, n in enumerate(names)}
    out: list[dict] = [{} for _ in names]
    for key, entry in raw.items():
        if isinstance(key, int) and not isinstance(key, bool):
            if not 0 <= key < len(names):
                raise BenchError(f"{path}: classes names class {key}, but the file has {len(names)} labels")
            i = key
        elif str(key).strip() in index:
            i = index[str(key).strip()]
        else:
            raise unknown(f"class in {path} (under classes:)", str(key), list(names),
                          hint="key each entry by a name from `labels:` or by its class index")
        if out[i]:
            raise BenchError(f"{path}: class {i} {names[i]!r} has two entries under classes:; keep one")
        if not isinstance(entry, dict):
            raise BenchError(f"{path}: classes.{key} must be a mapping of fields ({', '.join(CLASS_FIELDS)})")
        bad = set(map(str, entry)) - set(CLASS_FIELDS)
        if bad:
            raise BenchError(f"{path}: classes.{key}: unknown field(s) {', '.join(sorted(bad))}; "
                             f"allowed: {', '.join(CLASS_FIELDS)}")
        fields: dict = {}
        for name, kind in CLASS_FIELDS.items():
            if name not in entry or entry[name] is None:
                continue
            value = entry[name]
            if kind is list:
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise BenchError(f"{path}: classes.{key}.{name} must be a list of texts")
                fields[name] = tuple(value)
            else:
                if not isinstance(value, str):
                    raise BenchError(f"{path}: classes.{key}.{name} must be text, got {value!r}")
                fields[name] = value
        out[i] = fields
    return tuple(out)


def check_fields(fields: tuple[dict, ...], names: tuple[str, ...], source: str) -> None:
    """Empty texts are refused at run time (lint lists all of them): an empty description would be a
    prompt of the template alone, counted in the class's mean."""
    for i, f in enumerate(fields):
        if "definition" in f and not f["definition"].strip():
            raise BenchError(f"{source}: class {i} {names[i]!r} has an empty definition; write one or remove the key")
        if any(not d.strip() for d in f.get("descriptions", ())):
            raise BenchError(f"{source}: class {i} {names[i]!r} has an empty description; remove it")


def display_path(path: Path) -> str:
    """Shipped files are named relative to the resource root, so results do not depend on the checkout."""
    from bench.paths import resource_root

    try:
        return Path(path).resolve().relative_to(resource_root().resolve()).as_posix()
    except ValueError:
        return str(path)


def label_file(language: str, dataset: str) -> Path:
    return labels_dir() / language / f"{dataset}.yaml"


def label_variants(dataset: str, language: str) -> tuple[str, ...]:
    """The variant names the shipped label file of `dataset` in `language` defines (none without a file)."""
    path = label_file(language, dataset)
    return tuple(parse_label_file(path)[1]) if path.is_file() else ()


def check_count(names: tuple[str, ...], spec: DatasetSpec, source: str) -> None:
    if len(names) != spec.num_classes:
        raise BenchError(f"{source}: has {len(names)} class names, but dataset {spec.name} has "
                         f"{spec.num_classes} classes; fix the file so it lists one name per class in index order")


HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
LATIN = re.compile(r"[A-Za-z]")


def check_distinct(names: tuple[str, ...], source: str, duplicates: str = "error") -> None:
    """Two classes with one name get identical class embeddings: the model could never tell them apart.

    `duplicates="warn"`: a protocol that reproduces an official file with repeats (ImageNet's label_cn.txt
    has three pairs) runs it as published, and says so."""
    dupes = [n for n, c in Counter(names).items() if c > 1]
    if dupes and duplicates == "warn":
        log.warning("%s: %d class name(s) are used for more than one class (%s); kept as the protocol publishes "
                    "them, so those classes get identical class embeddings", source, len(dupes),
                    ", ".join(f"{n} ({', '.join(str(i) for i, m in enumerate(names) if m == n)})" for n in dupes[:5]))
        return
    if dupes:
        where = [i for i, n in enumerate(names) if n == dupes[0]]
        raise BenchError(f"{source}: class name '{dupes[0]}' is used for classes {', '.join(map(str, where))}"
                         f"{f' ({len(dupes)} duplicated names in all)' if len(dupes) > 1 else ''}; "
                         "identical names give identical class embeddings, so make every name distinct")


def check_language(names: tuple[str, ...], language: str, source: str) -> None:
    """A label file in the wrong language silently costs accuracy, so it is an error.

    zh: no name has a Han character but some have Latin letters (names of digits or symbols only,
    like MNIST's "0".."9", suit either language); en: most names have Han characters. Named variants
    are exempt: a variant is a deliberate experiment.
    """
    with_han = sum(bool(HAN.search(n)) for n in names)
    with_latin = sum(bool(LATIN.search(n)) for n in names)
    if language == "zh" and with_latin and with_han == 0:
        raise BenchError(f"{source}: none of its {len(names)} names has Chinese characters, but the labels are "
                         "for a Chinese (zh) evaluation; use a Chinese label file, or pass --language en "
                         "to evaluate in English")
    if language == "en" and with_han * 2 > len(names):
        raise BenchError(f"{source}: {with_han} of its {len(names)} names are Chinese, but the labels are for an "
                         "English (en) evaluation; use an English label file, or pass --language zh")


def match_folder_names(names: tuple[str, ...], data: SplitData | None, source: str) -> tuple[str, ...]:
    """A label file for a plain image folder, in the class folders' order (issue 15).

    A plain folder's classes are its class folder names in sorted order, so a file that lists those
    names in another order (``zero`` … ``nine``) would be applied to the wrong classes by index: it is
    reordered by name, and says so. A file that shares some names but not all is an error naming the
    difference. A file with none of the folder names (a translation) is applied in the sorted order.
    """
    from bench.datasets.classes import normalise

    folders = data.class_names.get("en") if data is not None and data.source == "folder" else None
    if not folders or len(folders) != len(names):
        return names  # not a plain folder, or check_count reports the count
    want, have = [normalise(f) for f in folders], [normalise(n) for n in names]
    if want == have or not set(want) & set(have):
        if want != have:
            log.warning("%s: has none of the class folder names, so it is applied in the folders' sorted order; "
                        "check the pairing (%s)", source,
                        ", ".join(f"{f} → {n}" for f, n in list(zip(folders, names))[:4]) + ", …")
        return names
    if set(want) == set(have) and len(set(have)) == len(have):
        by_key = dict(zip(have, names))
        log.info("%s: names the class folders of %s in another order; matched by name", source, data.root)
        return tuple(by_key[k] for k in want)
    missing = [f for f, k in zip(folders, want) if k not in set(have)]
    extra = [n for n, k in zip(names, have) if k not in set(want)]
    raise BenchError(f"{source}: its names do not match the class folders of {data.root}: "
                     f"folders with no name in the file: {', '.join(map(repr, missing[:10])) or 'none'}; "
                     f"names with no folder: {', '.join(map(repr, extra[:10])) or 'none'}"
                     f"{' (a name is repeated)' if len(set(have)) != len(have) else ''}; "
                     "list exactly the folder names (any order), or names of none of them in the folders' "
                     "sorted order")


def resolve_labels(arg: str | None, spec: DatasetSpec, language: str, data: SplitData | None = None,
                   duplicates: str = "error") -> Labels:
    """Labels for `spec` in `language`: the shipped default, a named variant, a YAML path, or `dataset`;
    `duplicates`: what a name used for two classes is, "error" or (under a protocol that says so) "warn"."""
    if arg == "dataset":
        if data is None or language not in data.class_names:
            fname = {"en": "label.txt", "zh": "label_cn.txt"}[language]
            raise BenchError(f"--labels dataset: {spec.name} has no {fname} beside its splits")
        names = data.class_names[language]
        # a plain folder's names are its class folders, a webdataset's its classnames.txt: never record a
        # label.txt that does not exist
        labels = Labels(names, f"{data.root} (class folder names)" if data.source == "folder" else
                        str(Path(data.root).parent / "classnames.txt") if data.source == "wds" else
                        str(Path(data.root).parent / {"en": "label.txt", "zh": "label_cn.txt"}[language]))
        check_language(names, language, labels.source)
    elif arg is not None and is_path_arg(arg):
        original, _ = parse_label_file(Path(arg))
        fields = parse_label_fields(Path(arg), original)
        names = match_folder_names(original, data, str(arg))
        if fields and names != original:  # reordered to the class folders: the fields follow their names
            fields = tuple(fields[original.index(n)] for n in names)
        labels = Labels(names, str(arg), fields=fields)
        check_language(names, language, labels.source)
    else:
        path = label_file(language, spec.name)
        if not path.is_file() and data is not None and data.source == "folder":
            raise BenchError(f"no {language} labels for {data.root.parent} (a plain image folder): pass "
                             "--labels dataset to use its class folder names, or --labels FILE with one name "
                             "per class folder")
        if not path.is_file():
            have = sorted(p.parent.name for p in labels_dir().glob(f"*/{spec.name}.yaml"))
            raise BenchError(f"no {language} labels for dataset {spec.name} ({path} is missing; "
                             f"languages available: {', '.join(have) or 'none'}); "
                             "write that file or pass --labels FILE")
        names, variants = parse_label_file(path)
        check_language(names, language, str(path))
        variant = None
        if arg is not None:
            variant = check_name(arg, "label variant")
            if variant not in variants:
                raise unknown("label variant", arg, list(variants) + ["dataset"], hint=f"variants are defined in {path}")
            names = tuple(variants[variant].get(i, n) for i, n in enumerate(names))
        # a variant renames classes; their fields stay with the class index
        labels = Labels(names, display_path(path), variant, fields=parse_label_fields(path))
    check_count(labels.names, spec, labels.description)
    check_distinct(labels.names, labels.description, duplicates)
    check_fields(labels.fields, labels.names, labels.description)
    return labels
