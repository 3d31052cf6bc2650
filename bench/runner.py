"""One runner over a plan: models × datasets → zero-shot results JSON (+ predictions CSV)."""

from __future__ import annotations

import csv
import io
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from bench import __version__, distributed, kernels, per_image, probe, protocols, stats
from bench.backends import load_backend
from bench.backends.base import Backend, resolve_device
from bench.cache import FeatureCache, TextCache, atomic_write_bytes, atomic_write_json, check_writable, content_key
from bench.datasets import sources
from bench.datasets.base import SplitData, stratified_limit
from bench.datasets.digits import prepare_digits
from bench.datasets.digits_retrieval import prepare_digits_retrieval
from bench.datasets.registry import DatasetSpec, get_dataset, list_datasets
from bench.datasets.retrieval import RetrievalSplit
from bench.datasets.sources import DatasetRef
from bench.errors import BenchError
from bench.experiment import experiment, logits_path, per_image_path, result_stem, update_index
from bench.features import ImageFeatures, feature_key, image_features, text_embeddings
from bench.knowledge import KnowledgeConfig, load_knowledge
from bench.labels import Labels, label_variants, resolve_labels
from bench.metrics import compute_metrics, unsupported
from bench.models import ModelSpec, resolve_model
from bench.prompts import ClassTexts, PromptSet, load_prompt_set
from bench.protocol_prompts import package_prompt_set, wds_prompt_set
from bench.retrieval import retrieval_metrics
from bench.validation import require_valid
from bench.zeroshot import LOGIT_SCALE, PerPrompt, class_embeddings, n_prompts, normalize, protocol_scores, scores

log = logging.getLogger(__name__)
# Sources that can be generated locally without network, by name.
GENERATORS = {"digits": prepare_digits, "digits-retrieval": prepare_digits_retrieval}
# What each task runs on (DatasetSpec.task); a task is skipped on datasets of the other kind.
TASK_KIND = {"zeroshot": "classification", "linear_probe": "classification", "retrieval": "retrieval"}
TEXT_CHUNK = 8192  # captions per text-cache entry: a killed run keeps the chunks it finished


@dataclass(frozen=True)
class RunOptions:
    out: Path
    cache_dir: Path
    data_root: Path = Path("data")
    split: str = "test"
    prompts: str | None = None
    labels: str | None = None
    language: str | None = None
    device: str = "auto"
    batch_size: int = 64
    workers: int | None = None
    save_predictions: bool = False
    save_logits: bool = False  # also write <result stem>.logits.npz: scores, targets, image paths
    limit: int | None = None
    skip_bad_images: bool = False
    progress: bool = True
    protocol: str = "bench"  # registered protocol (bench/registry/protocols/); see bench.protocols
    precision: str = "auto"  # auto (the protocol's, else fp32 on CPU / bf16|fp16 autocast on GPU) | fp32 | bf16 | fp16
    compile: str = "auto"  # torch.compile the image tower: auto (when it pays off) | on | off
    cpu_gemm: str = "auto"  # eager CPU linear kernels: auto | onednn | aten (bench.kernels)
    decode: str = "cpu"  # where JPEGs are decoded and resized: cpu (PIL, in workers) | device (bench.device_decode)
    bootstrap: int = 1000  # bootstrap resamples for the zero-shot metrics' 95% CIs (bench.stats); 0: none
    # ELEVATER knowledge (bench.knowledge): a clone of their knowledge folder, the fields used, GPT-3 texts per
    # class and how they combine with the external field; None: no knowledge
    knowledge: Path | None = None
    knowledge_use: tuple[str, ...] = ("def_wiki", "gpt3")
    gpt3_items: int = 1
    knowledge_aggregation: str = "and"
    shard_size: int | None = None  # images per cache shard (None: $BENCH_SHARD_SIZE, else 2048); torchrun's unit of work
    # linear probe / few-shot
    probe_impl: str = "auto"  # auto | torch | sklearn
    probe_init: str = "zero"  # zero | zeroshot
    shots: tuple[int, ...] = probe.DEFAULT_SHOTS
    seeds: tuple[int, ...] = (0, 1, 2)
    val_fraction: float = 0.2
    val_seed: int = 0


BOOTSTRAP_SEED = 0  # fixed: the same cached scores always give the same interval


def bootstrap_record(metric: str, n_boot: int) -> dict:
    """How a result's ``ci95`` was computed (beside it in the result JSON)."""
    ranking = metric in ("roc_auc", "11point_mAP")
    return {"resamples": n_boot, "primary_resamples": stats.ranking_resamples(n_boot) if ranking else n_boot,
            "seed": BOOTSTRAP_SEED, "level": 0.95, "interval": "percentile",
            "resampling": "test images with replacement; stratified by class for binary and multi-label sets"}


def encoder_record(opts: RunOptions, feats: ImageFeatures, backend: Backend) -> dict:
    """How a result's image features were computed: the compile policy and what it did, the eager linear
    kernels (`cpu_gemm`: onednn | aten on CPU, null on GPU; used for the text tower too), and where JPEGs
    were decoded and resized (`decode`: cpu | device)."""
    return {"compile": opts.compile, "compiled": feats.compiled, "compile_s": round(feats.compile_s, 3),
            "tower": feats.tower, "cpu_gemm": backend.gemm, "decode": opts.decode}


def prepare_command(spec: DatasetSpec, copy: str = "") -> str:
    """The command that fetches `spec` (the webdataset copy `copy`, e.g. datacomp, when it has one)."""
    flag = f" --copy {copy}" if copy and spec.sources.get(copy) else ""
    return f"bench datasets prepare {spec.name}{flag} --data-root DIR"


def _missing(spec: DatasetSpec, data_root: Path, copy: str = "") -> str:
    return (f"dataset {spec.name} not found under {data_root} (looked for "
            f"{', '.join(sources.folder_names(spec, copy))}); run `{prepare_command(spec, copy)}`")


