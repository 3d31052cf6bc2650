"""ELEVATER's knowledge-augmented prompts, read from a user's clone of their knowledge folder.

The ELEVATER toolkit (Elevater_Toolkit_IC, ``vision_benchmark/evaluation/feature.py``,
``extract_text_features``) keeps, per dataset id, ``external/<id>_knowledge.tsv`` (a JSON list of
``{classname, def_wiki, def_wn, path_wn}``) and ``gpt3/GPT3_<id>.tsv`` (a JSON list of
``{classname, gpt3: [5 texts]}``), and builds each class's prompts as follows; bench reproduces it:

- at most one external field is used (their flags override one another: ``path_wn`` over ``def_wn``
  over ``def_wiki``); a class absent from the file gets no external knowledge (counted in the result);
  ``path_wn`` is the first three hypernyms joined by spaces;
- GPT-3: the first ``gpt3_items`` texts (their ``NUM_GPT3_ITEMS``, default 1, at most 5); with
  aggregation ``and`` (``WIKI_AND_GPT3``, their default) after the external text, with ``then``
  (``WIKI_THEN_GPT3``) only for a class that got no external text;
- every knowledge text ``k`` becomes ``" " + " ".join(nltk.word_tokenize(f" ; {classname} , {k}"))``
  (a null text becomes ``" "``), appended to every rendered template: the class's prompts are
  ``[template + k for k in knowledge for template in templates]``, or the plain templates when it has none.

``classname`` is the run's class name (the label), which is also the key looked up in the files.
We do not ship their text: ``--knowledge DIR`` points at the user's copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.errors import BenchError

log = logging.getLogger(__name__)

EXTERNAL = ("def_wiki", "def_wn", "path_wn")  # in ELEVATER's override order: a later one wins
USES = (*EXTERNAL, "gpt3")
AGGREGATIONS = {"and": "WIKI_AND_GPT3", "then": "WIKI_THEN_GPT3"}
MAX_GPT3_ITEMS = 5
# Where the knowledge folder sits inside a clone of the toolkit, tried in order under --knowledge DIR.
LAYOUTS = ("", "knowledge", "resources/knowledge", "vision_benchmark/resources/knowledge")


@dataclass(frozen=True)
class KnowledgeConfig:
    root: Path
    use: tuple[str, ...] = ("def_wiki", "gpt3")
    gpt3_items: int = 1
    aggregation: str = "and"

    def check(self) -> None:
        bad = [u for u in self.use if u not in USES]
        if bad or not self.use:
            raise BenchError(f"--knowledge-use {','.join(self.use)}: choose from {', '.join(USES)} (comma-separated)")
        if sum(u in EXTERNAL for u in self.use) > 1:
            raise BenchError(f"--knowledge-use {','.join(self.use)}: ELEVATER uses one external field at a time "
                             f"({', '.join(EXTERNAL)}); pick one (plus gpt3)")
        if not 1 <= self.gpt3_items <= MAX_GPT3_ITEMS:
            raise BenchError(f"--gpt3-items must be 1 to {MAX_GPT3_ITEMS} (ELEVATER's range), got {self.gpt3_items}")
        if self.aggregation not in AGGREGATIONS:
            raise BenchError(f"--knowledge-aggregation must be one of {', '.join(AGGREGATIONS)}, "
                             f"got {self.aggregation!r}")

    @property
    def label(self) -> str:
        """Short name of the recipe for result identities: ``def_wiki+gpt3x1`` (``then`` noted)."""
        parts = [u if u != "gpt3" else f"gpt3x{self.gpt3_items}" for u in self.use]
        return "+".join(parts) + ("-then" if self.aggregation == "then" and "gpt3" in self.use else "")


def knowledge_root(root: Path) -> Path:
    """The folder holding ``external/`` and ``gpt3/``: DIR itself or its place in a toolkit clone."""
    root = Path(root).expanduser()
    for sub in LAYOUTS:
        cand = root / sub if sub else root
        if (cand / "external").is_dir() or (cand / "gpt3").is_dir():
            return cand
    raise BenchError(f"--knowledge {root}: no external/ or gpt3/ folder there (nor under "
                     f"{', '.join(s for s in LAYOUTS if s)}); point it at a clone of the ELEVATER toolkit "
                     "(Elevater_Toolkit_IC) or its resources/knowledge folder")


def files_for(cfg: KnowledgeConfig, dataset_id: str) -> dict[str, Path]:
    """{"external": path, "gpt3": path} for the fields in use; missing files are errors naming them."""
    root = knowledge_root(cfg.root)
    want = {}
    if any(u in EXTERNAL for u in cfg.use):
        want["external"] = root / "external" / f"{dataset_id}_knowledge.tsv"
    if "gpt3" in cfg.use:
        want["gpt3"] = root / "gpt3" / f"GPT3_{dataset_id}.tsv"
    missing = [str(p) for p in want.values() if not p.is_file()]
    if missing:
        raise BenchError(f"no ELEVATER knowledge for dataset id '{dataset_id}': {', '.join(missing)} not found; "
                         "that dataset is not covered, or drop the field from --knowledge-use")
    return want


def _read_list(path: Path) -> list[dict]:
    """Their .tsv files are JSON lists of records."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchError(f"{path}: cannot read file ({exc})") from None
    except json.JSONDecodeError as exc:
        raise BenchError(f"{path}:{exc.lineno}: not ELEVATER's knowledge format (a JSON list of records): "
                         f"{exc.msg}") from None
    if not isinstance(data, list) or not all(isinstance(r, dict) and "classname" in r for r in data):
        raise BenchError(f"{path}: not ELEVATER's knowledge format: expected a JSON list of records with 'classname'")
    return data


