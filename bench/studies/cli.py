"""`bench study prompts|sets|negation|labels`: flags → a study plan; the work is in bench.studies.study."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.cli_common import (
    add_encoding_args,
    add_knowledge_args,
    add_protocol_args,
    encoding_options,
    examples,
    knowledge_options,
    split_multi,
)
from bench.errors import BenchError

# Each study's own --help shows its lines; `bench study --help` shows them all.
EXAMPLES: dict[str, tuple[str, ...]] = {
    "prompts": (
        "bench study prompts --model demo --dataset digits",
        "bench study prompts --model vit-h14 --model vit-l14 --dataset cifar-10 --dataset dtd --data-root ~/elevater",
        "bench study prompts --model openai/vit-b16 --dataset cifar-10 --protocol elevater  # scored as ELEVATER scores",
    ),
    "sets": (
        "bench study sets --model demo --dataset digits --sets demo-zh simple-zh",
        "bench study sets --model vit-h14 --dataset all --sets openai-zh elevater-zh",
        "bench study sets --model vit-b16 --dataset food-101 --sets openai-zh protocol:cn-clip",
    ),
    "negation": (
        "bench study negation --model demo --dataset digits --probe-mode replace",
        "bench study negation --model vit-h14 --dataset kitti-distance   # default vs other-not-negation + probe",
    ),
    "labels": (
        "bench study labels --model demo --dataset digits --variant overlapping   # names that share a class word",
        "bench study labels --model demo --dataset digits --variant numerals      # digits the demo cannot read: [UNK]",
        "bench study labels --model vit-b16 --dataset imagenet-1k --variant protocol:cn-clip  # ours vs its label_cn.txt",
    ),
    "knowledge": (
        "bench study knowledge --model demo --dataset digits",
        "bench study knowledge --model demo --dataset digits --labels my-digits.yaml --cupl cupl.json",
    ),
}


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", required=True, help="model name, alias or YAML path; repeatable")
    p.add_argument("--dataset", action="append", required=True, help="dataset name, 'all' or folder; repeatable")
    p.add_argument("--data-root", type=Path, default=None, help="datasets folder (default: $BENCH_DATA, else data/)")
    p.add_argument("--cache-dir", type=Path, default=None, help="feature cache (default: $BENCH_CACHE, else ~/.cache/bench)")
    p.add_argument("--split", default="test")
    p.add_argument("--prompts", default=None, help="prompt set name or YAML file (default: the model's language)")
    p.add_argument("--labels", default=None, help="baseline labels: variant name, label YAML file, or 'dataset'")
    p.add_argument("--language", choices=["en", "zh"], default=None)
    p.add_argument("--out", type=Path, default=Path("results/runs"), help="results folder (default: results/runs)")
    p.add_argument("--device", default="auto")
    add_encoding_args(p)
    p.add_argument("--limit", type=int, default=None, help="at most N images per split (stratified)")
    p.add_argument("--skip-bad-images", action="store_true")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    add_protocol_args(p)


def register_cli(subparsers) -> None:
    study = subparsers.add_parser("study", help="prompt, prompt-set, negation, label-variant and knowledge studies",
                                  **examples(*(line for lines in EXAMPLES.values() for line in lines)))
    sub = study.add_subparsers(dest="study", required=True, metavar="STUDY")

    p = sub.add_parser("prompts", help="every template alone, the ensemble, greedy selection on val",
                       **examples(*EXAMPLES["prompts"]))
    _common(p)
    p.add_argument("--greedy", action=argparse.BooleanOptionalAction, default=True,
                   help="greedy forward template selection on a validation split (default: on)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="hold-out of train used for selection when the dataset has no val split (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train hold-out (default 0)")
    p.add_argument("--max-templates", type=int, default=None, help="stop greedy selection at N templates")
    p.set_defaults(func=cmd_study, kind="prompts")

    p = sub.add_parser("sets", help="two or more prompt sets on the same features, and their union",
                       **examples(*EXAMPLES["sets"]))
    _common(p)
    p.add_argument("--sets", nargs="+", required=True, help="prompt set names or YAML files (first = baseline)")
    p.set_defaults(func=cmd_study, kind="sets")

    p = sub.add_parser("negation", help="negated class names vs alternatives, and the negation probe",
                       **examples(*EXAMPLES["negation"]))
    _common(p)
    p.add_argument("--variant", action="append", default=None,
                   help="label variant name or YAML file to compare ('default' = the shipped labels); "
                        "repeatable (default: the default labels and every variant of the label file)")
    p.add_argument("--probe", action=argparse.BooleanOptionalAction, default=True,
                   help="measure how often images of X pick 'no X' (default: on)")
    p.add_argument("--probe-mode", choices=["add", "replace"], default="add",
                   help="'no X' as an extra class, or in place of class X+1")
    p.add_argument("--negation", default=None, help="negation format with {} for the class (default: 没有{} / no {})")
    p.set_defaults(func=cmd_study, kind="negation")

    p = sub.add_parser("labels", help="a label variant vs the baseline labels, per class",
                       **examples(*EXAMPLES["labels"]))
    _common(p)
    p.add_argument("--variant", required=True, help="label variant name or label YAML file")
    p.add_argument("--top", type=int, default=10, help="top movers to list (default 10)")
    p.set_defaults(func=cmd_study, kind="labels")

    p = sub.add_parser("knowledge", help="plain templates vs + definitions vs + descriptions vs CuPL vs ELEVATER "
                       "knowledge vs their union, per class", **examples(*EXAMPLES["knowledge"]))
    _common(p)
    p.add_argument("--cupl", default=None, help="a CuPL prompt file ({class name: [prompts]}, .json or .yaml)")
    add_knowledge_args(p)
    p.add_argument("--top", type=int, default=10, help="classes that moved most to list per arm (default 10)")
    p.set_defaults(func=cmd_study, kind="knowledge")


def study_kwargs(args) -> dict:
    """Study-specific keyword arguments, checked."""
    if args.kind == "prompts":
        if not 0 < args.val_fraction < 1:
            raise BenchError(f"--val-fraction must be between 0 and 1, got {args.val_fraction}")
        if args.max_templates is not None and args.max_templates < 1:
            raise BenchError("--max-templates must be at least 1")
        return {"greedy": args.greedy, "val_fraction": args.val_fraction, "seed": args.seed,
                "max_templates": args.max_templates}
    if args.kind == "sets":
        return {"sets": args.sets}
    if args.kind == "negation":
        variants = None if args.variant is None else [None if v == "default" else v for v in args.variant]
        return {"variants": variants, "probe": args.probe, "probe_mode": args.probe_mode, "negation": args.negation}
    if args.kind == "knowledge":
        from bench.knowledge import KnowledgeConfig

        k = knowledge_options(args)
        cfg = None if k["knowledge"] is None else KnowledgeConfig(k["knowledge"], k["knowledge_use"], k["gpt3_items"],
                                                                  k["knowledge_aggregation"])
        return {"cupl": args.cupl, "knowledge": cfg, "top": args.top}
    return {"variant": args.variant, "baseline": args.labels, "top": args.top}


def cmd_study(args) -> int:
    from bench.paths import default_cache_dir, default_data_root
    from bench.runner import RunOptions
    from bench.studies.study import run_study

    encoding = encoding_options(args)
    kwargs = study_kwargs(args)
    opts = RunOptions(
        out=args.out, cache_dir=args.cache_dir or default_cache_dir(), data_root=args.data_root or default_data_root(),
        split=args.split, prompts=args.prompts, labels=args.labels, language=args.language, device=args.device,
        protocol=args.protocol, precision=args.precision, **encoding, limit=args.limit, skip_bad_images=args.skip_bad_images,
        progress=sys.stderr.isatty() if args.progress is None else args.progress)
    results = run_study(args.kind, split_multi(args.model), split_multi(args.dataset), opts, **kwargs)
    for r in results:
        print(SUMMARIES[args.kind](r))
    print(f"results written under {args.out}/")
    return 0


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _summary_prompts(r: dict) -> str:
    s, g = r["summary"], r["greedy"]
    line = (f"{r['model']} · {r['dataset']} · {r['prompts']} ({r['n_templates']} templates): "
            f"ensemble {_pct(r['ensemble']['primary'])}  single min {_pct(s['min'])} median {_pct(s['median'])} "
            f"max {_pct(s['max'])} (std {_pct(s['std'])})  best: {r['best']['template']!r}")
    if g:
        line += f"\n  greedy ({len(g['selected'])} templates, on {g['val_source']}): val {_pct(g['val_primary'])} " \
                f"test {_pct(g['test_primary'])}"
    return line


def _summary_sets(r: dict) -> str:
    parts = [f"{s['name']} {_pct(s['primary'])} ({100 * s['delta']:+.1f})" for s in r["sets"]]
    return f"{r['model']} · {r['dataset']}: " + "  ".join(parts) + \
        f"  union({r['union']['n_templates']}) {_pct(r['union']['primary'])}"


def _summary_negation(r: dict) -> str:
    parts = [f"{v['name']} {_pct(v['primary'])}" for v in r["variants"]]
    line = f"{r['model']} · {r['dataset']}: " + "  ".join(parts)
    if r.get("probe"):
        line += f"  negation rate ({r['probe']['mode']}) {_pct(r['probe']['overall_rate'])}"
    return line


def _summary_labels(r: dict) -> str:
    p = r["primary"]
    return (f"{r['model']} · {r['dataset']}: {r['variant']} {_pct(p['variant'])} vs {_pct(p['baseline'])} "
            f"({100 * p['delta']:+.1f}); helped {len(r['helped'])} classes, hurt {len(r['hurt'])}")


def _summary_knowledge(r: dict) -> str:
    parts = [f"{a['arm']} {_pct(a['primary'])}" + ("" if a["arm"] == "plain" else f" ({100 * a['delta']:+.1f})")
             for a in r["arms"]]
    return f"{r['model']} · {r['dataset']}: " + "  ".join(parts)


SUMMARIES = {"prompts": _summary_prompts, "sets": _summary_sets, "negation": _summary_negation,
             "labels": _summary_labels, "knowledge": _summary_knowledge}
