"""Uncertainty of benchmark numbers: seeded, vectorised bootstrap confidence intervals.

Pure functions on numpy arrays (no I/O), like ``bench.metrics``.

A bootstrap replicate resamples the test images with replacement. The accuracy-type metrics (top-1, top-5,
mean-per-class) depend only on how many resampled images fall in each (class, outcome) cell, so a replicate
is drawn as multinomial cell counts: exactly the distribution of resampling images one by one, at the cost of
the number of cells rather than the number of images (50k images × 1000 replicates in milliseconds). The
ranking metrics (ROC-AUC, 11-point mAP) need every image's score, so their replicates are per-image
resampling counts (weights) applied to one sort of the scores, vectorised over replicates in chunks.

Binary and multi-label sets are resampled stratified: binary within each class, multi-label within groups
of images sharing their first positive class, so every replicate keeps the set's class balance and every
class keeps positives (ROC-AUC and AP are undefined without them). Single-label sets with more classes are
resampled as a whole.
"""

from __future__ import annotations

import numpy as np

from bench.metrics import _as_scores, _as_targets, _ranked, get_metric

__all__ = ["DEFAULT_BOOTSTRAP", "RANKING_BOOTSTRAP", "RANKING_CHUNK", "SIGNIFICANCE", "bootstrap_ci", "bootstrap_top1",
           "mcnemar", "paired_bootstrap", "paired_compare", "percentile_ci", "ranking_resamples"]

DEFAULT_BOOTSTRAP = 1000
# ROC-AUC and 11-point mAP replicates cost a pass over every image per class: at most this many (VOC-2007's
# 5k images × 20 classes take about 4 s for 200 on one busy core); the accuracy-type metrics use all n_boot.
RANKING_BOOTSTRAP = 200
RANKING_CHUNK = 4_000_000  # replicate × image weights held at once by the ranking metrics (~32 MB of int64)


def percentile_ci(values: np.ndarray, level: float = 0.95) -> list[float]:
    """The percentile interval [lo, hi] of bootstrap replicate values (NaN replicates ignored)."""
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.nanpercentile(np.asarray(values, dtype=np.float64), [tail, 100.0 - tail])
    return [float(lo), float(hi)]


def bootstrap_top1(correct: np.ndarray, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0,
                   level: float = 0.95) -> list[float]:
    """CI of an accuracy from per-image correctness (bool ``[N]``).

    Resampling N images with replacement draws Binomial(N, k/N) correct ones, so each replicate is one
    binomial draw: the same distribution as index resampling, without materialising N × n_boot indices."""
    c = np.asarray(correct, dtype=bool).ravel()
    if c.size == 0:
        raise ValueError("bootstrap_top1 needs at least one image")
    rng = np.random.default_rng(seed)
    return percentile_ci(rng.binomial(c.size, c.mean(), size=n_boot) / c.size, level)


def _strata(targets: np.ndarray, multilabel: bool, binary: bool) -> np.ndarray | None:
    """Stratum per image (None: resample the set as a whole)."""
    if multilabel:
        has = targets.any(axis=1)
        return np.where(has, targets.argmax(axis=1), -1)  # first positive class; images with none together
    return targets if binary else None


def _outcomes(s: np.ndarray, t: np.ndarray, multilabel: bool) -> np.ndarray:
    """Per image: 2 = top-1 hit, 1 = top-5 hit only, 0 = miss (a top-1 hit is always a top-5 hit).

    Ties rank the lower class index first, as in ``bench.metrics``. Single-label sets count the classes
    ranked above the target instead of sorting every row (50k × 1000 scores sort in seconds)."""
    if multilabel:
        top = _ranked(s)[:, :min(5, s.shape[1])]
        hit1 = t[np.arange(len(t)), top[:, 0]] == 1
        hit5 = np.take_along_axis(t, top, axis=1).any(axis=1)
    else:
        st = s[np.arange(len(t)), t][:, None]
        lower = np.arange(s.shape[1])[None, :] < t[:, None]
        above = (s > st).sum(axis=1) + ((s == st) & lower).sum(axis=1)
        hit1, hit5 = above == 0, above < 5
    return np.where(hit1, 2, np.where(hit5, 1, 0))


