"""CLI pieces shared by `bench run` and the extension commands (study, prompts eval)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.errors import BenchError


def examples(*lines: str) -> dict:
    """`add_parser` keyword arguments for an 'examples:' epilog, one command line per line.

    RawDescriptionHelpFormatter keeps the lines as written: the default formatter would wrap them into one
    paragraph that cannot be copied. tests/test_help.py parses every line with the real parser.
    """
    body = "".join(f"  {line}\n" for line in lines)
    return {"epilog": f"examples:\n{body}", "formatter_class": argparse.RawDescriptionHelpFormatter}


def add_protocol_args(p: argparse.ArgumentParser) -> None:
    """--protocol and --precision (see docs/protocols.md)."""
    p.add_argument("--protocol", default="bench", help="evaluation protocol (`bench protocols list`; default: bench)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="auto: the protocol's, else fp32 on CPU and bf16/fp16 autocast on GPU")


def add_encoding_args(p: argparse.ArgumentParser) -> None:
    """The image-encoding flags every command that encodes images takes."""
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None, help="image decoding processes (default: cores - 1)")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="torch.compile the image tower: auto = when the encoding left would take over two minutes "
                        "on CPU with oneDNN's linears (one with aten's, 5 on GPU) eagerly, never on a CPU without "
                        "AVX-512 (no gain measured there); building costs tens of seconds once per model, and the "
                        "tower is stored for later runs")
    p.add_argument("--cpu-gemm", choices=["auto", "onednn", "aten"], default="auto",
                   help="eager CPU linear layers: onednn (1.6-1.9x faster than aten's MKL sgemm on AMD CPUs with "
                        "AVX-512, same fp32 results to rounding), aten (PyTorch's own, as other tools run), or "
                        "auto (default: onednn on AMD with AVX-512, else aten)")
    p.add_argument("--decode", choices=["cpu", "device"], default="cpu",
                   help="where JPEGs are decoded and resized: cpu (PIL in the workers, as other tools do) or "
                        "device (decode_jpeg and the resize batched on the --device, e.g. nvJPEG on a GPU; "
                        "pixels differ from PIL's by rounding, so its features and results are kept apart)")


def encoding_options(args) -> dict:
    """RunOptions fields from add_encoding_args' flags (and --limit), checked."""
    if args.batch_size < 1:
        raise BenchError("--batch-size must be at least 1")
    if getattr(args, "limit", None) is not None and args.limit < 1:
        raise BenchError("--limit must be at least 1")
    return {"batch_size": args.batch_size, "workers": args.workers, "compile": args.compile,
            "cpu_gemm": args.cpu_gemm, "decode": args.decode}


def split_multi(values: list[str]) -> list[str]:
    """`--model "a b" --model c` → [a, b, c]; a value that can be a path is kept whole.

    A value may be a path when it exists or has a path separator, so a folder or model
    YAML whose path has spaces is one value (issue 15); only plain names are split on whitespace.
    """
    out: list[str] = []
    for value in values:
        could_be_path = "/" in value or "\\" in value or Path(value).expanduser().exists()
        out.extend([value] if could_be_path else value.split())
    return out


def add_knowledge_args(p: argparse.ArgumentParser) -> None:
    """ELEVATER's knowledge-augmented prompts (bench.knowledge)."""
    g = p.add_argument_group("ELEVATER knowledge (docs/knowledge.md)")
    g.add_argument("--knowledge", type=Path, default=None, metavar="DIR",
                   help="a clone of the ELEVATER toolkit (or its resources/knowledge folder): append its "
                        "per-class knowledge to every prompt, by ELEVATER's rule")
    g.add_argument("--knowledge-use", default="def_wiki,gpt3",
                   help="comma-separated: one of def_wiki, def_wn, path_wn, and/or gpt3 (default: def_wiki,gpt3)")
    g.add_argument("--gpt3-items", type=int, default=1, help="GPT-3 texts per class, 1 to 5 (ELEVATER's default 1)")
    g.add_argument("--knowledge-aggregation", choices=["and", "then"], default="and",
                   help="and: external text and GPT-3 texts (WIKI_AND_GPT3, default); then: GPT-3 only for classes "
                        "without external text (WIKI_THEN_GPT3)")


def knowledge_options(args) -> dict:
    """RunOptions fields from add_knowledge_args' flags, checked (before any work)."""
    from bench.knowledge import KnowledgeConfig, knowledge_root

    use = tuple(u.strip() for u in args.knowledge_use.split(",") if u.strip())
    cfg = KnowledgeConfig(args.knowledge or Path("."), use, args.gpt3_items, args.knowledge_aggregation)
    if args.knowledge is not None:
        cfg.check()
        knowledge_root(args.knowledge)
    return {"knowledge": args.knowledge, "knowledge_use": use, "gpt3_items": args.gpt3_items,
            "knowledge_aggregation": args.knowledge_aggregation}