def protocol_misfit(proto: protocols.Protocol | None, ref: DatasetRef) -> BenchError | None:
    """Why `proto` cannot run on `ref` (a copy without its label/template files, a metric it does not define)."""
    if proto is None or ref.spec.task != "classification":
        return None
    try:
        check_protocol_data(proto, ref)
        check_metric_implementation(proto, ref.spec)
    except BenchError as exc:
        return exc
    return None


def resolve_datasets(names: list[str], data_root: Path, kinds: tuple[str, ...] = ("classification",),
                     protocol: protocols.Protocol | None = None) -> tuple[list[DatasetRef], list[str]]:
    """Datasets to run (folder + source), and a note per `all` member that is not under `data_root` or that
    `protocol` cannot run on (`all`: the registered sets of the given task kinds). The copy `protocol` expects
    (DataComp's webdatasets under datacomp) is looked for first; a named dataset it cannot run on is an error."""
    refs: list[DatasetRef] = []
    missing: list[str] = []
    prefer = protocols.preferred_copy(protocol) if protocol is not None else ""
    for name in names:
        path = Path(name)
        if name == "all":
            specs = [s for kind in kinds for s in list_datasets(include_optional=False, include_demo=False, task=kind)]
            for spec in specs:
                ref = sources.locate(spec, data_root, prefer=prefer)
                misfit = protocol_misfit(protocol, ref) if ref is not None else None
                if ref is None:
                    missing.append(f"{spec.name}: not found under {data_root} (run `{prepare_command(spec, prefer)}`)")
                elif misfit is not None:
                    missing.append(str(misfit))
                else:
                    refs.append(ref)
            continue
        sources.check_not_rejected(name)
        if path.is_dir() and ("/" in name or sources.detect(path) is not None):
            refs.append(sources.ref_for_path(path))
            continue
        spec = get_dataset(name)
        ref = sources.locate(spec, data_root, prefer=prefer)
        if ref is None and spec.sources.get("generated") in GENERATORS:
            folder = GENERATORS[spec.sources["generated"]](data_root / spec.folder_names[0])
            ref = DatasetRef(spec, folder, sources.detect(folder) or "elevater")
        if ref is None:
            if not data_root.exists():
                raise BenchError(f"data root {data_root} does not exist; pass --data-root DIR or set BENCH_DATA")
            raise BenchError(_missing(spec, data_root, prefer))
        refs.append(ref)
    for ref in refs:  # named datasets (those of `all` that cannot run are notes above)
        if (misfit := protocol_misfit(protocol, ref)) is not None:
            raise misfit
    seen = set()
    unique = [r for r in refs if not (r.folder.resolve() in seen or seen.add(r.folder.resolve()))]
    return unique, missing


def load_data(ref: DatasetRef, split: str, limit: int | None) -> SplitData:
    if ref.spec.task != "classification":  # studies, prompt evaluation and the probe need classes
        raise BenchError(f"{ref.spec.name} is a {ref.spec.task} set (captions, not classes); "
                         f"evaluate it with `bench run --task {ref.spec.task}`")
    data = sources.load(ref, split)
    if limit is not None and limit < len(data):
        data = data.subset(stratified_limit(data.targets, limit))
    return data


def load_retrieval(ref: DatasetRef, split: str, limit: int | None) -> RetrievalSplit:
    """One split of a retrieval set; `--limit N` keeps its first N images and the captions that name them.

    `--split test` (the default) on a set whose published numbers use another split (MUGE: `valid`, its
    test split being unannotated) reads that split; the result records the split it read."""
    if split == "test" and ref.spec.eval_split:
        log.info("%s: evaluating the '%s' split (its published numbers are on it)", ref.spec.name, ref.spec.eval_split)
        split = ref.spec.eval_split
    data = sources.load(ref, split)
    if not isinstance(data, RetrievalSplit):
        raise BenchError(f"{ref.folder}: {ref.spec.name} is not a retrieval set (its {ref.source} source has "
                         "classes, not captions); run it with --task zeroshot")
    if limit is not None and limit < len(data):
        data = data.subset(list(range(limit)))
    return data


