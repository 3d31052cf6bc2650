"""Linear probes and few-shot probes on frozen features: the CLIP paper's protocol. Pure functions, no I/O.

The objective, shared by both implementations so that one regularisation value means the same in each:
L2-regularised logistic regression, ``mean_i loss_i + ||W||^2 / (2 C n)`` (scikit-learn's scaling of
``C * sum_i loss_i + ||W||^2 / 2``; the bias is not penalised). ``loss`` is the softmax cross-entropy
for multi-class sets, the logistic loss of one logit for binary sets (as scikit-learn fits them) and a
sum of per-class logistic losses for multi-label sets (one-vs-rest: the classes decouple).

C is chosen on a validation split only: a coarse sweep over decades, then a refinement that halves
its step in log space around the best value (the search CLIP's linear-probe code uses). The final
head is fitted on train + validation with that C and scored once on test.
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from bench.metrics import compute_metrics

COARSE_C = tuple(10.0 ** e for e in range(-6, 7))  # 1e-6 … 1e6, one value per decade
REFINE_STEPS = (0.5, 0.25, 0.125)  # decades: each step halves the search interval around the best C
DEFAULT_SHOTS = (1, 2, 4, 8, 16)
ELEVATER_SHOTS = (5, 20, 50)
MAX_ITER = 1000
TOL = 1e-6  # on the largest gradient entry of the mean objective (scikit-learn lbfgs `tol`, default 1e-4: too loose to reproduce)
SMALL_PROBLEM = 10_000_000  # n × d × classes below which one CPU thread is faster
CONSTANT_LOGIT = 30.0  # one-vs-rest column with a single class present: a finite constant score


# --------------------------------------------------------------------------- problem and head


@dataclass(frozen=True)
class Head:
    """A fitted linear head. `kind` decides how rows of `weight` become [N, C] scores."""

    weight: np.ndarray  # [K, D]: K = 1 for binary, C otherwise
    bias: np.ndarray  # [K]
    kind: str  # "multiclass" | "binary" | "multilabel"
    n_iter: int = 0


def problem_kind(targets: np.ndarray, num_classes: int) -> str:
    """multilabel for {0,1} [N, C] targets, binary for two classes, else multiclass."""
    if np.ndim(targets) == 2:
        return "multilabel"
    return "binary" if num_classes == 2 else "multiclass"


def scores(head: Head, x: np.ndarray) -> np.ndarray:
    """[N, C] decision scores; binary heads give [0, z] so that argmax and ROC-AUC (s1 - s0) both work."""
    z = np.asarray(x, dtype=np.float32) @ head.weight.T.astype(np.float32) + head.bias.astype(np.float32)
    if head.kind == "binary":
        return np.concatenate([np.zeros_like(z), z], axis=1)
    return z


def _out_rows(kind: str, num_classes: int) -> int:
    return 1 if kind == "binary" else num_classes


def init_from_classifier(classes: np.ndarray, kind: str, scale: float) -> Head:
    """A head that starts as the zero-shot classifier: rows = scaled class embeddings (ELEVATER's init)."""
    w = scale * np.asarray(classes, dtype=np.float32)
    if kind == "binary":
        w = w[1:2] - w[0:1]
    return Head(w, np.zeros(w.shape[0], dtype=np.float32), kind)


# --------------------------------------------------------------------------- implementations


def fit_sklearn(x: np.ndarray, y: np.ndarray, c: float, num_classes: int, init: Head | None = None,
                device: str = "cpu", max_iter: int = MAX_ITER) -> Head:
    """Reference: scikit-learn LogisticRegression (L-BFGS, multinomial, L2); one-vs-rest for multi-label."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    kind = problem_kind(y, num_classes)
    x = np.asarray(x, dtype=np.float32)
    columns = [y[:, j] for j in range(num_classes)] if kind == "multilabel" else [y]
    weights, biases, n_iter = [], [], 0
    for j, col in enumerate(columns):
        present = np.unique(col)
        if kind == "multilabel" and len(present) < 2:  # nothing to separate: a constant score
            weights.append(np.zeros((1, x.shape[1]), np.float32))
            biases.append(np.array([CONSTANT_LOGIT if present[0] == 1 else -CONSTANT_LOGIT], np.float32))
            continue
        clf = LogisticRegression(C=c, solver="lbfgs", max_iter=max_iter, tol=TOL,
                                 warm_start=init is not None)
        if init is not None:
            rows = slice(j, j + 1) if kind == "multilabel" else slice(None)
            if kind == "multiclass" and len(present) < num_classes:
                rows = present
            clf.coef_ = np.asarray(init.weight[rows], np.float64).copy()
            clf.intercept_ = np.asarray(init.bias[rows], np.float64).copy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(x, col)
        n_iter = max(n_iter, int(np.max(clf.n_iter_)))
        if kind == "multiclass" and len(clf.classes_) < num_classes:
            # a class absent from this training set: never predicted (finite, far below the rest)
            w = np.zeros((num_classes, x.shape[1]), np.float32)
            b = np.full(num_classes, -1e4, np.float32)
            w[clf.classes_], b[clf.classes_] = clf.coef_, clf.intercept_
            weights.append(w)
            biases.append(b)
        else:
            weights.append(clf.coef_.astype(np.float32))
            biases.append(clf.intercept_.astype(np.float32))
    return Head(np.concatenate(weights), np.concatenate(biases), kind, n_iter)


def prior_bias(y: np.ndarray, kind: str, k: int) -> np.ndarray:
    """The unpenalised bias's optimum with weights at zero: log class frequencies (logits of the positive rate for
    binary and one-vs-rest columns). It is where the bias goes as C → 0, so L-BFGS starts there.

    Starting the bias at 0 instead made strongly regularised float32 fits stop after a couple of iterations
    with the bias far from its optimum: the weights' curvature (1 / (C n)) dwarfs the bias's, the loss change
    of the remaining bias steps is below float32 resolution, and the unconverged head (a near class-mean
    classifier) scored better on validation than the true optimum (log-prior biases outweigh tiny weights)."""
    y = np.asarray(y)
    if kind == "multiclass":
        counts = np.bincount(y.astype(np.int64), minlength=k)[:k].astype(np.float64)
        return np.log((counts + 1e-3) / (counts.sum() + 1e-3 * k)).astype(np.float32)  # absent class: far below
    pos = np.asarray(y, np.float64).reshape(len(y), k).mean(axis=0)
    pos = np.clip(pos, 1e-4, 1 - 1e-4)
    return np.log(pos / (1 - pos)).astype(np.float32)


def fit_torch(x: np.ndarray, y: np.ndarray, c: float, num_classes: int, init: Head | None = None,
              device: str = "cpu", max_iter: int = MAX_ITER) -> Head:
    """Full-batch L-BFGS in float32 on CPU or GPU, on exactly the objective scikit-learn minimises."""
    kind = problem_kind(y, num_classes)
    dev = torch.device(device)
    x_t = torch.as_tensor(np.asarray(x, dtype=np.float32), device=dev)
    n, d = x_t.shape
    k = _out_rows(kind, num_classes)
    if kind == "multiclass":
        y_t = torch.as_tensor(np.asarray(y, dtype=np.int64), device=dev)
    else:
        y_t = torch.as_tensor(np.asarray(y, dtype=np.float32).reshape(n, k), device=dev)
    w = torch.zeros(k, d, device=dev) if init is None else torch.as_tensor(init.weight, device=dev).clone()
    b = torch.as_tensor(prior_bias(y, kind, k), device=dev) if init is None else \
        torch.as_tensor(init.bias, device=dev).clone()
    w.requires_grad_(True)
    b.requires_grad_(True)
    penalty = 1.0 / (2.0 * c * n)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, max_eval=int(max_iter * 1.25),
                            tolerance_grad=TOL, tolerance_change=1e-12, history_size=10,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = torch.addmm(b, x_t, w.T)
        if kind == "multiclass":
            loss = F.cross_entropy(logits, y_t)
        else:  # binary and one-vs-rest: per-class logistic losses, summed over classes, mean over samples
            loss = F.binary_cross_entropy_with_logits(logits, y_t, reduction="sum") / n
        loss = loss + penalty * (w * w).sum()
        loss.backward()
        return loss

    small = dev.type == "cpu" and n * d * k < SMALL_PROBLEM
    with _cpu_threads(1 if small else None):
        opt.step(closure)
    n_iter = int(opt.state[opt._params[0]].get("n_iter", 0))
    return Head(w.detach().cpu().numpy(), b.detach().cpu().numpy(), kind, n_iter)


@contextmanager
def _cpu_threads(n_threads: int | None):
    """Temporarily cap torch's CPU threads: on small problems the thread pool costs more than it saves."""
    if n_threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


