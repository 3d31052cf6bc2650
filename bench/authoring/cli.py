"""CLI: `bench prompts new|lint|eval` and `bench labels lint`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.cli_common import add_encoding_args, add_protocol_args, encoding_options, examples
from bench.errors import BenchError
from bench.paths import default_cache_dir, default_data_root

# Each action's --help shows its own lines; `bench prompts --help` and `bench labels --help` show them all.
PROMPTS_EXAMPLES: dict[str, tuple[str, ...]] = {
    "new": ("bench prompts new my-zh --language zh --from openai-zh   # writes prompts/my-zh.yaml",
            "bench prompts new my-en --language en --out my-prompts/"),
    "lint": ("bench prompts lint prompts/my-zh.yaml --model vit-b16 --dataset cifar-100",
             "bench prompts lint demo-zh --model demo --dataset digits"),
    "eval": ("bench prompts eval prompts/my-zh.yaml --model demo --dataset digits --baseline demo-zh",
             "bench prompts eval simple-zh --model demo --dataset digits"),
}
LABELS_EXAMPLES: dict[str, tuple[str, ...]] = {
    "new": ("bench labels new digits --language zh --out my-labels/   # writes my-labels/digits.yaml",),
    "lint": ("bench labels lint label_translations/zh/kitti-distance.yaml",
             "bench labels lint --dataset cifar-100 --language zh --model vit-b16",
             "bench labels lint my-labels/digits.yaml --model demo --prompts my-descriptions.yaml"),
}


def _all(by_action: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    return tuple(line for lines in by_action.values() for line in lines)



def register_cli(sub) -> None:
    prompts = sub.add_parser("prompts", help="author prompt sets: new, lint, eval", **examples(*_all(PROMPTS_EXAMPLES)))
    psub = prompts.add_subparsers(dest="action", required=True)

    new = psub.add_parser("new", help="scaffold a documented prompt-set YAML file", **examples(*PROMPTS_EXAMPLES["new"]))
    new.add_argument("name", help="set name (the file is NAME.yaml)")
    new.add_argument("--language", required=True, choices=["en", "zh"])
    new.add_argument("--from", dest="source", default=None, help="start from this set's templates (name or file)")
    new.add_argument("--out", type=Path, default=Path("prompts"), help="folder to write into (default: prompts/)")
    new.set_defaults(func=cmd_prompts_new)

    lint = psub.add_parser("lint", help="check a prompt set (exit 1 on errors)", **examples(*PROMPTS_EXAMPLES["lint"]))
    lint.add_argument("file", nargs="+", help="prompt-set file(s) or shipped set name(s)")
    lint.add_argument("--model", default=None, help="also tokenize every prompt with this model's tokenizer")
    lint.add_argument("--dataset", action="append", default=[],
                      help="with --model: render shared templates with this dataset's labels (repeatable, 'all'); "
                           "per_dataset lists always use their own dataset's labels; default: a sample label")
    _add_device(lint)
    lint.set_defaults(func=cmd_prompts_lint)

    ev = psub.add_parser("eval", help="accuracy of a set and of each template vs a baseline set",
                         **examples(*PROMPTS_EXAMPLES["eval"]))
    ev.add_argument("prompts", help="prompt-set file or shipped set name")
    ev.add_argument("--model", required=True)
    ev.add_argument("--dataset", required=True)
    ev.add_argument("--split", default="test", choices=["test", "train"])
    ev.add_argument("--baseline", default=None, help="set to compare with (default: the model's default set)")
    ev.add_argument("--labels", default=None, help="label variant name, label YAML file, or 'dataset'")
    ev.add_argument("--data-root", type=Path, default=None, help="default: $BENCH_DATA, else data/")
    ev.add_argument("--cache-dir", type=Path, default=None, help="default: $BENCH_CACHE, else ~/.cache/bench")
    ev.add_argument("--out", type=Path, default=Path("results/runs"), help="results folder (default: results/runs)")
    ev.add_argument("--limit", type=int, default=None, help="at most N images (stratified), as in `bench run`")
    add_encoding_args(ev)
    add_protocol_args(ev)
    _add_device(ev, "auto")
    ev.set_defaults(func=cmd_prompts_eval)

    labels = sub.add_parser("labels", help="label translation files: new, lint", **examples(*_all(LABELS_EXAMPLES)))
    lsub = labels.add_subparsers(dest="action", required=True)
    ln = lsub.add_parser("new", help="scaffold a label file with per-class definition/descriptions stubs",
                         **examples(*LABELS_EXAMPLES["new"]))
    ln.add_argument("dataset", help="dataset name (its shipped labels, or the registry's English names, are copied)")
    ln.add_argument("--language", required=True, choices=["en", "zh"])
    ln.add_argument("--out", type=Path, default=Path("."), help="folder to write DATASET.yaml into (default: .)")
    ln.set_defaults(func=cmd_labels_new)
    ll = lsub.add_parser("lint", help="check a label file (exit 1 on errors)", **examples(*LABELS_EXAMPLES["lint"]))
    ll.add_argument("file", nargs="?", type=Path, default=None, help="label YAML file")
    ll.add_argument("--dataset", default=None, help="dataset the file is for (default: the file name); "
                    "without FILE: lint the shipped file for this dataset")
    ll.add_argument("--language", choices=["en", "zh"], default=None,
                    help="language of the file (default: its folder name); needed with --dataset alone")
    ll.add_argument("--model", default=None, help="also check names with this model's tokenizer ([UNK], length)")
    ll.add_argument("--prompts", default=None, help="with --model: check per-class fields rendered in this set's "
                    "templates that use them (context length)")
    _add_device(ll)
    ll.set_defaults(func=cmd_labels_lint)


def _add_device(p: argparse.ArgumentParser, default: str = "cpu") -> None:
    p.add_argument("--device", default=default, help=f"where to load --model (default: {default})")
    if "--cache-dir" not in p._option_string_actions:
        p.add_argument("--cache-dir", type=Path, default=None, help="default: $BENCH_CACHE, else ~/.cache/bench")


def _checker(args):
    """The model's backend, loaded only for its tokenizer (weights too: backends load both)."""
    if args.model is None:
        return None
    from bench.backends import load_backend
    from bench.models import resolve_model

    return load_backend(resolve_model(args.model), device=args.device, cache_dir=args.cache_dir or default_cache_dir())


