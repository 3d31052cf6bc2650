"""`bench prompts eval`: accuracy of a prompt set and of each of its templates, against a baseline set.

Image features come from the feature cache (encoded once per model × dataset × split, by the same
code path as `bench run`); only text is encoded here, so trying a new set costs seconds.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from bench import protocols
from bench.cache import atomic_write_json, check_writable
from bench.errors import BenchError
from bench.experiment import experiment, result_stem, update_index
from bench.labels import Labels, resolve_labels
from bench.models import resolve_model
from bench.prompts import PromptSet, load_prompt_set, template_fields
from bench.runner import Runner, RunOptions, load_data, protocol_prompt_set, resolve_datasets, target_array
from bench.studies.compute import Scoring
from bench.validation import require_valid
from bench.zeroshot import class_embeddings, scores

TASK = "prompts-eval"


def _summary(metrics: dict) -> dict:
    return {"primary": metrics["primary"], "top1": metrics["top1"], "metrics": metrics}


def evaluate_prompt_set(model: str, dataset: str, prompts: str, opts: RunOptions, baseline: str | None = None,
                        labels: str | None = None) -> dict:
    """Result dict (task `prompts-eval`): the set's ensemble, each template alone, and the baseline set."""
    spec = resolve_model(model)
    refs, _ = resolve_datasets([dataset], opts.data_root, protocol=protocols.load_protocol(opts.protocol))
    if len(refs) != 1:
        raise BenchError(f"--dataset must name one dataset, got '{dataset}'")
    ref = refs[0]
    runner = Runner(opts)  # checks --protocol and --precision first
    ps = load_prompt_set(prompts)
    base_protocol = runner.protocol if baseline is None else None
    if baseline is not None and baseline.startswith(protocols.REF_PREFIX):  # e.g. protocol:cn-clip
        base_protocol = protocols.load_protocol(baseline[len(protocols.REF_PREFIX):])
        base = protocol_prompt_set(base_protocol, spec, ref=ref)
    else:  # the protocol's templates (bench: the model's default set)
        base = load_prompt_set(baseline) if baseline else runner.prompt_set(spec, ref)
    # a protocol's published list keeps its repeats (they weigh twice in the original mean): a warning there
    keeps = base_protocol is not None and base_protocol.duplicate_templates == "keep"
    for s, allow in ((ps, False), (base, keeps)):
        s.templates_for(ref.spec.name)  # fail on a missing per-dataset list before encoding anything
        # what lint calls an error is never evaluated
        require_valid(s, allow_duplicates=allow, datasets=(ref.spec.name,), summarise=s.name_source == "protocol")
    sources = ps.templates_for(ref.spec.name)
    if not sources or ps.class_prompts or any(template_fields(t) for t in sources):
        # template i is column i only for plain templates rendered once per class
        raise BenchError(f"prompt set '{ps.name}' ({ps.path}) has per-class prompts (CuPL lists or label-file "
                         "fields), which `bench prompts eval` cannot score template by template; use "
                         "`bench run --prompts` for its score, or `bench study knowledge` to compare it with plain templates")
    t0 = time.perf_counter()
    data = load_data(ref, opts.split, opts.limit)
    backend = runner.backend(spec, ref.spec.name)
    scoring = Scoring(runner.protocol.scores, runner.protocol.metric_implementation)
    feats = runner.image_features(backend, data)
    targets = target_array(data, feats.indices)
    label_cache: dict[str, Labels] = {}

    def labels_for(s: PromptSet) -> Labels:
        # Each set is read with class names in its own language: an English set gets English labels.
        if s.language not in label_cache:
            arg = labels if labels is not None else runner.labels_arg(ref.spec, s.language)
            label_cache[s.language] = resolve_labels(arg, ref.spec, s.language, data,
                                                     duplicates=runner.protocol.duplicate_labels)
        return label_cache[s.language]

    def evaluate(per_prompt: torch.Tensor) -> dict:
        logits = scores(feats.features, class_embeddings(per_prompt)).numpy()
        return scoring.metrics(logits, targets, ref.spec.metric)

    per_prompt = runner.class_weights(backend, ps, ref.spec.name, labels_for(ps))
    ensemble = evaluate(per_prompt)
    sources = ps.templates_for(ref.spec.name)
    key = ("per_dataset", ref.spec.name) if ref.spec.name in ps.per_dataset else ("templates",)
    templates = []
    for i, src in enumerate(sources):
        m = evaluate(per_prompt[:, i:i + 1])
        templates.append({"index": i, "line": ps.lines.get((*key, i)), "template": src,
                          "primary": m["primary"], "top1": m["top1"]})
    base_metrics = evaluate(runner.class_weights(backend, base, ref.spec.name, labels_for(base)))
    t1 = time.perf_counter()
    primaries = np.asarray([t["primary"] for t in templates])
    best = max(templates, key=lambda t: t["primary"])
    worst = min(templates, key=lambda t: t["primary"])
    return {
        "model": spec.name,
        "dataset": ref.spec.name,
        "split": data.split,
        "task": TASK,
        "protocol": runner.protocol.name, "precision": runner.precision, "scores": runner.protocol.scores,
        "metrics_implementation": runner.protocol.metric_implementation,
        "language": ps.language,
        "prompts": ps.name,
        "prompts_path": ps.path,
        "labels": labels_for(ps).description,
        "n_samples": int(feats.indices.numel()),
        "n_classes": ref.spec.num_classes,
        "metric": ref.spec.metric,
        "n_templates": len(templates),
        "ensemble": _summary(ensemble),
        "metrics": ensemble,
        "templates": templates,
        "summary": {"min": float(primaries.min()), "median": float(np.median(primaries)),
                    "max": float(primaries.max()), "std": float(primaries.std())},
        "best": {"template": best["template"], "primary": best["primary"]},
        "worst": {"template": worst["template"], "primary": worst["primary"]},
        "baseline": {"prompts": base.name, "path": base.path, "language": base.language,
                     "labels": labels_for(base).description, "n_templates": len(base.templates_for(ref.spec.name)),
                     **_summary(base_metrics)},
        "delta": {"primary": ensemble["primary"] - base_metrics["primary"],
                  "top1": None if None in (ensemble["top1"], base_metrics["top1"])
                  else ensemble["top1"] - base_metrics["top1"]},  # absent on multi-label sets under vision-evaluation
        "limit": opts.limit,
        "cache": {"image_features": feats.key, "images_encoded": feats.n_encoded},
        "timings": {"image_features_s": round(feats.seconds, 3), "text_and_scoring_s": round(t1 - t0 - feats.seconds, 3),
                    "total_s": round(t1 - t0, 3)},
        "manifest": runner.manifest(backend, data, ps),
    }


