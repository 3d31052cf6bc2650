"""Study runs: cached image features in, text re-encoded (and cached) per prompt set × labels, JSON out."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.cache import atomic_write_json, check_writable, file_sha256
from bench.datasets import sources
from bench.datasets.base import SplitData, stratified_limit
from bench.errors import BenchError
from bench.experiment import experiment, result_stem, update_index
from bench.labels import Labels, label_file, parse_label_file, resolve_labels
from bench.models import ModelSpec, resolve_model
from bench.prompts import PromptSet, is_path_arg, load_prompt_set
from bench.protocols import REF_PREFIX as PROTOCOL_REF
from bench.protocols import load_protocol
from bench.runner import (
    DatasetRef,
    Runner,
    RunOptions,
    check_protocol_data,
    load_data,
    protocol_labels_arg,
    protocol_language,
    protocol_prompt_set,
    resolve_datasets,
    target_array,
    unknown_labels,
)
from bench.studies import compute

log = logging.getLogger(__name__)

# How a class name is negated for the probe, per language ("{}" is the class name).
NEGATION_FORMATS = {"zh": "没有{}", "en": "no {}"}


@dataclass
class Split:
    """One evaluated split: its data, cached features and targets aligned with the features."""

    data: SplitData
    features: torch.Tensor
    targets: np.ndarray
    key: str
    n_encoded: int
    seconds: float


class Study:
    """Shared plumbing for every study: one Runner (caches, backends), one model × dataset at a time."""

    def __init__(self, opts: RunOptions):
        self.opts = opts
        self.runner = Runner(opts)
        # the protocol's transform, precision and text normalisation reach features and prompts through the
        # runner; its scores and metric implementation reach every arm's metrics through this
        self.scoring = compute.Scoring(self.runner.protocol.scores, self.runner.protocol.metric_implementation)

    def split(self, spec: ModelSpec, data: SplitData, ref: DatasetRef) -> Split:
        feats = self.runner.image_features(self.runner.backend(spec, ref.spec.name), data)
        return Split(data, feats.features, target_array(data, feats.indices), feats.key, feats.n_encoded,
                     feats.seconds)

    def test_split(self, spec: ModelSpec, ref: DatasetRef) -> Split:
        return self.split(spec, load_data(ref, self.opts.split, self.opts.limit), ref)

    def labels(self, spec: ModelSpec, ref: DatasetRef, arg: str | None) -> Labels:
        """The labels `arg` names (None: the protocol's, `protocol:NAME`: that protocol's label source, e.g.
        `protocol:cn-clip` for the folder's label_cn.txt); warns, as `bench run` does, about [UNK] names."""
        proto, language = self.runner.protocol, self.runner.language(spec)
        if arg is not None and arg.startswith(PROTOCOL_REF):
            proto = load_protocol(arg[len(PROTOCOL_REF):])
            check_protocol_data(proto, ref)  # datacomp's names are a webdataset copy's classnames.txt
            language = protocol_language(proto) or language
            arg = protocol_labels_arg(proto, ref.spec, language)
        elif arg is None:
            arg = protocol_labels_arg(proto, ref.spec, language)
        # a label file is matched to a plain folder's class folders by name, so it needs the data too
        needs_data = arg == "dataset" or (arg is not None and is_path_arg(arg))
        labels = resolve_labels(arg, ref.spec, language, load_data(ref, self.opts.split, None) if needs_data else None,
                                duplicates=proto.duplicate_labels)
        unknown_labels(self.runner.backend(spec), labels)
        return labels

    def unknown(self, spec: ModelSpec, labels: Labels) -> list[str]:
        """The class names of `labels` that tokenize to [UNK] (memoised per model)."""
        return self.runner.backend(spec).unknown_tokens(list(labels.names))

    def weights(self, spec: ModelSpec, ps: PromptSet, dataset: str, names: tuple[str, ...] | Labels) -> torch.Tensor:
        """[C, T, D] prompt embeddings, from the text cache (keyed by model × rendered prompts)."""
        labels = names if isinstance(names, Labels) else Labels(tuple(names), "study")
        per_prompt = self.runner.class_weights(self.runner.backend(spec), ps, dataset, labels)
        if not isinstance(per_prompt, torch.Tensor):  # per-template studies slice [C, T, D] by template
            raise BenchError(f"prompt set '{ps.name}' ({ps.path}) gives classes different numbers of prompts "
                             "(per-class fields or CuPL lists); this study scores templates one by one: use "
                             "`bench study knowledge` for per-class prompts")
        return per_prompt

    def prompt_set(self, spec: ModelSpec, name: str | None = None, ref: DatasetRef | None = None) -> PromptSet:
        """The prompt set `name` (None: the protocol's; `protocol:NAME`: that protocol's templates, e.g.
        `protocol:cn-clip` for the lists read from the installed cn_clip, `protocol:datacomp` for the templates
        file of the webdataset folder `ref`)."""
        if name is not None and name.startswith(PROTOCOL_REF):
            ps = protocol_prompt_set(load_protocol(name[len(PROTOCOL_REF):]), spec, ref=ref)
        else:
            ps = load_prompt_set(name) if name else self.runner.prompt_set(spec, ref)
        language = self.runner.language(spec)
        if ps.language != language:
            log.warning("prompt set %s is %s but %s is evaluated in %s", ps.name, ps.language, spec.name, language)
        return ps

    def header(self, task: str, spec: ModelSpec, ref: DatasetRef, test: Split, started: float, ps: PromptSet,
               **extra) -> dict:
        backend = self.runner.backend(spec, ref.spec.name)
        proto = self.runner.protocol
        return {
            "model": spec.name, "dataset": ref.spec.name, "split": test.data.split, "task": task,
            "protocol": proto.name, "precision": self.runner.precision, "scores": proto.scores,
            "metrics_implementation": proto.metric_implementation,
            "language": self.runner.language(spec), "n_samples": len(test.targets),
            "n_classes": ref.spec.num_classes, "metric": ref.spec.metric, "limit": self.opts.limit, **extra,
            "cache": {"image_features": test.key, "images_encoded": test.n_encoded},
            "timings": {"image_features_s": round(test.seconds, 3),
                        "total_s": round(time.perf_counter() - started, 3)},
            "manifest": self.runner.manifest(backend, test.data, ps),
        }

    def write(self, result: dict, arms: dict | None = None) -> Path:
        """``<task>.json`` for the default experiment, else named by what differs (bench.experiment), so a study
        with other settings or arms never replaces another's result; ``index.json`` maps names to settings."""
        folder = self.opts.out / result["model"] / result["dataset"]
        check_writable(folder, "output directory")
        # ELEVATER knowledge is identified as `bench run --knowledge` identifies it: its recipe and file hashes
        view = {**result, "prompt_texts": {"knowledge": result["knowledge"]}} if result.get("knowledge") else result
        result["experiment"] = ident = experiment(view, self.opts, arms)
        name = result_stem(ident) + ".json"
        atomic_write_json(folder / name, result)
        update_index(folder, name, ident)
        return folder / name


# A study's arguments that do not change its numbers (how many movers to list), or that are already part of
# the identity (the labels study's baseline is --labels), or that are identified another way (knowledge).
NOT_ARMS = {"top", "baseline", "knowledge"}


def study_arms(kind: str, kwargs: dict) -> dict:
    """The study's own arguments that differ from their defaults (a required one, e.g. the variant, always)."""
    import inspect

    arms = {}
    for name, param in list(inspect.signature(STUDIES[kind]).parameters.items())[3:]:  # after (st, spec, ref)
        if name in NOT_ARMS or name not in kwargs:
            continue
        value = kwargs[name]
        if param.default is param.empty or value != param.default:
            arms[name] = ["default" if v is None else v for v in value] if isinstance(value, list) else value
    return arms


# --------------------------------------------------------------------------- validation split


def stratified_holdout(targets: tuple, fraction: float, seed: int) -> list[int]:
    """A seeded hold-out of about `fraction` of each class (at least one sample per class), sorted."""
    rng = np.random.default_rng(seed)
    by_class: dict = {}
    for i, t in enumerate(targets):
        by_class.setdefault(t if isinstance(t, int) else (t[0] if t else -1), []).append(i)
    picked: list[int] = []
    for c in sorted(by_class):
        idx = rng.permutation(by_class[c])
        picked.extend(int(i) for i in idx[:max(1, round(len(idx) * fraction))])
    return sorted(picked)


def validation_data(ref: DatasetRef, eval_split: str, fraction: float, seed: int,
                    limit: int | None) -> tuple[SplitData, str] | None:
    """The dataset's val split, else a seeded stratified hold-out of train; never the evaluated split.

    Splits are read by the dataset's own source (a plain folder's `train/` is class names, not ELEVATER
    ids); None when there is neither, as after the default `bench datasets prepare` (test only).
    """
    if (ref.folder / "val").is_dir() and eval_split != "val":
        name, data, source = "val", sources.load(ref, "val"), "val"
    elif (ref.folder / "train").is_dir():
        train = sources.load(ref, "train")
        name, source = "train", f"train hold-out ({fraction:.0%}, seed {seed})"
        data = train.subset(stratified_holdout(train.targets, fraction, seed))
    else:
        return None
    if name == eval_split:
        raise BenchError(f"greedy selection would choose templates on the evaluated split '{eval_split}'; "
                         "evaluate on test or pass --no-greedy")
    if limit is not None and limit < len(data):
        data = data.subset(stratified_limit(data.targets, limit))
    return data, source


# --------------------------------------------------------------------------- the studies


def prompts_study(st: Study, spec: ModelSpec, ref: DatasetRef, *, greedy: bool = True, val_fraction: float = 0.2,
                  seed: int = 0, max_templates: int | None = None) -> dict:
    """Every template alone, their distribution, the ensemble, and greedy selection (val → test)."""
    t0 = time.perf_counter()
    ps = st.prompt_set(spec, ref=ref)
    templates = list(ps.templates_for(ref.spec.name))
    labels = st.labels(spec, ref, st.opts.labels)
    test = st.test_split(spec, ref)
    per_prompt = st.weights(spec, ps, ref.spec.name, labels)
    metric = ref.spec.metric
    singles = compute.per_template(test.features, per_prompt, test.targets, metric, st.scoring)
    primaries = [s["primary"] for s in singles]
    rk = compute.ranks(primaries)
    ensemble = compute.evaluate(test.features, per_prompt, test.targets, metric, st.scoring)
    picks = compute.best_median_worst(templates, primaries)
    ens_logits = compute.ensemble_logits(test.features, per_prompt)
    single_logits = compute.template_logits(test.features, per_prompt)
    for v in picks.values():  # a template against the ensemble, paired on the same images
        v["paired"] = compute.paired(np.ascontiguousarray(single_logits[:, :, v["index"]]), ens_logits, test.targets,
                                     metric)
    result_greedy = None
    found = validation_data(ref, st.opts.split, val_fraction, seed, st.opts.limit) if greedy else None
    greedy_note = None
    if greedy and (found is None or len(templates) < 2):
        greedy_note = (f"greedy selection skipped: {ref.spec.name} has no val or train split to select on"
                       if found is None else "greedy selection skipped: the set has one template")
        log.info("%s", greedy_note)
    elif greedy:
        val_data, source = found
        val = st.split(spec, val_data, ref)  # selection sees only this split's labels
        sel = compute.greedy_select(val.features, per_prompt, val.targets, metric, max_templates)
        idx = sel["selected"]
        test_m = compute.evaluate(test.features, per_prompt[:, idx], test.targets, metric, st.scoring)
        result_greedy = {"selected": [templates[i] for i in idx], "selected_indices": idx,
                         "val_primary": sel["val_primary"], "test_primary": test_m["primary"],
                         "test_top1": test_m["top1"], "val_source": source, "n_val": len(val.targets),
                         "seed": seed, "trace": [{**s, "template": templates[s["index"]]} for s in sel["trace"]],
                         "val_images_encoded": val.n_encoded}
    result = {
        **st.header("study-prompts", spec, ref, test, t0, ps, prompts=ps.name, labels=labels.description),
        "n_templates": len(templates),
        "templates": [{"template": t, "primary": s["primary"], "top1": s["top1"], "rank": r}
                      for t, s, r in zip(templates, singles, rk)],
        "ensemble": {"primary": ensemble["primary"], "top1": ensemble["top1"]},
        "summary": compute.distribution(primaries),
        **{k: {"template": v["template"], "primary": v["primary"],
               "ensemble_minus": ensemble["primary"] - v["primary"], "vs_ensemble": v["paired"]}
           for k, v in picks.items()},
        "greedy": result_greedy,
        "greedy_skipped": greedy_note,
    }
    result["timings"]["total_s"] = round(time.perf_counter() - t0, 3)
    return result


def sets_study(st: Study, spec: ModelSpec, ref: DatasetRef, sets: list[str]) -> dict:
    """Each prompt set's ensemble on the same features, deltas against the first set, and their union."""
    t0 = time.perf_counter()
    if len(sets) < 2:
        raise BenchError("bench study sets needs two or more sets (--sets A B ...)")
    labels = st.labels(spec, ref, st.opts.labels)
    test = st.test_split(spec, ref)
    rows, union_cols, seen, sets_loaded, logits = [], [], set(), [], []
    for name in sets:
        ps = st.prompt_set(spec, name, ref=ref)
        sets_loaded.append(ps)
        templates = ps.templates_for(ref.spec.name)
        per_prompt = st.weights(spec, ps, ref.spec.name, labels)
        m = compute.evaluate(test.features, per_prompt, test.targets, ref.spec.metric, st.scoring)
        logits.append(compute.ensemble_logits(test.features, per_prompt))
        rows.append({"name": ps.name, "path": ps.path, "n_templates": len(templates), "primary": m["primary"],
                     "top1": m["top1"]})
        for i, t in enumerate(templates):
            if t not in seen:  # a template shared by two sets counts once in the union
                seen.add(t)
                union_cols.append(per_prompt[:, i])
    for r, lg in zip(rows, logits):
        r["delta"] = r["primary"] - rows[0]["primary"]
        # paired on the same images: is the difference from the first set real? (docs/analysis.md)
        r["paired"] = compute.paired(lg, logits[0], test.targets, ref.spec.metric) if r is not rows[0] else None
    union_w = torch.stack(union_cols, dim=1)
    union = compute.evaluate(test.features, union_w, test.targets, ref.spec.metric, st.scoring)
    result = {
        **st.header("study-sets", spec, ref, test, t0, sets_loaded[0], labels=labels.description),
        "sets": rows, "baseline_set": rows[0]["name"],
        "union": {"n_templates": len(union_cols), "primary": union["primary"], "top1": union["top1"],
                  "delta": union["primary"] - rows[0]["primary"],
                  "paired": compute.paired(compute.ensemble_logits(test.features, union_w), logits[0], test.targets,
                                           ref.spec.metric)},
    }
    result["timings"]["total_s"] = round(time.perf_counter() - t0, 3)
    return result


def default_variants(spec: ModelSpec, st: Study, ref: DatasetRef) -> list[str | None]:
    """The default labels and every named variant of the dataset's label file."""
    path = label_file(st.runner.language(spec), ref.spec.name)
    return [None] + (list(parse_label_file(path)[1]) if path.is_file() else [])


def single_label_setup(st: Study, spec: ModelSpec, ref: DatasetRef, study: str) -> tuple[PromptSet, Split]:
    if ref.spec.multilabel:
        raise BenchError(f"{ref.spec.name} is multi-label; the {study} study needs single-label classes")
    return st.prompt_set(spec, ref=ref), st.test_split(spec, ref)


def labels_result(st: Study, spec: ModelSpec, ref: DatasetRef, ps: PromptSet, test: Split,
                  arg: str | None) -> tuple[Labels, dict, dict, np.ndarray]:
    """(labels, metrics, per-class recall + confusion, logits) of the classifier built from one label choice."""
    labels = st.labels(spec, ref, arg)
    per_prompt = st.weights(spec, ps, ref.spec.name, labels)
    m = compute.evaluate(test.features, per_prompt, test.targets, ref.spec.metric, st.scoring)
    rep = compute.class_report(compute.predictions(test.features, per_prompt), test.targets, ref.spec.num_classes)
    return labels, m, rep, compute.ensemble_logits(test.features, per_prompt)


def negation_study(st: Study, spec: ModelSpec, ref: DatasetRef, *, variants: list[str] | None = None,
                   probe: bool = True, probe_mode: str = "add", negation: str | None = None) -> dict:
    """Label variants side by side (primary, top1, per-class recall, confusion), and the negation probe."""
    t0 = time.perf_counter()
    ps, test = single_label_setup(st, spec, ref, "negation")
    rows = []
    for v in (variants or default_variants(spec, st, ref)):
        labels, m, rep, _ = labels_result(st, spec, ref, ps, test, v)
        rows.append({"name": v or "default", "source": labels.description, "labels": list(labels.names),
                     "labels_with_unknown_tokens": st.unknown(spec, labels),
                     "primary": m["primary"], "top1": m["top1"], **rep})
    result = {**st.header("study-negation", spec, ref, test, t0, ps, prompts=ps.name), "variants": rows}
    if probe:
        result["probe"] = negation_probe(st, spec, ref, ps, test, probe_mode, negation)
    result["timings"]["total_s"] = round(time.perf_counter() - t0, 3)
    return result


def negation_probe(st: Study, spec: ModelSpec, ref: DatasetRef, ps: PromptSet, test: Split, mode: str,
                   negation: str | None) -> dict:
    """For each class X, put "no X" among the classes and count images of X that pick it.

    mode "add": "no X" is an extra class C; mode "replace": it takes the place of class (X + 1) mod C.
    """
    language = st.runner.language(spec)
    fmt = negation or NEGATION_FORMATS[language]
    if "{}" not in fmt:
        raise BenchError(f"--negation {fmt!r} must contain {{}} where the class name goes (e.g. 'no {{}}')")
    base = st.labels(spec, ref, st.opts.labels)
    n_cls = len(base.names)
    neg_names = tuple(fmt.format(x) for x in base.names)
    base_w = st.weights(spec, ps, ref.spec.name, base)
    neg_w = st.weights(spec, ps, ref.spec.name, neg_names)  # all negations in one text pass
    preds, where = {}, {}
    for x in range(n_cls):
        if mode == "add":
            w, where[x] = torch.cat([base_w, neg_w[x:x + 1]]), n_cls
        else:
            where[x] = (x + 1) % n_cls
            w = base_w.clone()
            w[where[x]] = neg_w[x]
        preds[x] = compute.predictions(test.features, w)
    rates = compute.negation_rates(preds, test.targets, where)
    for row in rates["classes"]:
        row["class"] = base.names[row["index"]]
        row["negation"] = neg_names[row["index"]]
        if mode == "replace":
            row["replaced"] = base.names[where[row["index"]]]
    return {"mode": mode, "format": fmt, "labels": base.description, **rates}


def labels_study(st: Study, spec: ModelSpec, ref: DatasetRef, *, variant: str, baseline: str | None = None,
                 top: int = 10) -> dict:
    """A label variant against the baseline labels: primary and per-class accuracy deltas, top movers."""
    t0 = time.perf_counter()
    ps, test = single_label_setup(st, spec, ref, "label")
    out, logits = {}, {}
    for role, arg in (("baseline", baseline), ("variant", variant)):
        labels, m, rep, logits[role] = labels_result(st, spec, ref, ps, test, arg)
        out[role] = {"labels": labels, "metrics": m, **rep}
    b, v = out["baseline"], out["variant"]
    deltas = compute.label_deltas(list(b["labels"].names), list(v["labels"].names), b["per_class_recall"],
                                  v["per_class_recall"], top)
    result = {
        **st.header("study-labels", spec, ref, test, t0, ps, prompts=ps.name),
        "baseline": b["labels"].description, "variant": v["labels"].description,
        "labels_with_unknown_tokens": {role: st.unknown(spec, out[role]["labels"]) for role in out},
        "primary": {"baseline": b["metrics"]["primary"], "variant": v["metrics"]["primary"],
                    "delta": v["metrics"]["primary"] - b["metrics"]["primary"]},
        "top1": {"baseline": b["metrics"]["top1"], "variant": v["metrics"]["top1"],
                 "delta": v["metrics"]["top1"] - b["metrics"]["top1"]},
        "paired": compute.paired(logits["variant"], logits["baseline"], test.targets, ref.spec.metric),
        **deltas,
    }
    result["timings"]["total_s"] = round(time.perf_counter() - t0, 3)
    return result


# How the knowledge study appends a label file's definition or a description to a rendered template:
# ELEVATER's separator for English (without its NLTK re-tokenisation), its Chinese punctuation for zh.
KNOWLEDGE_SEPARATORS = {"en": " ; {label} , ", "zh": "；{label}，"}


def plain_rows(ps: PromptSet, dataset: str, labels: Labels) -> list[list[str]]:
    """Every class's rendered templates that use no per-class field (the plain-templates arm)."""
    from bench.prompts import render, template_fields

    compiled = [(src, t) for src, t in ps.compiled(dataset) if not template_fields(src)]
    if not compiled:
        raise BenchError(f"prompt set '{ps.name}' ({ps.path}) has no plain template (one with only {{{{ label }}}}) "
                         f"for {dataset}: the knowledge study compares against plain templates; pick another --prompts")
    return [[render(t, name, f"{ps.path}: template {src!r}") for src, t in compiled] for name in labels.names]


def appended(rows: list[list[str]], labels: Labels, texts_of, sep: str) -> tuple[list[list[str]], int]:
    """Each class's templates once per knowledge text (template + separator + text), ELEVATER's layout; a
    class without texts keeps its plain templates. Returns the rows and how many classes had texts."""
    out, n = [], 0
    for c, (row, name) in enumerate(zip(rows, labels.names)):
        texts = texts_of(labels.fields[c] if c < len(labels.fields) else {})
        n += bool(texts)
        out.append([r + sep.format(label=name) + k for k in texts for r in row] if texts else list(row))
    return out, n


def knowledge_study(st: Study, spec: ModelSpec, ref: DatasetRef, *, cupl: str | None = None,
                    knowledge=None, top: int = 10) -> dict:
    """Plain templates vs + definitions vs + descriptions (label-file fields) vs a CuPL file vs ELEVATER
    knowledge vs the union of them all, on the same cached image features; per-class gains against plain
    and paired tests (McNemar, paired bootstrap) on top-1."""
    from bench import stats
    from bench.classprompts import load_class_prompts, match_class_prompts
    from bench.knowledge import load_knowledge
    from bench.prompts import PromptSet as PS
    from bench.runner import elevater_id

    t0 = time.perf_counter()
    ps = st.prompt_set(spec, ref=ref)
    labels = st.labels(spec, ref, st.opts.labels)
    test = st.test_split(spec, ref)
    dataset, language = ref.spec.name, st.runner.language(spec)
    base = plain_rows(ps, dataset, labels)
    sep = KNOWLEDGE_SEPARATORS[language]
    arms: dict[str, list[list[str]]] = {"plain": base}
    notes: dict[str, str] = {}
    coverage: dict[str, int] = {"plain": len(base)}
    for arm, get_texts in (("definitions", lambda f: [f["definition"]] if f.get("definition") else []),
                           ("descriptions", lambda f: list(f.get("descriptions", ())))):
        rows, n = appended(base, labels, get_texts, sep)
        if n:
            arms[arm], coverage[arm] = rows, n
        else:
            notes[arm] = f"skipped: no class of {labels.description} has {arm} (see docs/knowledge.md)"
    if cupl:
        cp = PS(name=Path(cupl).stem, language=language, path=str(cupl), class_prompts=load_class_prompts(Path(cupl)),
                class_prompts_path=str(cupl))
        arms["cupl"], coverage["cupl"] = [list(r) for r in match_class_prompts(cp, labels)], len(base)
    else:
        notes["cupl"] = "skipped: no --cupl FILE"
    know_record = None
    if knowledge is not None:
        know = load_knowledge(knowledge, elevater_id(dataset))
        arms["elevater"], know_record = know.augment(base, labels.names)
        coverage["elevater"] = sum(a != b for a, b in zip(arms["elevater"], base))
    if len(arms) > 2:
        union = [list(dict.fromkeys(p for rows in arms.values() for p in rows[c])) for c in range(len(base))]
        arms["union"], coverage["union"] = union, len(base)
    single = not ref.spec.multilabel
    rows_out, correct = [], {}
    for arm, rows in arms.items():
        per_prompt = st.runner.row_weights(st.runner.backend(spec), rows)
        m = compute.evaluate(test.features, per_prompt, test.targets, ref.spec.metric, st.scoring)
        row = {"arm": arm, "primary": m["primary"], "top1": m["top1"], "classes_with_text": coverage[arm],
               "n_prompts": sum(len(r) for r in rows)}
        if single:
            preds = compute.predictions(test.features, per_prompt)
            row.update(compute.class_report(preds, test.targets, ref.spec.num_classes))
            del row["confusion"]
            correct[arm] = preds == test.targets
        rows_out.append(row)
    plain = rows_out[0]
    for row in rows_out:
        row["delta"] = row["primary"] - plain["primary"]
        if single and row["arm"] != "plain":
            row["mcnemar"] = stats.mcnemar(correct[row["arm"]], correct["plain"])
            row["paired_bootstrap"] = stats.paired_bootstrap(correct[row["arm"]], correct["plain"])
            gains = [{"index": i, "class": labels.names[i], "plain": b, "arm": v,
                      "delta": None if b is None or v is None else v - b}
                     for i, (b, v) in enumerate(zip(plain["per_class_recall"], row["per_class_recall"]))]
            moved = sorted((g for g in gains if g["delta"]), key=lambda g: -abs(g["delta"]))
            row["per_class_gain"] = gains
            row["helped"] = [g["class"] for g in gains if (g["delta"] or 0) > 0]
            row["hurt"] = [g["class"] for g in gains if (g["delta"] or 0) < 0]
            row["top_movers"] = moved[:top]
    result = {
        **st.header("study-knowledge", spec, ref, test, t0, ps, prompts=ps.name, labels=labels.description),
        "arms": rows_out, "skipped": notes, "baseline": "plain",
        "separator": sep, "cupl": {"path": str(cupl), "sha256": file_sha256(Path(cupl))} if cupl else None,
        "knowledge": know_record,
        "significance": "McNemar and paired bootstrap of top-1, each arm against plain, on the same images"
                        if single else "not computed (multi-label)",
    }
    result["timings"]["total_s"] = round(time.perf_counter() - t0, 3)
    return result


STUDIES = {"prompts": prompts_study, "sets": sets_study, "negation": negation_study, "labels": labels_study,
           "knowledge": knowledge_study}


# --------------------------------------------------------------------------- across models × datasets


def prompts_overall(results: list[dict]) -> dict:
    """Templates ranked over datasets (per model), and rank agreement across datasets and across models.

    Only results that share the exact template list are compared.
    """
    by_model: dict[str, dict[str, list[float]]] = {}
    by_dataset: dict[str, dict[str, list[float]]] = {}
    templates_of: dict[tuple, list[str]] = {}
    for r in results:
        ts = [t["template"] for t in r["templates"]]
        templates_of[(r["model"], r["dataset"])] = ts
        by_model.setdefault(r["model"], {})[r["dataset"]] = [t["primary"] for t in r["templates"]]
        by_dataset.setdefault(r["dataset"], {})[r["model"]] = [t["primary"] for t in r["templates"]]
    overall, across_datasets, across_models = {}, {}, {}
    for model, per_ds in by_model.items():
        first = next(iter(per_ds))
        same = {d: v for d, v in per_ds.items() if templates_of[(model, d)] == templates_of[(model, first)]}
        overall[model] = {"datasets": sorted(same),
                          "templates": compute.overall_ranking(templates_of[(model, first)], same)}
        if len(same) > 1:
            across_datasets[model] = compute.rank_agreement(same)
    for dataset, per_model in by_dataset.items():
        first = next(iter(per_model))
        same = {m: v for m, v in per_model.items() if templates_of[(m, dataset)] == templates_of[(first, dataset)]}
        if len(same) > 1:
            across_models[dataset] = compute.rank_agreement(same)
    return {"task": "study-prompts-overall", "models": sorted(by_model), "datasets": sorted(by_dataset),
            "overall": overall, "agreement": {"datasets": across_datasets, "models": across_models}}


def run_study(kind: str, model_names: list[str], dataset_names: list[str], opts: RunOptions, **kwargs) -> list[dict]:
    """Resolve names first (fail fast), then run the study for each model × dataset and write its JSON."""
    if kind not in STUDIES:
        raise BenchError(f"unknown study '{kind}'; available: {', '.join(STUDIES)}")
    models = [resolve_model(m) for m in model_names]
    refs, missing = resolve_datasets(dataset_names, opts.data_root, protocol=load_protocol(opts.protocol))
    for note in missing:
        log.warning("skipping %s", note)
    if not refs:
        raise BenchError(f"no datasets to study under {opts.data_root}")
    check_writable(opts.out, "output directory")
    st = Study(opts)
    results = []
    for spec in models:
        for ref in refs:
            result = STUDIES[kind](st, spec, ref, **kwargs)
            st.write(result, study_arms(kind, kwargs))
            results.append(result)
    if kind == "prompts":
        atomic_write_json(opts.out / "study-prompts-overall.json", prompts_overall(results))
    return results