def package_versions() -> dict[str, str]:
    out = {"bench": __version__, "python": platform.python_version()}
    for pkg in ("torch", "torchvision", "open_clip_torch", "transformers", "numpy", "scikit-learn", "cn_clip"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def target_array(data: SplitData, indices: torch.Tensor) -> np.ndarray:
    idx = indices.numpy()
    if data.spec.multilabel:
        out = np.zeros((len(idx), data.spec.num_classes), dtype=np.int64)
        for row, i in enumerate(idx):
            out[row, list(data.targets[i])] = 1
        return out
    return np.asarray([data.targets[i] for i in idx], dtype=np.int64)


def result_header(spec: ModelSpec, ref: DatasetRef, data: SplitData, task: str, language: str,
                  protocol: str = "bench", precision: str | None = None) -> dict:
    """The keys every result JSON starts with (contract), with the protocol and resolved precision."""
    return {"model": spec.name, "dataset": ref.spec.name, "split": data.split, "task": task, "language": language,
            "protocol": protocol, "precision": precision}


@dataclass(frozen=True)
class Precision:
    """A run's precision: what it computes in, what the backend is told, and what the experiment records."""

    resolved: str  # fp32 | bf16 | fp16: what the result JSON says
    backend: str  # "auto" when that is bench's default on the device (caches keep their keys), else resolved
    identity: str  # "auto" when that is what --precision auto gives under the protocol, else resolved


def protocol_language(proto: protocols.Protocol) -> str | None:
    """The language a protocol's fixed templates are written in (None: it does not fix them)."""
    source = proto.templates
    if isinstance(source, dict):
        return source.get("language")
    if source in protocols.FOLDER_SOURCES:
        return protocols.FOLDER_SOURCES[source]
    if source == "model-default" or not isinstance(source, str):
        return None
    try:
        return load_prompt_set(source).language
    except BenchError:  # not a prompt set name (e.g. a per-folder source): the run decides
        return None


def protocol_prompt_set(proto: protocols.Protocol, spec: ModelSpec, prompts: str | None = None,
                        ref: DatasetRef | None = None) -> PromptSet:
    """A protocol's templates for `spec`: read from a package (cn-clip), from the dataset folder `ref`
    (datacomp), a prompt set it names (elevater), else `prompts` (--prompts) or the model's default set (bench)."""
    source = proto.templates
    if isinstance(source, dict):
        return package_prompt_set(source, f"protocol {proto.name} ({proto.path})",
                                  source.get("install", "pip install -e '.[cn-clip]'"))
    if source in protocols.FOLDER_SOURCES:
        if ref is None:
            raise BenchError(f"protocol '{proto.name}' reads its templates from each dataset folder; name a dataset")
        check_protocol_data(proto, ref)
        return wds_prompt_set(ref.folder, proto.name)
    if source != "model-default":
        return load_prompt_set(source)
    return load_prompt_set(prompts or spec.default_prompts)


def protocol_labels_arg(proto: protocols.Protocol, spec: DatasetSpec | None, language: str | None,
                        labels: str | None = None) -> str | None:
    """A protocol's label source as a --labels value: `labels` (--labels) under bench's; a variant it names
    (elevater) where the dataset's label file defines one, the file's own names elsewhere (they are the
    protocol's there); else its source (`dataset`: the folder's label file)."""
    source = proto.labels
    if source == "bench":
        return labels
    if source in protocols.FOLDER_SOURCES:  # the folder's own class names (check_protocol_data: the right copy)
        return "dataset"
    if source in protocols.LABEL_VARIANTS and spec is not None and language is not None:
        return source if source in label_variants(spec.name, language) else None
    return source


def check_protocol_data(proto: protocols.Protocol, ref: DatasetRef) -> None:
    """Refuse a dataset copy the protocol cannot read its templates or class names from (datacomp needs a
    webdataset copy: an ELEVATER folder has neither classnames.txt nor the templates file)."""
    need = protocols.required_source(proto)
    if need and ref.source != need:
        copy = protocols.preferred_copy(proto)
        raise BenchError(f"{ref.spec.name}: protocol '{proto.name}' reads the class names and templates of the "
                         f"{need} copy (classnames.txt, zeroshot_classification_templates.txt), but the copy found is "
                         f"the {ref.source} folder {ref.folder}; run `bench datasets prepare {ref.spec.name} --copy "
                         f"{copy}` (it is then found first) or pass the webdataset folder's path as --dataset")


def check_metric_implementation(proto: protocols.Protocol, spec: DatasetSpec) -> None:
    """Refuse, before any encoding, a dataset whose metric the protocol's metric implementation does not define
    (CLIP_benchmark's has no 11-point mAP or ROC AUC)."""
    reason = unsupported(proto.metric_implementation, spec.metric, spec.multilabel)
    if reason:
        voc = " (open_clip's voc2007 is another task: single-label top-1 on object crops)" if spec.multilabel else ""
        raise BenchError(f"{spec.name}: protocol '{proto.name}' cannot score it: {reason}{voc}; run it under "
                         "--protocol bench or elevater")


def check_protocol_overrides(proto: protocols.Protocol, opts: RunOptions) -> None:
    """A protocol other than bench fixes its templates and class names: --prompts or --labels would make its
    numbers someone else's protocol under its name, so they are refused (studies compare sources instead)."""
    fixed = []
    if opts.prompts and proto.templates != "model-default":
        fixed.append("--prompts")
    if opts.labels and proto.labels != "bench" and opts.labels != proto.labels:
        fixed.append("--labels")
    fixed_language = protocol_language(proto)
    if opts.language and fixed_language and opts.language != fixed_language:
        fixed.append("--language")
    if fixed:
        raise BenchError(f"protocol '{proto.name}' fixes its templates ({protocols.templates_source(proto)}"
                         f"{', in ' + fixed_language if fixed_language else ''}) and class "
                         f"names ({proto.labels}); drop {' and '.join(fixed)}, or use --protocol bench to evaluate "
                         "your own (`bench study sets` / `bench study labels` compare them)")


def _resolve_run_precision(opts: RunOptions) -> Precision:
    """Validate --protocol/--precision (and the flags a protocol fixes) before any work."""
    proto = protocols.load_protocol(opts.protocol)
    protocols.check_runnable(proto)
    check_protocol_overrides(proto, opts)
    device = resolve_device(opts.device)
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    resolved = protocols.resolve_precision(opts.precision, proto, device.type, bf16)
    default = protocols.default_precision(device.type, bf16)
    by_auto = protocols.resolve_precision("auto", proto, device.type, bf16)
    return Precision(resolved, "auto" if resolved == default else resolved, "auto" if resolved == by_auto else resolved)


def unknown_labels(backend: Backend, labels: Labels) -> list[str]:
    """Class names the model's tokenizer maps (partly) to [UNK]: such classes lose the words that tell them
    apart, which lowers accuracy silently, so a run warns and records them in its result."""
    unknown = backend.unknown_tokens(list(labels.names))
    if unknown:
        shown = ", ".join(unknown[:8]) + (" …" if len(unknown) > 8 else "")
        log.warning("%d class name(s) in %s tokenize to [UNK] for %s: %s (other names the tokenizer knows, as a "
                    "--labels variant, avoid this; `bench labels lint --model` lists them)",
                    len(unknown), labels.description, backend.spec.name, shown)
    return unknown


class Runner:
    """Holds the caches and loaded backends for one invocation."""

    def __init__(self, opts: RunOptions):
        # Results record the resolved precision; the experiment's identity keeps `auto` when the request
        # resolves to what auto gives, so `--precision fp32` on CPU is not a new file.
        self.protocol = protocols.load_protocol(opts.protocol)
        kernels.resolve(opts.cpu_gemm, torch.device("meta"))  # a bad name fails before any work
        self._precision = _resolve_run_precision(opts)
        self.precision = self._precision.resolved
        self.opts = opts = replace(opts, precision=self._precision.identity)
        self._protocol_prompts: dict[str, PromptSet] = {}
        check_writable(opts.cache_dir, "cache directory")
        self.features = FeatureCache(opts.cache_dir, opts.shard_size)
        self.texts = TextCache(opts.cache_dir)
        self._backends: dict[tuple[str, str], Backend] = {}  # (model, image transform)
        # the whole run's (model, dataset, task) steps and the one under way, when `run` drives the runner:
        # `--compile auto` weighs compiling against every image the run will still encode with a model
        self.plan: list[tuple[ModelSpec, DatasetRef, str]] = []
        self.step = 0

    def backend(self, spec: ModelSpec, dataset: str | None = None) -> Backend:
        """The loaded model, with the image transform the protocol uses on `dataset` (registry name; None:
        the protocol's default). A protocol with a transform of its own replaces the model's for the run;
        one whose transform differs per dataset (ELEVATER squashes KITTI only) gets a backend per transform."""
        kind = protocols.image_transform_for(self.protocol, dataset)
        key = (spec.name, kind)
        if key not in self._backends:
            if kind != "model":  # the protocol's transform replaces the model's own
                spec = replace(spec, preprocess=kind)
            # the backend loads its tokenizer or weights on first use (and logs it then): a fully cached
            # re-run never loads them
            backend = load_backend(spec, device=self.opts.device, cache_dir=self.opts.cache_dir)
            backend.precision = self._precision.backend
            backend.cpu_gemm = self.opts.cpu_gemm
            backend.load_note = "" if kind == "model" else f" (image transform: {kind})"
            self._backends[key] = backend
        return self._backends[key]

    def language(self, spec: ModelSpec) -> str:
        """The language of prompts and labels: the protocol's when it fixes its templates, else --language
        or the model's."""
        return protocol_language(self.protocol) or self.opts.language or spec.language

    def prompt_set(self, spec: ModelSpec, ref: DatasetRef | None = None) -> PromptSet:
        """The protocol's templates: read from a package (cn-clip), the dataset folder `ref` (datacomp), a set
        it names, else --prompts or the model's default set."""
        if not isinstance(self.protocol.templates, dict):  # cheap to load, and it may depend on the model
            return protocol_prompt_set(self.protocol, spec, self.opts.prompts, ref)
        if self.protocol.name not in self._protocol_prompts:  # read from a package once per run
            self._protocol_prompts[self.protocol.name] = protocol_prompt_set(self.protocol, spec)
        return self._protocol_prompts[self.protocol.name]

    def labels_arg(self, spec: DatasetSpec | None = None, language: str | None = None) -> str | None:
        """The --labels value in effect: the protocol's label source unless it is bench's (then --labels)."""
        return protocol_labels_arg(self.protocol, spec, language, self.opts.labels)

    def labels(self, ref: DatasetRef, language: str, data: SplitData) -> Labels:
        return resolve_labels(self.labels_arg(ref.spec, language), ref.spec, language, data,
                              duplicates=self.protocol.duplicate_labels)

    def allow_duplicate_templates(self) -> bool:
        """Whether repeated templates are a warning rather than an error (`bench.validation`): only for a
        protocol that reproduces a template list with deliberate repeats, such as Chinese CLIP's."""
        return self.protocol.duplicate_templates == "keep"

    def image_features(self, backend: Backend, data: SplitData) -> ImageFeatures:
        """Image features of one split through the feature cache, with this run's encoding options."""
        o = self.opts
        return image_features(backend, data, self.features, batch_size=o.batch_size, workers=o.workers,
                              skip_bad_images=o.skip_bad_images, progress=o.progress, compile=o.compile,
                              later=lambda current: self.images_later(backend, current), decode=o.decode)

    def images_later(self, backend: Backend, current: str = "") -> int:
        """Images that the steps of the plan after the current one will encode with `backend` (same model
        and transform), each feature entry once: entries complete in the cache, and `current` (the one being
        encoded), count nothing. An estimate for `--compile auto`: a dataset that cannot be read here counts
        nothing (its own step will say why). Under torchrun, the images of this rank's shards."""
        key = next((k for k, b in self._backends.items() if b is backend), None)
        seen, total, dist = {current}, 0, distributed.current()
        for spec, ref, task in self.plan[self.step + 1:]:
            if key != (spec.name, protocols.image_transform_for(self.protocol, ref.spec.name)):
                continue
            try:
                for data in self._step_splits(ref, task):
                    entry = feature_key(backend, data, self.opts.decode)
                    if entry not in seen and not self.features.is_complete(entry):
                        seen.add(entry)
                        total += dist.share(len(data), self.features.shard_size)
            except Exception as exc:  # noqa: BLE001 - counting must never fail the run
                log.debug("not counting %s for --compile auto: %s", ref.spec.name, exc)
        return total

    def _step_splits(self, ref: DatasetRef, task: str) -> list:
        """The splits whose image features a step encodes."""
        o = self.opts
        if task == "retrieval":
            return [load_retrieval(ref, o.split, o.limit)]
        return [load_data(ref, o.split, o.limit)] if task == "zeroshot" else list(self.probe_data(ref).values())

    def probe_data(self, ref: DatasetRef) -> dict[str, SplitData]:
        """The splits the linear probe encodes: train, the scored split, and val when the folder has one."""
        o = self.opts
        names = ["train", o.split, *(["val"] if (ref.folder / "val").is_dir() else [])]
        return {name: load_data(ref, name, o.limit) for name in names}

    def class_texts(self, ps: PromptSet, dataset: str, labels: Labels) -> tuple[ClassTexts, dict]:
        """Every class's prompts (templates × label and per-class fields, CuPL lists, ELEVATER knowledge)
        and a record of what made them, for the result."""
        texts = ps.class_texts(dataset, labels)
        record = text_record(ps, labels, texts)
        if self.opts.knowledge is not None:
            know = load_knowledge(self.knowledge_config(), elevater_id(dataset))
            rows, record["knowledge"] = know.augment(texts.rows, labels.names)
            texts = ClassTexts(rows, texts.skipped)
            record["n_prompts"] = n_prompts(rows)
        return texts, record

    def knowledge_config(self) -> KnowledgeConfig:
        o = self.opts
        return KnowledgeConfig(Path(o.knowledge), tuple(o.knowledge_use), o.gpt3_items, o.knowledge_aggregation)

    def class_weights(self, backend: Backend, ps: PromptSet, dataset: str, labels: Labels) -> PerPrompt:
        """[C, T, D] prompt embeddings for every label × template (cached per model × prompts × labels);
        a list of per-class [T_c, D] tensors when classes have different numbers of prompts."""
        return self.row_weights(backend, self.class_texts(ps, dataset, labels)[0].rows)

    def row_weights(self, backend: Backend, rows: list[list[str]]) -> PerPrompt:
        """Prompt embeddings of every class's own prompts (text cache): [C, T, D] when all classes have T."""
        normalise = protocols.text_normaliser(self.protocol)  # the protocol's, e.g. cn_clip's lower-casing
        flat = [normalise(t) if normalise else t for row in rows for t in row]
        emb = text_embeddings(backend, flat, self.texts, progress=self.opts.progress)
        if len({len(r) for r in rows}) == 1:
            return emb.view(len(rows), len(rows[0]), -1)
        return list(torch.split(emb, [len(r) for r in rows]))

    def zeroshot(self, spec: ModelSpec, ref: DatasetRef) -> dict | None:
        opts = self.opts
        t0 = time.perf_counter()
        check_protocol_data(self.protocol, ref)
        check_metric_implementation(self.protocol, ref.spec)
        data = load_data(ref, opts.split, opts.limit)
        language = self.language(spec)
        labels = self.labels(ref, language, data)
        ps = self.prompt_set(spec, ref)
        if ps.language != language:
            log.warning("prompt set %s is %s but %s is evaluated in %s", ps.name, ps.language, spec.name, language)
        ps.templates_for(ref.spec.name)  # fail on a missing per-dataset set before encoding images
        require_valid(ps, allow_duplicates=self.allow_duplicate_templates(), datasets=(ref.spec.name,),
                      summarise=ps.name_source == "protocol")
        backend = self.backend(spec, ref.spec.name)
        unknown = unknown_labels(backend, labels)
        feats = self.image_features(backend, data)
        if not distributed.current().main:
            return None  # torchrun: this rank's shards are cached; rank 0 classifies and writes
        t1 = time.perf_counter()
        per_prompt = self.class_weights(backend, ps, ref.spec.name, labels)
        # what the metrics see: scaled cosines, or the protocol's softmax(100·cos) probabilities
        logits = protocol_scores(scores(feats.features, class_embeddings(per_prompt)), self.protocol.scores).numpy()
        targets = target_array(data, feats.indices)
        # the protocol names whose metric definitions score it (bench.metrics.IMPLEMENTATIONS)
        metrics_impl = self.protocol.metric_implementation
        metrics = compute_metrics(logits, targets, ref.spec.metric, implementation=metrics_impl)
        # The bootstrap recomputes bench's own metric definitions: under another implementation its interval
        # would not belong to the number printed beside it, so it is left out there.
        ci95 = (stats.bootstrap_ci(logits, targets, ref.spec.metric, n_boot=opts.bootstrap, seed=BOOTSTRAP_SEED)
                if metrics_impl == "bench" else {})
        t2 = time.perf_counter()
        result = {
            **result_header(spec, ref, data, "zeroshot", language, self.opts.protocol, self.precision),
            "prompts": ps.name,
            "prompts_language": ps.language,
            "prompts_language_source": getattr(ps, "language_source", "file"),
            "labels": labels.description,
            "label_variant": labels.variant,
            "class_names": list(labels.names),
            "n_samples": int(feats.indices.numel()),
            "n_classes": ref.spec.num_classes,
            "n_templates": len(ps.templates_for(ref.spec.name)),
            "prompt_texts": self.class_texts(ps, ref.spec.name, labels)[1],
            "metric": ref.spec.metric,
            "metrics": metrics,
            "metrics_implementation": metrics_impl,
            "scores": self.protocol.scores,
            **({"ci95": ci95, "bootstrap": bootstrap_record(ref.spec.metric, opts.bootstrap)} if ci95 else {}),
            "labels_with_unknown_tokens": unknown,
            "skipped_images": len(feats.errors),
            "skipped_examples": feats.errors[:5],
            "limit": opts.limit,
            "source": data.source,
            "cache": {"image_features": feats.key, "images_encoded": feats.n_encoded},
            "encoder": encoder_record(opts, feats, backend),
            "timings": {"image_features_s": round(feats.seconds, 3), "classify_s": round(t2 - t1, 3),
                        "total_s": round(t2 - t0, 3), **backend.take_fixed_costs()},
            "manifest": self.manifest(backend, data, ps),
        }
        self.write(result, data, logits, targets, feats.indices)
        return result

    def probe_split(self, backend: Backend, data: SplitData) -> tuple[probe.Split, object]:
        """L2-normalised cached features and targets of one split (encoded at most once per model × split)."""
        feats = self.image_features(backend, data)
        return probe.Split(normalize(feats.features).numpy(), target_array(data, feats.indices)), feats

    def linear_probe(self, spec: ModelSpec, ref: DatasetRef) -> dict | None:
        """The CLIP-paper linear probe (C searched on validation, refit on train + val, scored on test)
        and few-shot probes, on cached features."""
        opts = self.opts
        t0 = time.perf_counter()
        folder = ref.folder
        if not (folder / "train").is_dir():
            raise BenchError(f"{ref.spec.name}: the linear probe needs a 'train' split in {folder}; found only "
                             + ", ".join(s for s in ("val", "test") if (folder / s).is_dir()))
        if opts.split in ("train", "val"):
            raise BenchError(f"--split {opts.split}: the linear probe trains and selects on train/val; "
                             "score it on a held-out split such as test")
        splits = self.probe_data(ref)
        test_data, train_data, has_val = splits[opts.split], splits["train"], "val" in splits
        backend = self.backend(spec, ref.spec.name)
        train_all, f_train = self.probe_split(backend, train_data)
        test, f_test = self.probe_split(backend, test_data)
        encoded = {"train": f_train.n_encoded, opts.split: f_test.n_encoded}
        keys = {"train": f_train.key, opts.split: f_test.key}
        if has_val:
            val, f_val = self.probe_split(backend, splits["val"])
            train = train_all
            encoded["val"], keys["val"] = f_val.n_encoded, f_val.key
            val_source = "val split"
        if not distributed.current().main:
            return None  # torchrun: every rank helped encode each split; rank 0 fits and writes
        if not has_val:
            tr_idx, va_idx = probe.holdout_split(train_all.y, opts.val_fraction, opts.val_seed)
            train, val = train_all.take(tr_idx), train_all.take(va_idx)
            val_source = f"stratified {opts.val_fraction:.0%} of train (seed {opts.val_seed})"
        t1 = time.perf_counter()
        language = self.language(spec)
        init, ps, labels = None, None, None
        kind = probe.problem_kind(train.y, ref.spec.num_classes)
        if opts.probe_init == "zeroshot":
            labels = self.labels(ref, language, test_data)
            ps = self.prompt_set(spec, ref)
            classes = class_embeddings(self.class_weights(backend, ps, ref.spec.name, labels)).numpy()
            init = probe.init_from_classifier(classes, kind, LOGIT_SCALE)
        impl = self.probe_impl()
        device = str(resolve_device(opts.device))
        args = {"metric": ref.spec.metric, "num_classes": ref.spec.num_classes, "impl": impl, "init": init, "device": device}
        outcome = probe.linear_probe(train, val, test, **args)
        t2 = time.perf_counter()
        if opts.shots:
            used = probe.clamp_shots(train.y, opts.shots)
            largest = int(probe.class_sizes(train.y).max())
            for k in opts.shots:
                if k > largest:
                    log.warning("%s: --shots %d asks for more images per class than the training part has "
                                "(largest class: %d); measured as %d-shot%s", ref.spec.name, k, largest, largest,
                                "" if (largest, k) in used else " (already in the list)")
        few = probe.few_shot(train, val, test, shots=opts.shots, seeds=opts.seeds, **args) if opts.shots else []
        t3 = time.perf_counter()
        result = {
            **result_header(spec, ref, test_data, "linear_probe", language, self.opts.protocol,
                            self.precision),
            "n_samples": len(test),
            "n_classes": ref.spec.num_classes,
            "metric": ref.spec.metric,
            "metrics": outcome.metrics,
            "implementation": impl,
            "device": device,
            "objective": {"binary": "logistic (one logit)", "multiclass": "multinomial logistic",
                          "multilabel": "one-vs-rest logistic"}[kind] + ", L2 on weights, L-BFGS",
            "features": "L2-normalised image embeddings",
            "init": opts.probe_init,
            "regularization": {"name": "C", "value": outcome.c,
                               "meaning": "inverse L2 strength: mean loss + ||W||^2 / (2 C n)"},
            "selection": f"C searched on validation ({val_source}); final fit on train + validation; "
                         "test scored once",
            "sweep": outcome.sweep,
            "n_train": len(train),
            "n_val": len(val),
            "val_source": val_source,
            "few_shot": few,
            "few_shot_selection": "k per class drawn from the training part only; C searched on the same "
                                  "validation set",
            "limit": opts.limit,
            "cache": {"image_features": keys, "images_encoded": encoded},
            "timings": {"image_features_s": round(t1 - t0, 3), **outcome.timings, "few_shot_s": round(t3 - t2, 3),
                        "total_s": round(t3 - t0, 3), **backend.take_fixed_costs()},
            "manifest": self.manifest(backend, test_data, ps),
        }
        if labels is not None:
            result["labels"] = labels.description
            result["prompts"] = ps.name
        folder_out = opts.out / spec.name / ref.spec.name
        check_writable(folder_out, "output directory")
        result["experiment"] = ident = experiment(result, opts)
        name = result_stem(ident) + ".json"
        atomic_write_json(folder_out / name, result)
        update_index(folder_out, name, ident)
        return result

    def probe_impl(self) -> str:
        """`auto` is torch: as fast or faster than scikit-learn on every size we measured (scripts/perf_probe.py)."""
        name = "torch" if self.opts.probe_impl == "auto" else self.opts.probe_impl
        probe.get_implementation(name)
        return name

    def caption_features(self, backend: Backend, texts: tuple[str, ...]) -> tuple[torch.Tensor, list[str], int]:
        """[T, D] caption embeddings through the text cache, TEXT_CHUNK captions per entry (a killed run
        re-encodes at most one chunk), each chunk's cache key, and how many chunks were encoded now."""
        chunks, keys, encoded = [], [], 0
        for start in range(0, len(texts), TEXT_CHUNK):
            part = list(texts[start:start + TEXT_CHUNK])
            key = content_key({"kind": "text", "model": backend.text_identity(), "texts": list(dict.fromkeys(part))})
            encoded += not self.texts.path(key).is_file()
            chunks.append(text_embeddings(backend, part, self.texts, progress=self.opts.progress))
            keys.append(key)
        return torch.cat(chunks), keys, encoded

    def retrieval(self, spec: ModelSpec, ref: DatasetRef) -> dict | None:
        """Zero-shot image-text retrieval: R@1/5/10 text->image and image->text on cached image features
        (per model x dataset x split, as for classification) and cached caption embeddings."""
        opts = self.opts
        if self.protocol.name != "bench":
            # the registered protocols describe zero-shot classification; their transform and precision
            # applied to retrieval would put their name on an evaluation they never published
            raise BenchError(f"{ref.spec.name}: protocol '{self.protocol.name}' is a zero-shot classification "
                             "protocol; run retrieval under --protocol bench")
        t0 = time.perf_counter()
        data = load_retrieval(ref, opts.split, opts.limit)
        if opts.save_predictions or opts.save_logits:
            log.warning("--save-predictions/--save-logits write classification scores; a retrieval run writes "
                        "neither (its result JSON has the recalls)")
        language = data.language or self.language(spec)
        if language != spec.language:
            log.warning("%s's captions are %s but %s is a %s model", ref.spec.name, language, spec.name, spec.language)
        backend = self.backend(spec, ref.spec.name)
        feats = self.image_features(backend, data)
        if not distributed.current().main:
            return None  # torchrun: this rank's shards are cached; rank 0 encodes captions and scores
        t1 = time.perf_counter()
        # images skipped as unreadable (--skip-bad-images) leave the candidates; captions of no kept image go too
        row = {int(i): r for r, i in enumerate(feats.indices.tolist())}
        kept = [(t, tuple(row[i] for i in imgs if i in row)) for t, imgs in enumerate(data.text_images)]
        kept = [(t, imgs) for t, imgs in kept if imgs]
        texts = tuple(data.texts[t] for t, _ in kept)
        text_feats, text_keys, text_encoded = self.caption_features(backend, texts)
        t2 = time.perf_counter()
        metrics = retrieval_metrics(normalize(feats.features).numpy(), normalize(text_feats).numpy(),
                                    [imgs for _, imgs in kept])
        metrics["primary"] = metrics["mean_recall"]
        t3 = time.perf_counter()
        result = {
            **result_header(spec, ref, data, "retrieval", language, opts.protocol, self.precision),
            "prompts": None,
            "labels": None,
            "n_samples": int(feats.indices.numel()),
            "n_images": int(feats.indices.numel()),
            "n_texts": len(texts),
            "n_pairs": int(sum(len(imgs) for _, imgs in kept)),
            "n_image_queries": len({i for _, imgs in kept for i in imgs}),
            "captions_language": language,
            "metric": "mean_recall",
            "metrics": metrics,
            "metrics_implementation": "bench",
            "definitions": {
                "t2i": "a caption is right at k when any of its images is among the k most similar images",
                "i2t": "an image is right at k when any of its captions is among the k most similar captions; "
                       "images without a caption are distractors, not queries",
                "mean_recall": "mean of the six R@k; t2i_mean_recall / i2t_mean_recall: mean of one direction's R@1/5/10",
                "ties": "equal scores ordered by candidate index (lower first)",
                "similarity": "cosine (L2-normalised embeddings)"},
            "skipped_images": len(feats.errors),
            "skipped_examples": feats.errors[:5],
            "limit": opts.limit,
            "source": data.source,
            "cache": {"image_features": feats.key, "images_encoded": feats.n_encoded, "text_features": text_keys,
                      "text_entries_encoded": text_encoded},
            "encoder": encoder_record(opts, feats, backend),
            "timings": {"image_features_s": round(feats.seconds, 3), "text_features_s": round(t2 - t1, 3),
                        "retrieval_s": round(t3 - t2, 3), "total_s": round(t3 - t0, 3), **backend.take_fixed_costs()},
            "manifest": self.manifest(backend, data, None),
        }
        result["manifest"]["dataset"]["texts_fingerprint"] = data.texts_fingerprint
        folder_out = opts.out / spec.name / ref.spec.name
        check_writable(folder_out, "output directory")
        # prompts, labels and --language do not reach a retrieval number: they are no part of its identity
        result["experiment"] = ident = experiment(result, replace(opts, prompts=None, labels=None, language=None))
        name = result_stem(ident) + ".json"
        atomic_write_json(folder_out / name, result)
        update_index(folder_out, name, ident)
        return result

    def manifest(self, backend: Backend, data: SplitData, ps: PromptSet | None) -> dict:
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.opts).items()}
        return {
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": package_versions(),
            "model": {**backend.identity(), "language": backend.spec.language, "source": backend.spec.source},
            "dataset": {"name": data.spec.name, "folder": str(Path(data.root).parent), "fingerprint": data.fingerprint},
            "prompts": {"name": ps.name, "path": ps.path, "language": ps.language,
                        "language_source": ps.language_source, "name_source": ps.name_source}
            if ps is not None else None,
            "device": str(backend.device),
            "settings": settings,
        }

    def write(self, result: dict, data: SplitData, logits: np.ndarray, targets: np.ndarray,
              indices: torch.Tensor) -> None:
        folder = self.opts.out / result["model"] / result["dataset"]
        check_writable(folder, "output directory")
        # the file name is derived from the experiment's identity, so other experiments' results survive
        result["experiment"] = ident = experiment(result, self.opts)
        stem = result_stem(ident)
        if self.opts.save_predictions:
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(["path", "target", "prediction"])
            preds = logits.argmax(axis=1)
            for row, i in enumerate(indices.tolist()):
                t = data.targets[i]
                w.writerow([data.paths[i], t if isinstance(t, int) else ";".join(map(str, t)), int(preds[row])])
            atomic_write_bytes(folder / f"{stem}.predictions.csv", buf.getvalue().encode("utf-8"))
        paths = [data.paths[i] for i in indices.tolist()]
        if self.opts.save_logits:
            write_logits(logits_path(folder / f"{stem}.json"), logits, targets, paths)
        self.write_per_image(result, folder / f"{stem}.json", logits, targets, paths)
        atomic_write_json(folder / f"{stem}.json", result)
        update_index(folder, f"{stem}.json", ident)

    @staticmethod
    def write_per_image(result: dict, result_path: Path, logits: np.ndarray, targets: np.ndarray,
                        paths: list[str]) -> None:
        """Write ``<stem>.per_image.npz`` (what paired tests need) and record it, with the per-class view of
        single-label sets, in the result (docs/results.md)."""
        rec = per_image.record(logits, targets, result["metric"])
        out = per_image_path(result_path)
        per_image.write_per_image(out, paths, rec)
        result["per_image"] = {"file": out.name, "format": per_image.FORMAT, "n": len(paths),
                               "images": per_image.images_digest(paths, rec["targets"]),
                               "fields": sorted(["paths", *rec])}
        if rec["targets"].ndim == 1:
            result["per_class"] = per_image.per_class_summary(rec["targets"], rec["prediction"], logits.shape[1])