def _report(findings) -> int:
    from bench.authoring.lint import ERROR, format_findings

    print(format_findings(findings))
    return 1 if any(f.level == ERROR for f in findings) else 0


def cmd_prompts_new(args) -> int:
    from bench.authoring.scaffold import new_prompt_set

    path = new_prompt_set(args.name, args.language, args.out, args.source)
    print(f"wrote {path}")
    print(f"next: edit it, then `bench prompts lint {path}` and "
          f"`bench prompts eval {path} --model MODEL --dataset DATASET`")
    return 0


def _prompt_file(arg: str) -> Path:
    from bench.paths import prompts_dir
    from bench.prompts import check_name, is_path_arg, list_prompt_sets
    from bench.registry import unknown

    if is_path_arg(arg) or Path(arg).is_file():
        return Path(arg)
    check_name(arg, "prompt set")
    path = prompts_dir() / f"{arg}.yaml"
    if not path.is_file():
        raise unknown("prompt set", arg, list_prompt_sets(),
                      hint="or pass a path to a prompt-set .yaml file (or a CuPL .json file)")
    return path


def cmd_prompts_lint(args) -> int:
    from bench.authoring.lint import lint_prompt_file
    from bench.datasets.registry import get_dataset, list_datasets

    datasets: list[str] = []
    for d in args.dataset:
        datasets += ([s.name for s in list_datasets()] if d == "all" else [get_dataset(d).name])
    if datasets and args.model is None:
        print("note: --dataset only matters with --model (it picks the labels prompts are tokenized with)",
              file=sys.stderr)
    files = [_prompt_file(f) for f in args.file]
    checker = _checker(args)
    findings = [f for path in files for f in lint_prompt_file(path, checker, tuple(datasets))]
    from bench.authoring.lint import sort_findings

    return _report(sort_findings(findings))


def cmd_labels_lint(args) -> int:
    from bench.authoring.lint import lint_label_file
    from bench.datasets.registry import get_dataset
    from bench.labels import label_file

    path = args.file
    if path is None:
        if args.dataset is None or args.language is None:
            raise BenchError("give a label FILE, or --dataset D --language L for the shipped file")
        path = label_file(args.language, get_dataset(args.dataset).name)
        if not path.is_file():
            raise BenchError(f"no {args.language} labels for {args.dataset}: {path} does not exist")
    elif args.dataset is not None:
        get_dataset(args.dataset)  # a typo is an error with suggestions, not a silent skip
    ps = None
    if args.prompts is not None:
        from bench.prompts import load_prompt_set

        ps = load_prompt_set(args.prompts)
    return _report(lint_label_file(path, args.dataset, _checker(args), args.language, ps))


def cmd_labels_new(args) -> int:
    from bench.authoring.scaffold import new_label_file

    path = new_label_file(args.dataset, args.language, args.out)
    print(f"wrote {path}")
    print(f"next: fill in definitions/descriptions, then `bench labels lint {path}` and "
          f"`bench study knowledge --model MODEL --dataset {args.dataset} --labels {path}`")
    return 0


def cmd_prompts_eval(args) -> int:
    from bench.authoring.evaluate import evaluate_prompt_set, format_result, write_result
    from bench.runner import RunOptions

    opts = RunOptions(out=args.out, cache_dir=args.cache_dir or default_cache_dir(),
                      data_root=args.data_root or default_data_root(), split=args.split,
                      labels=args.labels, device=args.device, protocol=args.protocol, precision=args.precision,
                      **encoding_options(args),
                      limit=args.limit, progress=sys.stderr.isatty())
    result = evaluate_prompt_set(args.model, args.dataset, args.prompts, opts, args.baseline, args.labels)
    path = write_result(result, opts, args.prompts, args.baseline)
    print(format_result(result))
    print(f"wrote {path}")
    return 0
