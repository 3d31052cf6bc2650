"""`bench datasets list|prepare|verify`: the dataset registry and the data under a data root."""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from pathlib import Path

import torch

from bench.cli_common import examples
from bench.datasets import sources, wds
from bench.datasets.base import SplitData, collate
from bench.datasets.registry import DatasetSpec, get_dataset, list_datasets
from bench.errors import BenchError
from bench.paths import default_data_root

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")

PREPARE_EXAMPLES = (
    "bench datasets prepare digits                        # generated offline from scikit-learn",
    "bench datasets prepare cifar-10                      # clip-benchmark/wds_vtab-cifar10 into the HF cache",
    "bench datasets prepare cifar-10 --copy datacomp      # DataComp's djghosh/wds_cifar10_test (--protocol datacomp)",
)

VERIFY_EXAMPLES = (
    "bench datasets verify kitti-distance --data-root ~/elevater",
    "bench datasets verify ./data/my-set --json",
)


def register_cli(sub) -> None:
    datasets = sub.add_parser("datasets", help="the dataset registry and local data", **examples(
        "bench datasets list", "bench datasets prepare digits", "bench datasets verify digits"))
    dsub = datasets.add_subparsers(dest="action", required=True)
    dl = dsub.add_parser("list", help="list registered datasets and where their data was found", **examples(
        "bench datasets list", "bench datasets list --data-root ~/elevater --json   # every field, for scripts"))
    dl.add_argument("--json", action="store_true")
    _data_root(dl)
    dl.set_defaults(func=cmd_list)
    dp = dsub.add_parser("prepare", help="generate (digits) or download (clip-benchmark or DataComp wds) a dataset",
                         **examples(*PREPARE_EXAMPLES))
    dp.add_argument("name")
    dp.add_argument("--split", action="append", default=None, help="splits to fetch (default: test); repeatable")
    dp.add_argument("--copy", choices=tuple(wds.COPIES), default="wds",
                    help="which webdataset copy: wds = clip-benchmark/wds_* (default), datacomp = DataComp's "
                         "djghosh/wds_*_test (test split only; what --protocol datacomp expects)")
    _data_root(dp)
    dp.set_defaults(func=cmd_prepare)
    dv = dsub.add_parser("verify", help="count samples per class and split, find unreadable images",
                         **examples(*VERIFY_EXAMPLES))
    dv.add_argument("name", help="registry name or dataset folder path")
    dv.add_argument("--split", action="append", default=None, help="splits to check (default: all present)")
    dv.add_argument("--workers", type=int, default=0, help="image decoding processes")
    dv.add_argument("--json", action="store_true")
    _data_root(dv)
    dv.set_defaults(func=cmd_verify)


def _data_root(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", type=Path, default=None,
                   help="folder holding the datasets (default: $BENCH_DATA, else data/)")
    p.add_argument("--cache-dir", type=Path, default=None, help=argparse.SUPPRESS)


def cmd_list(args) -> int:
    root = args.data_root or default_data_root()
    rows = []
    for s in list_datasets(task=None):
        ref = sources.locate(s, root)
        rows.append({"name": s.name, "title": s.title, "task": s.task, "classes": s.num_classes, "metric": s.metric,
                     "multilabel": s.multilabel, "splits": s.splits,
                     "test": s.splits.get(s.eval_split or "test"), "captions": s.captions,
                     "optional": s.optional, "demo": s.demo, "aliases": list(s.aliases), "sources": s.sources,
                     "present": ref is not None, "source": ref.source if ref else None,
                     "folder": str(ref.folder) if ref else None})
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    print(f"{'name':20} {'classes':>7}  {'metric':14} {'test':>6}  found under {root}")
    for r in rows:
        tag = " (optional)" if r["optional"] else " (demo)" if r["demo"] else ""
        tag += " (retrieval: images of its evaluation split)" if r["task"] == "retrieval" else ""
        found = f"{r['source']}: {r['folder']}" if r["present"] else "—"
        print(f"{r['name']:20} {r['classes']:>7}  {r['metric']:14} {r['test'] or '':>6}  {found}{tag}")
    return 0


def cmd_prepare(args) -> int:
    from bench.runner import GENERATORS

    spec = get_dataset(args.name)
    root = args.data_root or default_data_root()
    gen = spec.sources.get("generated")
    if gen in GENERATORS:
        folder = GENERATORS[gen](root / spec.folder_names[0])
        print(f"{spec.name}: ready in {folder}")
        return 0
    repo = wds.hub_repo(spec, args.copy)
    if repo is None and args.copy != "wds" and wds.hub_repo(spec) is not None:
        raise BenchError(f"{spec.name}: DataComp's evaluation has no copy of it (no `{args.copy}:` source in "
                         f"bench/registry/datasets/{spec.name}.yaml); `bench datasets prepare {spec.name}` fetches "
                         f"{wds.hub_repo(spec)}")
    if repo is None and spec.task == "retrieval":
        raise BenchError(f"{spec.name}: no downloadable source; put Chinese CLIP's released folder "
                         f"'{spec.folder_names[0]}' under {root} (layout: {spec.folder_names[0]}/<split>_imgs.tsv + "
                         f"<split>_texts.jsonl; see docs/retrieval.md)")
    if repo is None:
        other = next((c for c in wds.COPIES if c != args.copy and wds.hub_repo(spec, c)), None)
        raise BenchError(f"{spec.name}: no downloadable source; put Chinese CLIP's ELEVATER archive folder "
                         f"'{spec.folder_names[0]}' under {root} (layout: {spec.folder_names[0]}/test/<class id>/<image>)"
                         + (f", or fetch {wds.hub_repo(spec, other)} with --copy {other}" if other else ""))
    if args.copy == "datacomp" and set(args.split or ["test"]) != {"test"}:
        raise BenchError(f"{repo} holds the test split only (DataComp evaluates on test); drop --split")
    folder = download_wds(repo, tuple(args.split or ["test"]))
    print(f"{spec.name}: {repo} in the Hugging Face cache at {folder}; `bench run --dataset {spec.name}` finds it there")
    return 0