def _cell_replicates(key: np.ndarray, outcome: np.ndarray, n_boot: int, stratified: bool,
                     rng: np.random.Generator, n_outcomes: int = 3) -> np.ndarray:
    """Bootstrap counts ``[B, K, n_outcomes]`` of images per (key, outcome) cell.

    Unstratified: key totals ~ Multinomial(N, n_k / N), then outcomes within each key ~ Multinomial(n_k*, p_k),
    which factorises the joint multinomial over all cells. Stratified: key totals stay n_k."""
    keys, inv = np.unique(key, return_inverse=True)
    counts = np.zeros((len(keys), n_outcomes), dtype=np.int64)
    np.add.at(counts, (inv, outcome), 1)
    n_k = counts.sum(axis=1)
    if stratified:
        totals = np.broadcast_to(n_k, (n_boot, len(keys)))
    else:
        totals = rng.multinomial(int(n_k.sum()), n_k / n_k.sum(), size=n_boot)
    return rng.multinomial(totals, counts / n_k[:, None])


def _weights(n: int, strata: np.ndarray | None, b: int, rng: np.random.Generator) -> np.ndarray:
    """Resampling counts ``[b, n]`` (how often each image is drawn), within each stratum."""
    groups = [np.arange(n)] if strata is None else [np.flatnonzero(strata == g) for g in np.unique(strata)]
    w = np.zeros(b * n, dtype=np.int64)
    rows = (np.arange(b) * n)[:, None]
    for members in groups:
        draws = members[rng.integers(0, len(members), size=(b, len(members)))]
        w += np.bincount((rows + draws).ravel(), minlength=b * n)
    return w.reshape(b, n)