FitFn = Callable[..., Head]
IMPLEMENTATIONS: dict[str, FitFn] = {"torch": fit_torch, "sklearn": fit_sklearn}


def get_implementation(name: str) -> FitFn:
    try:
        return IMPLEMENTATIONS[name]
    except KeyError:
        raise ValueError(f"unknown probe implementation {name!r}; choose from {', '.join(IMPLEMENTATIONS)}") from None


# --------------------------------------------------------------------------- the C search


@dataclass(frozen=True)
class Split:
    """Features and targets of one set of samples."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.x)

    def take(self, idx: np.ndarray) -> Split:
        return Split(self.x[idx], self.y[idx])

    @staticmethod
    def concat(a: Split, b: Split) -> Split:
        return Split(np.concatenate([a.x, b.x]), np.concatenate([a.y, b.y]))


def evaluate(head: Head, data: Split, metric: str) -> dict[str, float]:
    """compute_metrics on the head's scores (the dataset's primary metric under `primary`)."""
    return compute_metrics(scores(head, data.x), data.y, metric)


def _nearest(heads: dict[float, Head], c: float) -> Head | None:
    if not heads:
        return None
    return heads[min(heads, key=lambda v: abs(math.log10(v) - math.log10(c)))]


def search_c(fit: FitFn, train: Split, val: Split, metric: str, num_classes: int, *,
             init: Head | None = None, device: str = "cpu", coarse: tuple[float, ...] = COARSE_C,
             refine: tuple[float, ...] = REFINE_STEPS) -> tuple[float, list[dict]]:
    """The C with the best validation score (ties: the smaller C) and every (C, val score) tried, in order;
    always within [min(coarse), max(coarse)].

    Each fit starts from the head of the nearest C already fitted (or `init`): the objective is
    convex, so this changes only how fast the optimiser gets there.
    """
    tried: dict[float, float] = {}
    heads: dict[float, Head] = {}
    sweep: list[dict] = []

    def score(c: float) -> float:
        if c not in tried:
            head = fit(train.x, train.y, c, num_classes, init=_nearest(heads, c) or init, device=device)
            heads[c] = head
            tried[c] = evaluate(head, val, metric)["primary"]
            sweep.append({"value": c, "val_score": tried[c], "n_iter": head.n_iter})
        return tried[c]

    def best_of(cs) -> float:
        return max(sorted(cs), key=lambda c: (score(c), -c))

    best = best_of(coarse)
    lo, hi = min(coarse), max(coarse)
    for step in refine:
        # refine inside the coarse range: around an edge value the outward step would leave it (1e-6 refined
        # three times outwards is 1.3e-7), a C no sweep row below it was ever compared with
        best = best_of([c for c in (best * 10.0 ** -step, best, best * 10.0 ** step) if lo <= c <= hi])
    return best, sweep


# --------------------------------------------------------------------------- splits and few-shot sampling


def _strata(y: np.ndarray) -> np.ndarray:
    """One stratum per sample: its class, or for multi-label rows its first positive class (-1: none)."""
    if y.ndim == 1:
        return y
    return np.where(y.any(axis=1), y.argmax(axis=1), -1)


def holdout_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, val) index arrays: about `fraction` of each class held out, at least one
    sample kept for training; classes with one sample stay in train. Same seed, same split."""
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    strata = _strata(y)
    train, val = [], []
    for s in np.unique(strata):
        idx = rng.permutation(np.flatnonzero(strata == s))
        n_val = min(len(idx) - 1, max(1, round(fraction * len(idx)))) if len(idx) > 1 else 0
        val.extend(idx[:n_val])
        train.extend(idx[n_val:])
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(val, dtype=np.int64))