def elevater_id(dataset: str) -> str:
    """The dataset's id in ELEVATER's files (its registry `elevater_id`), else its own name."""
    from bench.datasets.registry import find_dataset

    spec = find_dataset(dataset)
    return (spec.elevater_id or spec.name) if spec is not None else dataset


def text_record(ps: PromptSet, labels: Labels, texts: ClassTexts) -> dict:
    """What a result records about its class texts beyond the prompt set's name: prompts per class,
    the per-class fields and CuPL file used, and classes that fell back (``missing_fields: skip``)."""
    from bench.cache import file_sha256
    from bench.prompts import template_fields

    used = sorted({f for t in ps.templates for f in template_fields(t)}
                  | {f for g in ps.per_dataset.values() for t in g for f in template_fields(t)})
    cp = None
    if ps.class_prompts:
        p = Path(ps.class_prompts_path)
        cp = {"path": ps.class_prompts_path, "sha256": file_sha256(p) if p.is_file() else None,
              "n_classes": len(ps.class_prompts)}
    src = Path(ps.path) if ps.path else None
    return {"prompts_file": {"path": ps.path, "sha256": file_sha256(src)} if src and src.is_file() else None,
            "n_prompts": n_prompts(texts.rows), "fields": used,
            "class_prompts": cp, "missing_fields": ps.missing_fields,
            "classes_missing_fields": {labels.names[c]: srcs for c, srcs in texts.skipped.items()}}