def read_external(path: Path, fld: str) -> dict[str, object]:
    """classname → the field's knowledge text (their ``wiki_dict``); ``path_wn`` is its first three
    hypernyms joined by spaces."""
    out: dict[str, object] = {}
    for rec in _read_list(path):
        if fld not in rec:
            raise BenchError(f"{path}: record for {rec['classname']!r} has no '{fld}' field")
        value = rec[fld]
        if fld == "path_wn":
            if not isinstance(value, list) or not value:
                # ELEVATER's own code fails on this record (it appends the empty list to a string)
                raise BenchError(f"{path}: class {rec['classname']!r} has no WordNet path; ELEVATER's toolkit "
                                 "cannot use path_wn for this dataset either: pick def_wiki or def_wn")
            value = " ".join(value[:3])
        out[str(rec["classname"])] = value
    return out


def read_gpt3(path: Path) -> dict[str, list]:
    out: dict[str, list] = {}
    for rec in _read_list(path):
        if not isinstance(rec.get("gpt3"), list):
            raise BenchError(f"{path}: record for {rec['classname']!r} has no 'gpt3' list")
        out[str(rec["classname"])] = rec["gpt3"]
    return out


def nltk_tokenize() -> Callable[[str], list[str]]:
    """ELEVATER's tokenizer, ``nltk.word_tokenize`` (it needs NLTK's punkt_tab data)."""
    try:
        import nltk
    except ImportError:
        raise BenchError("--knowledge reproduces ELEVATER's prompts, which pass each knowledge text through "
                         "nltk.word_tokenize: pip install nltk, then python -m nltk.downloader punkt_tab") from None
    try:
        nltk.word_tokenize("a test.")
    except LookupError:
        raise BenchError("nltk is installed but its punkt_tab data is missing (ELEVATER's nltk.word_tokenize "
                         "needs it): python -m nltk.downloader punkt_tab") from None
    return nltk.word_tokenize


def knowledge_suffix(classname: str, text: object, tokenize: Callable[[str], list[str]]) -> str:
    """ELEVATER's rule for one knowledge text: ``" ; {classname} , " + text``, word-tokenized and
    re-joined with spaces after one leading space; a null text gives ``" "``."""
    joined = f" ; {classname} , " + text if text is not None else ""
    return " " + " ".join(tokenize(joined))


@dataclass(frozen=True)
class Knowledge:
    """Knowledge texts per class name, read for one dataset."""

    cfg: KnowledgeConfig
    dataset_id: str
    files: dict[str, Path]
    external: dict[str, object]
    gpt3: dict[str, list]

    def items(self, classname: str) -> tuple[list[object], list[object]]:
        """The class's (external, GPT-3) knowledge texts; prompts use them in that order."""
        ext: list[object] = []
        if self.files.get("external") is not None and classname in self.external:
            ext.append(self.external[classname])
        gpt: list[object] = []
        if "gpt3" in self.cfg.use:
            if classname not in self.gpt3:
                raise BenchError(f"{self.files['gpt3']}: no GPT-3 knowledge for class {classname!r} (ELEVATER's "
                                 "toolkit stops on this too); the knowledge is looked up by the run's class names: "
                                 "use labels spelled as in the file")
            if self.cfg.aggregation == "and" or not ext:
                gpt = list(self.gpt3[classname][:self.cfg.gpt3_items])
        return ext, gpt

    def augment(self, rows: list[list[str]], names: tuple[str, ...],
                tokenize: Callable[[str], list[str]] | None = None) -> tuple[list[list[str]], dict]:
        """Every class's prompts with its knowledge appended, and a record of what was used."""
        tok = tokenize or nltk_tokenize()
        out, covered = [], {"external": 0, "gpt3": 0}
        without = []
        for row, name in zip(rows, names):
            ext, gpt = self.items(name)
            covered["external"] += bool(ext)
            covered["gpt3"] += bool(gpt)
            if self.files.get("external") is not None and not ext:
                without.append(name)
            suffixes = [knowledge_suffix(name, k, tok) for k in ext + gpt]
            out.append([r + s for s in suffixes for r in row] if suffixes else list(row))
        if without:
            log.warning("ELEVATER knowledge %s: %d of %d classes are not in %s and get no external knowledge "
                        "(as in ELEVATER): %s", self.dataset_id, len(without), len(names), self.files["external"],
                        ", ".join(map(repr, without[:5])) + (" …" if len(without) > 5 else ""))
        return out, {**self.record(), "classes_with": covered, "classes_without_external": without}

    def record(self) -> dict:
        """What the result records: the recipe and each file with its content hash."""
        return {"root": str(self.cfg.root), "dataset_id": self.dataset_id, "use": list(self.cfg.use),
                "gpt3_items": self.cfg.gpt3_items if "gpt3" in self.cfg.use else None,
                "aggregation": AGGREGATIONS[self.cfg.aggregation], "label": self.cfg.label,
                "files": {k: {"path": str(p), "sha256": _sha(p)} for k, p in self.files.items()},
                "rule": 'template + " " + " ".join(nltk.word_tokenize(" ; {classname} , " + knowledge))'}


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_knowledge(cfg: KnowledgeConfig, dataset_id: str) -> Knowledge:
    """The knowledge of one dataset (ELEVATER id) under ``cfg.root``."""
    cfg.check()
    files = files_for(cfg, dataset_id)
    ext_field = [u for u in EXTERNAL if u in cfg.use]
    external = read_external(files["external"], ext_field[-1]) if ext_field else {}
    gpt3 = read_gpt3(files["gpt3"]) if "gpt3" in files else {}
    return Knowledge(cfg, dataset_id, files, external, gpt3)