def few_shot_indices(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k samples per class drawn from `y` (pass only the training pool), sorted.

    Stratified and reproducible: one permutation per class from `seed`, of which the first k are taken,
    so the k-shot sets of one seed are nested (1-shot ⊂ 2-shot ⊂ …). Classes with fewer than k samples
    give all they have. Multi-label rows count for every class they contain; a row is taken once.
    """
    if k < 1:
        raise ValueError(f"shots must be at least 1, got {k}")
    rng = np.random.default_rng(seed)
    members = ([np.flatnonzero(y == c) for c in np.unique(y)] if y.ndim == 1
               else [np.flatnonzero(y[:, c]) for c in range(y.shape[1])])
    order = [rng.permutation(m) for m in members]
    picked: list[int] = []
    seen: set[int] = set()
    for perm in order:
        taken = sum(1 for i in perm if i in seen)
        for i in perm:
            if taken >= k:
                break
            if i not in seen:
                seen.add(int(i))
                picked.append(int(i))
                taken += 1
    return np.sort(np.asarray(picked, dtype=np.int64))


# --------------------------------------------------------------------------- the protocol


@dataclass
class ProbeOutcome:
    c: float
    sweep: list[dict]
    metrics: dict[str, float]
    n_iter: int
    timings: dict[str, float] = field(default_factory=dict)


def linear_probe(train: Split, val: Split, test: Split, *, metric: str, num_classes: int, impl: str = "torch",
                 init: Head | None = None, device: str = "cpu") -> ProbeOutcome:
    """Search C on validation, refit on train + validation, score on test (test is used once, at the end)."""
    fit = get_implementation(impl)
    t0 = time.perf_counter()
    c, sweep = search_c(fit, train, val, metric, num_classes, init=init, device=device)
    t1 = time.perf_counter()
    head = fit(*_xy(Split.concat(train, val)), c, num_classes, init=init, device=device)
    t2 = time.perf_counter()
    return ProbeOutcome(c, sweep, evaluate(head, test, metric), head.n_iter,
                        {"sweep_s": round(t1 - t0, 3), "final_fit_s": round(t2 - t1, 3)})


def _xy(s: Split) -> tuple[np.ndarray, np.ndarray]:
    return s.x, s.y


def class_sizes(y: np.ndarray) -> np.ndarray:
    """Samples per class (multi-label: rows containing the class; classes absent from `y` are left out)."""
    if y.ndim == 1:
        return np.unique(y, return_counts=True)[1]
    counts = y.sum(axis=0)
    return counts[counts > 0]


def clamp_shots(y: np.ndarray, shots: tuple[int, ...]) -> list[tuple[int, int]]:
    """(k used, k requested) per requested k, duplicates of a k used dropped.

    A k above the largest class of the training pool draws the same sample as that class size (every
    class gives all it has), so it is that many shots, not k: recording it as k would claim a few-shot
    point that was never measured."""
    largest = int(class_sizes(y).max()) if len(y) else 0
    out: list[tuple[int, int]] = []
    for k in shots:
        used = min(k, largest)
        if used >= 1 and used not in (u for u, _ in out):
            out.append((used, k))
    return out


def few_shot(train: Split, val: Split, test: Split, *, shots: tuple[int, ...], seeds: tuple[int, ...], metric: str,
             num_classes: int, impl: str = "torch", init: Head | None = None, device: str = "cpu") -> list[dict]:
    """For each k: per seed, k samples per class from `train` only, C searched on `val`, scored on test.

    Returns [{k, seeds, scores, mean, std, c}]; std is the population std over seeds (0 for one seed). A k
    larger than the training pool's largest class is clamped to it (`clamp_shots`); its row then also has
    `requested_k`, and `classes_short` counts the classes with fewer than k samples (they give all they have).
    """
    fit = get_implementation(impl)
    out = []
    sizes = class_sizes(train.y)
    for k, requested in clamp_shots(train.y, shots):
        scores_k, cs = [], []
        for seed in seeds:
            sample = train.take(few_shot_indices(train.y, k, seed))
            c, _ = search_c(fit, sample, val, metric, num_classes, init=init, device=device)
            head = fit(sample.x, sample.y, c, num_classes, init=init, device=device)
            scores_k.append(evaluate(head, test, metric)["primary"])
            cs.append(c)
        row = {"k": k, "seeds": list(seeds), "scores": scores_k, "mean": float(np.mean(scores_k)),
               "std": float(np.std(scores_k)), "c": cs, "classes_short": int((sizes < k).sum())}
        if requested != k:
            row["requested_k"] = requested
        out.append(row)
    return out


# --------------------------------------------------------------------------- comparison (for the report)


def zero_shot_worth(zero_shot: float, few_shot_rows: list[dict]) -> dict:
    """How many labelled examples per class the zero-shot score is worth.

    Interpolates the few-shot mean linearly in log2(k) between measured shots (the CLIP paper's
    reading of its Figure 7). `bound` is "within" for an interpolated value, "below" when zero-shot
    is under the smallest k measured (shots = that k, an upper bound), "above" when over the largest.
    """
    rows = sorted((r["k"], r["mean"]) for r in few_shot_rows)
    if not rows:
        return {"shots": None, "bound": "none"}
    if zero_shot <= rows[0][1]:
        return {"shots": float(rows[0][0]), "bound": "below"}
    for (k0, m0), (k1, m1) in itertools.pairwise(rows):
        if m0 < zero_shot <= m1:
            t = (zero_shot - m0) / (m1 - m0)
            return {"shots": float(2 ** (math.log2(k0) + t * (math.log2(k1) - math.log2(k0)))), "bound": "within"}
    if zero_shot <= max(m for _, m in rows):  # the curve is not monotone: first k whose mean reaches it
        return {"shots": float(next(k for k, m in rows if m >= zero_shot)), "bound": "within"}
    return {"shots": float(rows[-1][0]), "bound": "above"}


def comparison(results: list[dict]) -> list[dict]:
    """Per model × dataset: zero-shot, linear-probe and few-shot primary scores, and the crossover.

    `results` are loaded result dicts (zeroshot.json, linear_probe.json); missing tasks give None.
    """
    table: dict[tuple[str, str], dict] = {}
    for r in results:
        row = table.setdefault((r["model"], r["dataset"]), {
            "model": r["model"], "dataset": r["dataset"], "metric": r.get("metric"),
            "zeroshot": None, "linear_probe": None, "few_shot": {}, "zero_shot_worth": None})
        if r.get("task") == "zeroshot":
            row["zeroshot"] = r["metrics"]["primary"]
        elif r.get("task") == "linear_probe":
            row["linear_probe"] = r["metrics"]["primary"]
            row["few_shot"] = {f["k"]: f["mean"] for f in r.get("few_shot", [])}
            row["_few"] = r.get("few_shot", [])
    for row in table.values():
        few = row.pop("_few", [])
        if row["zeroshot"] is not None and few:
            row["zero_shot_worth"] = zero_shot_worth(row["zeroshot"], few)
    return [table[key] for key in sorted(table)]