def write_logits(path: Path, scores: np.ndarray, targets: np.ndarray, paths: list) -> None:
    """Save the scores the metrics saw, the targets and the image paths (row order) as one .npz,
    atomically; plain arrays only, so `np.load(..., allow_pickle=False)` reads it."""
    buf = io.BytesIO()
    np.savez(buf, scores=np.asarray(scores), targets=np.asarray(targets),
             paths=np.asarray([str(p) for p in paths], dtype=str))
    atomic_write_bytes(path, buf.getvalue())


# Task name → Runner method: `bench run --task` dispatches through this table.
TASKS: dict[str, Callable[[Runner, ModelSpec, DatasetRef], dict | None]] = {
    "zeroshot": Runner.zeroshot,
    "linear_probe": Runner.linear_probe,
    "retrieval": Runner.retrieval,
}


def run(model_names: list[str], dataset_names: list[str], opts: RunOptions,
        tasks: tuple[str, ...] = ("zeroshot",)) -> list[dict]:
    """Resolve everything first (fail fast on bad names), then evaluate each model on each dataset."""
    models = [resolve_model(m) for m in model_names]
    refs, missing = resolve_datasets(dataset_names, opts.data_root,
                                     tuple(dict.fromkeys(TASK_KIND.get(t, "classification") for t in tasks)),
                                     protocols.load_protocol(opts.protocol))
    for note in missing:
        log.warning("skipping %s", note)
    if not refs:
        raise BenchError(f"no datasets to run under {opts.data_root}: " + "; ".join(missing[:3]) +
                         (" …" if len(missing) > 3 else ""))
    for task in tasks:
        if task not in TASKS:
            raise BenchError(f"task '{task}' is not available yet; available: {', '.join(TASKS)}")
    unfit = [r.spec.name for r in refs if not any(TASK_KIND[t] == r.spec.task for t in tasks)]
    if unfit:
        raise BenchError(f"{', '.join(unfit)}: no requested task runs on {'it' if len(unfit) == 1 else 'them'} "
                         f"(tasks: {', '.join(tasks)}); retrieval sets take --task retrieval, classification sets "
                         "--task zeroshot or linear-probe")
    if "linear_probe" in tasks:
        no_train = [r.spec.name for r in refs if r.spec.task == "classification" and not (r.folder / "train").is_dir()]
        if no_train:
            raise BenchError(f"the linear probe needs a 'train' split; missing for: {', '.join(no_train)} "
                             "(run --task zeroshot for these)")
    check_writable(opts.out, "output directory")
    opts = replace(opts, device=distributed.rank_device(opts.device))
    _resolve_run_precision(opts)  # fail on a bad --protocol/--precision before any work
    runner = Runner(opts)
    results = []
    # e.g. --task all: retrieval only on retrieval sets
    runner.plan = [(spec, ref, task) for spec in models for ref in refs for task in tasks
                   if TASK_KIND[task] == ref.spec.task]
    with distributed.process_group(opts.device):
        for step, (spec, ref, task) in enumerate(runner.plan):
            runner.step = step
            results.append(TASKS[task](runner, spec, ref))
    return [r for r in results if r is not None]  # empty on torchrun ranks other than 0