def _weighted_auc(d: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """ROC-AUC ``[b]`` of scores ``d`` ``[N]`` under resampling counts ``w`` ``[b, N]`` (ties count 1/2)."""
    _, group = np.unique(d, return_inverse=True)
    g = group.reshape(-1)
    u = int(g.max()) + 1
    pos, neg = y == 1, y == 0
    b = w.shape[0]
    rows = (np.arange(b) * u)[:, None]
    neg_w = np.bincount((rows + g[neg]).ravel(), weights=w[:, neg].ravel(), minlength=b * u).reshape(b, u)
    below = np.cumsum(neg_w, axis=1) - neg_w  # negative weight strictly below each score group
    wins = below[:, g[pos]] + 0.5 * neg_w[:, g[pos]]
    num = (w[:, pos] * wins).sum(axis=1)
    return num / (w[:, pos].sum(axis=1) * w[:, neg].sum(axis=1))


def _weighted_11pt_map(s: np.ndarray, t: np.ndarray, w: np.ndarray) -> np.ndarray:
    """VOC 11-point mAP ``[b]`` under integer resampling counts ``w``: the same operating points as
    ``bench.metrics.eleven_point_map`` (distinct thresholds), counted with weights; a class with no
    resampled positive is left out of that replicate's mean.

    The interpolated precision at recall >= i/10 is the suffix maximum of precision taken at the first
    point whose recall level floor(10 * tp / n_pos) reaches i (exact integer arithmetic, one pass)."""
    b = w.shape[0]
    aps = np.full((b, s.shape[1]), np.nan)
    rows = np.arange(b)[:, None]
    for c in range(s.shape[1]):
        y = t[:, c]
        if not y.any():
            continue
        order = np.argsort(-s[:, c], kind="stable")
        ss = s[order, c]
        ends = np.append(np.flatnonzero(np.diff(ss) != 0), ss.size - 1)
        wo = w[:, order]
        tps = np.cumsum(wo * y[order], axis=1)[:, ends]
        pred = np.cumsum(wo, axis=1)[:, ends]
        n_pos = tps[:, -1:]
        with np.errstate(invalid="ignore", divide="ignore"):
            prec = np.where(pred > 0, tps / np.maximum(pred, 1), 0.0)
            level = np.where(n_pos > 0, (10 * tps) // np.maximum(n_pos, 1), 0)
        suffix = np.maximum.accumulate(prec[:, ::-1], axis=1)[:, ::-1]
        per_level = np.bincount((rows * 11 + level).ravel(), minlength=b * 11).reshape(b, 11)
        first = np.cumsum(per_level, axis=1) - per_level  # first point with level >= i (levels ascend)
        ap = suffix[rows, np.minimum(first, suffix.shape[1] - 1)].sum(axis=1) / 11.0
        aps[:, c] = np.where(n_pos[:, 0] > 0, ap, np.nan)
    with np.errstate(all="ignore"):
        return np.nanmean(aps, axis=1)


def _ranking_replicates(name: str, s: np.ndarray, t: np.ndarray, strata: np.ndarray | None,
                        n_boot: int, rng: np.random.Generator) -> np.ndarray:
    n = s.shape[0]
    chunk = max(1, RANKING_CHUNK // n)
    out = []
    if name == "roc_auc":
        d = s[:, 1] - s[:, 0] if s.ndim == 2 else s  # as bench.metrics.roc_auc
        fn = lambda w: _weighted_auc(d, t, w)  # noqa: E731
    else:
        onehot = t if t.ndim == 2 else np.eye(s.shape[1], dtype=np.int64)[t]
        fn = lambda w: _weighted_11pt_map(s, onehot, w)  # noqa: E731
    for start in range(0, n_boot, chunk):
        out.append(fn(_weights(n, strata, min(chunk, n_boot - start), rng)))
    return np.concatenate(out)


def ranking_resamples(n_boot: int) -> int:
    """Replicates behind a ROC-AUC or 11-point mAP interval for a requested ``n_boot``."""
    return min(n_boot, RANKING_BOOTSTRAP)


def bootstrap_ci(scores: np.ndarray, targets: np.ndarray, primary: str, n_boot: int = DEFAULT_BOOTSTRAP,
                 seed: int = 0, level: float = 0.95) -> dict[str, list[float]]:
    """95% percentile CIs for every non-None metric ``compute_metrics(scores, targets, primary)`` reports:
    ``{"top1": [lo, hi], "top5": ..., "mean_per_class": ..., <primary name>: ..., "primary": ...}``.

    Seeded: the same inputs, ``n_boot`` and ``seed`` give the same intervals. ``n_boot=0`` gives ``{}``.
    ROC-AUC and 11-point mAP use ``min(n_boot, RANKING_BOOTSTRAP)`` replicates (see ``ranking_resamples``)."""
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    if n_boot == 0:
        return {}
    metric = get_metric(primary)
    s = _as_scores(scores)
    t, multilabel = _as_targets(targets, s)
    binary = not multilabel and s.shape[1] == 2
    strata = _strata(t, multilabel, binary)
    rng = np.random.default_rng(seed)
    outcome = _outcomes(s, t, multilabel)
    key = t if not multilabel else strata
    cells = _cell_replicates(key, outcome, n_boot, stratified=strata is not None, rng=rng)
    n = s.shape[0]
    reps: dict[str, np.ndarray] = {"top1": cells[:, :, 2].sum(axis=1) / n}
    if s.shape[1] > 5:
        reps["top5"] = cells[:, :, 1:].sum(axis=(1, 2)) / n
    if not multilabel:
        totals = cells.sum(axis=2)
        with np.errstate(invalid="ignore", divide="ignore"):
            reps["mean_per_class"] = np.nanmean(np.where(totals > 0, cells[:, :, 2] / totals, np.nan), axis=1)
    if metric.name == "accuracy":
        reps[metric.name] = reps["top1"]
    elif metric.name == "mean_per_class":
        reps[metric.name] = reps["mean_per_class"]
    else:
        reps[metric.name] = _ranking_replicates(metric.name, s, t, strata, ranking_resamples(n_boot), rng)
    reps["primary"] = reps[metric.name]
    return {k: percentile_ci(v, level) for k, v in reps.items()}


# ----------------------------------------------------------------------------- paired comparisons

EXACT_MCNEMAR_BELOW = 25  # discordant pairs under which McNemar's chi-square is replaced by the exact binomial


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """McNemar's test of two classifiers' top-1 on the same images (bool ``[N]`` each, same order).

    ``b``/``c``: images only A / only B gets right. Exact two-sided binomial test (p of b out of b + c at 1/2)
    when ``b + c < EXACT_MCNEMAR_BELOW``, else the chi-square statistic with continuity correction (1 dof).
    No discordant pair: p = 1."""
    a, b_ = np.asarray(correct_a, dtype=bool).ravel(), np.asarray(correct_b, dtype=bool).ravel()
    if a.shape != b_.shape:
        raise ValueError(f"paired correctness must have equal shapes, got {a.shape} and {b_.shape}")
    b, c = int((a & ~b_).sum()), int((~a & b_).sum())
    n = b + c
    if n == 0:
        return {"b": b, "c": c, "test": "exact", "p": 1.0}
    if n < EXACT_MCNEMAR_BELOW:
        from scipy.stats import binom

        p = min(1.0, 2.0 * float(binom.cdf(min(b, c), n, 0.5)))
        return {"b": b, "c": c, "test": "exact", "p": p}
    from scipy.stats import chi2

    stat = (abs(b - c) - 1.0) ** 2 / n
    return {"b": b, "c": c, "test": "chi2", "statistic": stat, "p": float(chi2.sf(stat, 1))}


def paired_bootstrap(correct_a: np.ndarray, correct_b: np.ndarray, n_boot: int = DEFAULT_BOOTSTRAP,
                     seed: int = 0, level: float = 0.95) -> dict:
    """Paired bootstrap of the top-1 difference A − B on the same images: ``{"delta", "ci95", "p"}``.

    The difference depends only on how many resampled images fall in each of the four (A right?, B right?)
    cells, so replicates are multinomial cell counts. ``p`` is the two-sided bootstrap p-value
    (twice the smaller tail share of replicates on either side of 0, at most 1)."""
    a, b_ = np.asarray(correct_a, dtype=bool).ravel(), np.asarray(correct_b, dtype=bool).ravel()
    if a.shape != b_.shape or a.size == 0:
        raise ValueError(f"paired correctness must have equal non-empty shapes, got {a.shape} and {b_.shape}")
    n = a.size
    only_a, only_b = int((a & ~b_).sum()), int((~a & b_).sum())
    delta = (only_a - only_b) / n
    if only_a == only_b == 0:
        return {"delta": 0.0, "ci95": [0.0, 0.0], "p": 1.0}
    rng = np.random.default_rng(seed)
    cells = rng.multinomial(n, [only_a / n, only_b / n, 1.0 - (only_a + only_b) / n], size=n_boot)
    reps = (cells[:, 0] - cells[:, 1]) / n
    p = min(1.0, 2.0 * min((reps <= 0).mean(), (reps >= 0).mean()))
    return {"delta": float(delta), "ci95": percentile_ci(reps, level), "p": float(p)}


SIGNIFICANCE = 0.05  # a paired difference with p below this is reported as significant


def _two_sided_p(reps: np.ndarray) -> float:
    """Twice the smaller share of replicates on either side of 0 (at most 1), NaN replicates ignored."""
    r = np.asarray(reps, dtype=np.float64)
    r = r[~np.isnan(r)]
    if r.size == 0:
        return float("nan")
    return float(min(1.0, 2.0 * min((r <= 0).mean(), (r >= 0).mean())))


def _paired_mean_per_class(ca: np.ndarray, cb: np.ndarray, t: np.ndarray, n_boot: int,
                           rng: np.random.Generator) -> tuple[float, np.ndarray]:
    outcome = 2 * ca.astype(np.int64) + cb.astype(np.int64)  # 3: both right, 2: only A, 1: only B, 0: neither
    keys = np.unique(t)
    delta = float(np.mean([ca[t == k].mean() - cb[t == k].mean() for k in keys]))
    cells = _cell_replicates(t, outcome, n_boot, stratified=False, rng=rng, n_outcomes=4)
    totals = cells.sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = np.where(totals > 0, (cells[:, :, 2] - cells[:, :, 1]) / totals, np.nan)
        return delta, np.nanmean(diff, axis=1)


def _paired_ranking(name: str, sa: np.ndarray, sb: np.ndarray, t: np.ndarray, n_boot: int,
                    seed: int) -> tuple[float, np.ndarray]:
    multilabel = t.ndim == 2
    strata = _strata(t, multilabel, binary=not multilabel and name == "roc_auc")
    # the same seed draws the same resampling weights for both: that is what pairs the replicates
    reps_a = _ranking_replicates(name, sa, t, strata, n_boot, np.random.default_rng(seed))
    reps_b = _ranking_replicates(name, sb, t, strata, n_boot, np.random.default_rng(seed))
    ones = np.ones((1, t.shape[0]), dtype=np.int64)
    if name == "roc_auc":
        point = [_weighted_auc(s, t, ones)[0] for s in (sa, sb)]
    else:
        onehot = t if multilabel else np.eye(sa.shape[1], dtype=np.int64)[t]
        point = [_weighted_11pt_map(s, onehot, ones)[0] for s in (sa, sb)]
    return float(point[0] - point[1]), reps_a - reps_b


def paired_compare(a: dict, b: dict, metric: str, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0,
                   level: float = 0.95) -> dict:
    """Paired test of result A against result B on the same images, from their per-image records
    (``bench.per_image.record``): ``{"metric", "delta" (A − B), "ci95", "p", "test", "resamples", ...}``.

    The metric compared is the dataset's primary one. Accuracy: McNemar's test gives ``p`` (``b``/``c``: images
    only A / only B gets right) and the paired bootstrap the interval. Mean-per-class accuracy, ROC-AUC and
    11-point mAP: a paired bootstrap (both results scored on the same resampled images) gives interval and
    two-sided ``p``. ValueError when the records do not hold the same images' targets or lack a field."""
    ta, tb = np.asarray(a["targets"]), np.asarray(b["targets"])
    if ta.shape != tb.shape or not np.array_equal(ta, tb):
        raise ValueError("the two per-image records do not have the same targets: not the same images")
    ca, cb = np.asarray(a["correct"], dtype=bool), np.asarray(b["correct"], dtype=bool)
    if metric == "accuracy":
        mc = mcnemar(ca, cb)
        pb = paired_bootstrap(ca, cb, n_boot=n_boot, seed=seed, level=level)
        return {"metric": metric, "delta": pb["delta"], "ci95": pb["ci95"], "p": mc["p"],
                "test": f"McNemar ({'exact binomial' if mc['test'] == 'exact' else 'chi-square'})",
                "b": mc["b"], "c": mc["c"], "resamples": n_boot}
    rng = np.random.default_rng(seed)
    if metric == "mean_per_class":
        if ta.ndim != 1:
            raise ValueError("mean-per-class accuracy needs single-label targets")
        delta, reps = _paired_mean_per_class(ca, cb, ta, n_boot, rng)
        n = n_boot
    elif metric in ("roc_auc", "11point_mAP"):
        if "scores" not in a or "scores" not in b:
            raise ValueError(f"{metric} needs the per-image scores, which one of the records lacks")
        n = ranking_resamples(n_boot)
        delta, reps = _paired_ranking(metric, np.asarray(a["scores"], dtype=np.float64),
                                      np.asarray(b["scores"], dtype=np.float64), ta, n, seed)
    else:
        raise ValueError(f"no paired test for metric {metric!r}")
    if np.all(reps == 0) and delta == 0:
        return {"metric": metric, "delta": 0.0, "ci95": [0.0, 0.0], "p": 1.0, "test": "paired bootstrap",
                "resamples": n}
    return {"metric": metric, "delta": delta, "ci95": percentile_ci(reps, level), "p": _two_sided_p(reps),
            "test": "paired bootstrap", "resamples": n}