def write_result(result: dict, opts: RunOptions, prompts: str, baseline: str | None = None) -> Path:
    """``prompts-eval@prompts=SET[,...].json``: named by the set evaluated, its baseline and every setting that
    differs from the default experiment (bench.experiment), so evaluating another set, on another split or
    subset, never replaces this one's result; ``index.json`` maps names to settings."""
    folder = Path(opts.out) / result["model"] / result["dataset"]
    check_writable(folder, "output directory")
    arms = {"prompts": prompts, **({"baseline": baseline} if baseline is not None else {})}
    result["experiment"] = ident = experiment(result, opts, arms)
    name = result_stem(ident) + ".json"
    atomic_write_json(folder / name, result)
    update_index(folder, name, ident)
    return folder / name


def format_result(result: dict, width: int = 60) -> str:
    """Per-template table (best first), then the set's ensemble and the baseline."""
    metric = result["metric"]

    def short(text: str) -> str:
        return text if len(text) <= width else text[: width - 1] + "…"

    def pct(x: float | None, fmt: str = ".1f") -> str:
        return "—" if x is None else f"{100 * x:{fmt}}"  # top-1 is absent on multi-label sets under ELEVATER's metrics

    rows = [("#", "template", metric, "top-1")]
    for t in sorted(result["templates"], key=lambda t: -t["primary"]):
        rows.append((str(t["index"] + 1), short(t["template"]), pct(t["primary"]), pct(t["top1"])))
    ens, base = result["ensemble"], result["baseline"]
    rows.append(("", f"ensemble: {result['prompts']} ({result['n_templates']} templates)",
                 pct(ens["primary"]), pct(ens["top1"])))
    rows.append(("", f"baseline: {base['prompts']} ({base['n_templates']} templates)",
                 pct(base["primary"]), pct(base["top1"])))
    d = result["delta"]
    rows.append(("", "delta (set - baseline)", pct(d["primary"], "+.1f"), pct(d["top1"], "+.1f")))
    widths = [max(_width(r[i]) for r in rows) for i in range(4)]
    lines = []
    for j, r in enumerate(rows):
        cells = [r[0].rjust(widths[0]), r[1] + " " * (widths[1] - _width(r[1])), r[2].rjust(widths[2]),
                 r[3].rjust(widths[3])]
        lines.append("  ".join(cells))
        if j == 0 or j == len(rows) - 4:
            lines.append("  ".join("-" * w for w in widths))
    head = (f"{result['model']} · {result['dataset']}/{result['split']} · {result['n_samples']} images · "
            f"labels {result['labels']}" + (f" · protocol {result['protocol']}" if result.get("protocol", "bench") != "bench"
                                             else ""))
    return head + "\n" + "\n".join(lines)


def _width(text: str) -> int:
    """Display width: CJK characters take two columns in a terminal."""
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)
