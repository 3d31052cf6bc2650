"""Command line: turns flags into a plan for the runner; errors are one line, exit code 2."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from bench import __version__
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
from bench.paths import default_cache_dir, default_data_root

log = logging.getLogger("bench")

# Feature modules that add their own subcommands: each has `register_cli(subparsers)`.
EXTENSIONS: tuple[str, ...] = (
    "bench.datasets.commands",
    "bench.studies.cli",
    "bench.authoring.cli",
    "bench.export",
)

RUN_EXAMPLES = (
    "bench run --model demo --dataset digits",
    "bench run --model vit-h14 --dataset all --data-root ~/elevater",
    "bench run --model openai/vit-l14 --dataset cifar-10 --prompts simple-en --save-predictions",
    "bench run --model my-model.yaml --dataset ./data/kitti-distance --labels other-not-negation",
    "bench run --model demo --dataset digits-retrieval --task retrieval",
    "bench run --model vit-h14 --dataset muge --dataset flickr30k-cn --task retrieval --data-root ~/cn-clip-data",
)


def _add_common_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", type=Path, default=None,
                   help="folder holding the datasets (default: $BENCH_DATA, else data/)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="feature cache (default: $BENCH_CACHE, else ~/.cache/bench)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench", description="Zero-shot image classification benchmarks for CLIP-family models, in Chinese "
        "and English. Every command's --help ends with examples.",
        **examples("bench datasets prepare digits                  # a tiny offline dataset for the demo model",
                   "bench run --model demo --dataset digits",
                   "bench study prompts --model demo --dataset digits",
                   "bench report results/runs --out results/report",
                   "bench models list"))
    parser.add_argument("--version", action="version", version=f"bench {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="evaluate models on datasets", **examples(*RUN_EXAMPLES))
    run.add_argument("--model", action="append", required=True,
                     help="registry name, alias (vit-h14) or model YAML path; repeatable (names may also be space-separated)")
    run.add_argument("--dataset", action="append", required=True,
                     help="registry name, 'all', or a dataset folder path; repeatable")
    run.add_argument("--task", default="zeroshot", choices=["zeroshot", "linear-probe", "retrieval", "all"],
                     help="zeroshot and linear-probe run on classification sets, retrieval on retrieval sets; "
                          "all: every task that fits each dataset")
    _add_common_data(run)
    run.add_argument("--split", default="test")
    run.add_argument("--prompts", default=None, help="prompt set name, YAML file, or CuPL file "
                     "({class: [prompts]}, .json or .yaml); default: the model's language")
    run.add_argument("--labels", default=None, help="label variant name, label YAML file, or 'dataset'")
    add_knowledge_args(run)
    run.add_argument("--language", choices=["en", "zh"], default=None,
                     help="evaluate in this language instead of the model's own")
    run.add_argument("--out", type=Path, default=Path("results/runs"), help="results folder (default: results/runs)")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add_protocol_args(run)
    add_encoding_args(run)
    run.add_argument("--save-predictions", action="store_true", help="also write zeroshot.predictions.csv")
    run.add_argument("--save-logits", action="store_true",
                     help="also write <result>.logits.npz: the scores the metrics saw, targets, image paths "
                          "(input of `bench export elevater-submission`)")
    run.add_argument("--limit", type=int, default=None, help="evaluate at most N images per dataset (stratified)")
    run.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                     help="bootstrap resamples for the 95%% confidence intervals (ci95) of zero-shot metrics; "
                          "0 disables (default: 1000)")
    run.add_argument("--skip-bad-images", action="store_true",
                     help="skip unreadable images (their count is recorded) instead of failing")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bars (default: on when stderr is a terminal)")
    probe = run.add_argument_group("linear probe and few-shot (--task linear-probe|all)")
    probe.add_argument("--probe-impl", choices=["auto", "torch", "sklearn"], default="auto",
                       help="torch (full-batch L-BFGS, CPU/GPU) or the scikit-learn reference (default: auto = torch)")
    probe.add_argument("--probe-init", choices=["zero", "zeroshot"], default="zero",
                       help="start the head at zero or at the zero-shot classifier (ELEVATER's option)")
    shots = probe.add_mutually_exclusive_group()
    shots.add_argument("--shots", type=_int_list, default=None,
                       help="few-shot k per class, comma-separated (default: 1,2,4,8,16; 0 or '' for none)")
    shots.add_argument("--elevater-shots", action="store_true", help="ELEVATER's few-shot settings: 5,20,50")
    probe.add_argument("--seeds", type=_int_list, default=(0, 1, 2),
                       help="few-shot sampling seeds, comma-separated (default: 0,1,2)")
    run.set_defaults(func=cmd_run)

    models = sub.add_parser("models", help="the model registry", **examples("bench models list"))
    msub = models.add_subparsers(dest="action", required=True)
    ml = msub.add_parser("list", help="list registered models",
                         **examples("bench models list", "bench models list --json   # every field, for scripts"))
    ml.add_argument("--json", action="store_true")
    ml.set_defaults(func=cmd_models_list)

    protos = sub.add_parser("protocols", help="the protocol registry (published evaluation protocols)",
                            **examples("bench protocols list"))
    psub = protos.add_subparsers(dest="action", required=True)
    pl = psub.add_parser("list", help="list registered protocols",
                         **examples("bench protocols list", "bench protocols list --json   # every field"))
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(func=cmd_protocols_list)

    report = sub.add_parser("report", help="HTML + Markdown report from result JSON", **examples(
        "bench report                                   # results/runs -> results/report (md and html)",
        "bench report results/runs results/runs-my-zh --out results/report",
        "bench report results/runs --format csv --out results/table   # results/table/results.csv"))
    report.add_argument("runs", nargs="*", type=Path, default=[Path("results/runs")])
    report.add_argument("--out", type=Path, default=Path("results/report"))
    report.add_argument("--format", choices=["md", "html", "both", "csv", "parquet"], default="both",
                        help="md, html or both (the report); csv or parquet: results.<format>, one row per "
                             "result × metric (as `bench export csv`)")
    report.add_argument("--published", type=Path, default=None,
                        help="folder of published reference CSVs (default: results/published in the repo)")
    report.set_defaults(func=cmd_report)

    import importlib

    for module in EXTENSIONS:
        importlib.import_module(module).register_cli(sub)
    return parser


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got '{text}'")
    return values


def cmd_run(args) -> int:
    from bench.distributed import is_main_process
    from bench.runner import RunOptions, run

    encoding = encoding_options(args)
    tasks = ("zeroshot", "linear_probe", "retrieval") if args.task == "all" else (args.task.replace("-", "_"),)
    opts = RunOptions(
        out=args.out, cache_dir=args.cache_dir or default_cache_dir(), data_root=args.data_root or default_data_root(),
        split=args.split, prompts=args.prompts, labels=args.labels, language=args.language, device=args.device,
        **encoding, save_predictions=args.save_predictions, save_logits=args.save_logits, limit=args.limit,
        skip_bad_images=args.skip_bad_images, probe_impl=args.probe_impl, probe_init=args.probe_init,
        shots=_shots(args), seeds=args.seeds, protocol=args.protocol, precision=args.precision,
        bootstrap=_bootstrap(args), **knowledge_options(args),
        progress=sys.stderr.isatty() if args.progress is None else args.progress)
    results = run(split_multi(args.model), split_multi(args.dataset), opts, tasks)
    if not is_main_process():
        return 0  # torchrun: rank 0 prints and writes
    print(format_table(results))
    print(f"results written under {args.out}/")
    return 0


def _bootstrap(args) -> int:
    if args.bootstrap < 0:
        raise BenchError(f"--bootstrap {args.bootstrap}: the number of resamples must be 0 (no intervals) or more")
    return args.bootstrap


def _shots(args) -> tuple[int, ...]:
    from bench.probe import DEFAULT_SHOTS, ELEVATER_SHOTS

    if args.elevater_shots:
        return ELEVATER_SHOTS
    shots = DEFAULT_SHOTS if args.shots is None else tuple(k for k in args.shots if k > 0)
    if shots and not args.seeds:
        raise BenchError("--seeds is empty: few-shot probes need at least one seed (or pass --shots 0)")
    return shots


def format_table(results: list[dict]) -> str:
    rows = [("model", "dataset", "task", "n", "metric", "primary", "top-1")]
    for r in results:
        m = r["metrics"]
        rows.append((r["model"], r["dataset"], r["task"], str(r["n_samples"]), r["metric"],
                     f"{100 * m['primary']:.1f}", f"{100 * m['top1']:.1f}" if m.get("top1") is not None else "—"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < 5 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cmd_models_list(args) -> int:
    from bench.models import list_models, model_aliases

    models = list_models()
    aliases = model_aliases()
    if args.json:
        print(json.dumps([{"name": m.name, "backend": m.backend, "model": m.model, "pretrained": m.pretrained,
                           "language": m.language, "preprocess": m.preprocess,
                           "aliases": sorted(a for a, t in aliases.items() if t == m.name)} for m in models],
                         indent=2, ensure_ascii=False))
        return 0
    for m in models:
        alias = ", ".join(sorted(a for a, t in aliases.items() if t == m.name))
        weights = f"{m.model}" + (f" ({m.pretrained})" if m.pretrained else "")
        print(f"{m.name:22} {m.backend:13} {m.language}  {weights}" + (f"  [alias: {alias}]" if alias else ""))
    return 0


def cmd_protocols_list(args) -> int:
    import dataclasses

    from bench.protocols import RUNNABLE, list_protocols

    protos = list_protocols()
    if args.json:
        rows = [{**{k: v for k, v in dataclasses.asdict(p).items() if k != "path"}, "runnable": p.name in RUNNABLE}
                for p in protos]
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    for p in protos:
        state = "" if p.name in RUNNABLE else "  [registered, not runnable yet]"
        print(f"{p.name:10} {p.precision:5} {p.scores:10} {p.metric_implementation:14} {p.description}{state}")
    return 0


def cmd_report(args) -> int:
    from bench.report import build_report

    if args.format in ("csv", "parquet"):
        from bench.export import result_rows, write_table

        rows = result_rows(args.runs)
        if not rows:
            raise BenchError(f"no result with metrics under {', '.join(map(str, args.runs))}")
        print(f"wrote {write_table(rows, args.out / f'results.{args.format}', args.format)} ({len(rows)} rows)")
        return 0
    paths = build_report(args.runs, args.out, args.format, published_dir=args.published)
    for p in paths:
        print(f"wrote {p}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "huggingface_hub", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