def download_wds(repo: str, splits: tuple[str, ...]) -> Path:
    """Fetch a clip-benchmark webdataset's metadata and split shards into the Hugging Face cache."""
    from huggingface_hub import constants, snapshot_download

    offline = (f"cannot download {repo}: no network access to the Hugging Face Hub; on a machine with access run "
               f"`bench datasets prepare` there and copy its Hugging Face cache, or put the wds folder under --data-root")
    if constants.HF_HUB_OFFLINE:
        raise BenchError(offline + " (HF_HUB_OFFLINE is set)")
    try:
        path = snapshot_download(repo, repo_type="dataset",
                                 allow_patterns=["*.txt", *(f"{s}/*" for s in splits)])
    except Exception as exc:  # noqa: BLE001 - network, auth and missing-repo failures all end here
        name = type(exc).__name__
        if name in ("RepositoryNotFoundError", "GatedRepoError", "RevisionNotFoundError"):
            raise BenchError(f"cannot download {repo}: {name}: {str(exc).splitlines()[0]}") from None
        raise BenchError(f"{offline} ({name})") from None
    return Path(path)


def _decode_ok(img) -> torch.Tensor:
    """Verification only needs the decode to succeed; keep nothing of the pixels."""
    return torch.zeros(0)


def verify_split(data: SplitData, workers: int = 0) -> dict:
    """Counts per class, unreadable images (every image is decoded) and the split's fingerprint."""
    counts = Counter(t for target in data.targets for t in ((target,) if isinstance(target, int) else target))
    loader = torch.utils.data.DataLoader(data.images(_decode_ok), batch_size=64, num_workers=workers,
                                         collate_fn=collate)
    unreadable = [err for _, _, errors in loader for _, err in errors]
    return {"split": data.split, "source": data.source, "n": len(data), "fingerprint": data.fingerprint,
            "expected": data.spec.splits.get(data.split),
            "per_class": {data.spec.classes[c]: counts.get(c, 0) for c in range(data.spec.num_classes)},
            "empty_classes": [data.spec.classes[c] for c in range(data.spec.num_classes) if not counts.get(c)],
            "unreadable": unreadable}


def _ref(name: str, root: Path) -> sources.DatasetRef:
    sources.check_not_rejected(name)
    path = Path(name)
    if path.is_dir() and ("/" in name or sources.detect(path)):
        return sources.ref_for_path(path)
    spec: DatasetSpec = get_dataset(name)
    ref = sources.locate(spec, root)
    if ref is None:
        raise BenchError(f"dataset {spec.name} not found under {root} (looked for "
                         f"{', '.join(sources.folder_names(spec))}) or in the Hugging Face cache")
    return ref


def cmd_verify(args) -> int:
    root = args.data_root or default_data_root()
    ref = _ref(args.name, root)
    if ref.spec.task == "retrieval":
        raise BenchError(f"{ref.spec.name}: `bench datasets verify` checks classification sets; a retrieval set is "
                         "validated (file and line of any bad entry) when `bench run --task retrieval` loads it")
    splits = args.split or [s for s in SPLITS if (ref.folder / s).is_dir()]
    reports = [verify_split(sources.load(ref, s), args.workers) for s in splits]
    problems = [f"{r['split']}: {len(r['unreadable'])} unreadable image(s), e.g. {r['unreadable'][0]}"
                for r in reports if r["unreadable"]]
    problems += [f"{r['split']}: no samples for {', '.join(r['empty_classes'][:5])}"
                 + (" …" if len(r["empty_classes"]) > 5 else "") for r in reports if r["empty_classes"]]
    notes = [f"{r['split']}: {r['n']} samples, registry says {r['expected']}"
             for r in reports if r["expected"] and r["expected"] != r["n"]]
    if args.json:
        print(json.dumps({"dataset": ref.spec.name, "folder": str(ref.folder), "source": ref.source,
                          "splits": reports, "problems": problems, "notes": notes}, indent=2, ensure_ascii=False))
    else:
        print(f"{ref.spec.name}: {ref.source} source at {ref.folder}")
        for r in reports:
            counts = r["per_class"].values()
            print(f"  {r['split']:5} {r['n']:>7} samples  {len(r['per_class'])} classes "
                  f"(min {min(counts)}, max {max(counts)} per class)  fingerprint {r['fingerprint'][:16]}")
        for line in notes:
            print(f"  note: {line}")
        for line in problems:
            print(f"  problem: {line}")
        print("ok" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0
