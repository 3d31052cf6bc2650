"""Evaluation metrics for zero-shot classification on the ELEVATER datasets.

Pure functions on numpy arrays: no I/O, no torch.

Conventions
-----------
``scores``
    float array ``[N, C]`` (logits or probabilities; higher = more likely).
    Must be finite.
``targets``
    int array ``[N]`` of class indices (single-label), or a {0, 1} array
    ``[N, C]`` (multi-label, e.g. VOC-2007).

Ties in ``scores`` are broken towards the lowest class index for top-k /
argmax predictions (like ``np.argmax``).  Ranking metrics (average precision,
11-point mAP, ROC AUC) treat tied scores as one threshold, like sklearn, so
they do not depend on sample order.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ELEVATER_METRIC_NAMES",
    "IMPLEMENTATIONS",
    "Metric",
    "METRICS",
    "average_precision",
    "compute_metrics",
    "confusion_matrix",
    "eleven_point_map",
    "get_implementation",
    "get_metric",
    "mean_per_class_accuracy",
    "per_class_recall",
    "roc_auc",
    "top1_accuracy",
    "topk_accuracy",
]


# --------------------------------------------------------------------------- validation


def _as_scores(scores: np.ndarray, ndim: tuple[int, ...] = (2,)) -> np.ndarray:
    arr = np.asarray(scores)
    if arr.dtype == bool or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise ValueError(f"scores must be a numeric array, got dtype {arr.dtype}")
    if arr.ndim not in ndim:
        want = " or ".join(f"{d}-D" for d in ndim)
        raise ValueError(f"scores must be {want}, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"scores is empty (shape {arr.shape})")
    if arr.ndim == 2 and arr.shape[1] == 0:
        raise ValueError(f"scores has no classes (shape {arr.shape})")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError("scores contain NaN or infinite values")
    return arr


def _as_int_array(x: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64, copy=False)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{what} must contain integers, got non-integral values")
        return arr.astype(np.int64)
    raise ValueError(f"{what} must be an integer array, got dtype {arr.dtype}")


def _check_indices(arr: np.ndarray, num_classes: int, what: str) -> None:
    if arr.size == 0:
        return
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"{what} index {bad} out of range for {num_classes} classes "
            f"(valid indices 0..{num_classes - 1}, max class {num_classes - 1})"
        )


def _as_num_classes(num_classes: int) -> int:
    try:
        n = operator.index(num_classes)
    except TypeError:
        raise ValueError(f"num_classes must be an int, got {num_classes!r}") from None
    if n < 1:
        raise ValueError(f"num_classes must be >= 1, got {n}")
    return n


def _as_targets(targets: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, bool]:
    """Validate targets against 2-D scores; return (targets as int64, is_multilabel)."""
    n, c = scores.shape
    raw = np.asarray(targets)
    if raw.shape == (n,):
        t = _as_int_array(raw, "targets")
        _check_indices(t, c, "target")
        return t, False
    if raw.shape == (n, c):
        t = _as_int_array(raw, "multi-label targets")
        if not np.all((t == 0) | (t == 1)):
            raise ValueError("multi-label targets must contain only 0 and 1")
        return t, True
    raise ValueError(
        f"scores shape {scores.shape} and targets shape {raw.shape} do not match: "
        f"expected targets of shape ({n},) (class indices) or ({n}, {c}) (multi-label 0/1)"
    )


def _one_hot(targets: np.ndarray, num_classes: int) -> np.ndarray:
    out = np.zeros((targets.shape[0], num_classes), dtype=np.int64)
    out[np.arange(targets.shape[0]), targets] = 1
    return out


def _ranked(scores: np.ndarray) -> np.ndarray:
    """Class indices per row sorted by descending score, ties -> lower index first."""
    return np.argsort(-scores, axis=1, kind="stable")


# --------------------------------------------------------------------------- accuracy


def topk_accuracy(scores: np.ndarray, targets: np.ndarray, k: int = 1) -> float:
    """Fraction of samples whose target is among the k highest-scored classes.

    ``k`` larger than the number of classes is clamped to it.  For multi-label
    targets a sample is a hit when any of its top-k classes is positive.
    """
    s = _as_scores(scores)
    t, multilabel = _as_targets(targets, s)
    k = operator.index(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, s.shape[1])
    top = _ranked(s)[:, :k]
    if multilabel:
        hits = np.take_along_axis(t, top, axis=1).any(axis=1)
    else:
        hits = (top == t[:, None]).any(axis=1)
    return float(hits.mean())


def top1_accuracy(scores: np.ndarray, targets: np.ndarray) -> float:
    """Top-1 accuracy (``topk_accuracy`` with ``k=1``)."""
    return topk_accuracy(scores, targets, k=1)


def confusion_matrix(
    predictions: np.ndarray, targets: np.ndarray, num_classes: int
) -> np.ndarray:
    """Integer confusion matrix ``[num_classes, num_classes]``; rows = true, cols = predicted."""
    k = _as_num_classes(num_classes)
    p = _as_int_array(predictions, "predictions")
    t = _as_int_array(targets, "targets")
    if p.ndim != 1 or t.ndim != 1 or p.shape != t.shape:
        raise ValueError(
            f"predictions shape {p.shape} and targets shape {t.shape} must be equal 1-D shapes"
        )
    _check_indices(p, k, "prediction")
    _check_indices(t, k, "target")
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k).astype(np.int64)


def per_class_recall(
    predictions: np.ndarray, targets: np.ndarray, num_classes: int
) -> np.ndarray:
    """Recall of each class (float array ``[num_classes]``); NaN for classes with no samples."""
    cm = confusion_matrix(predictions, targets, num_classes)
    support = cm.sum(axis=1)
    recall = np.full(cm.shape[0], np.nan)
    present = support > 0
    recall[present] = np.diag(cm)[present] / support[present]
    return recall


def mean_per_class_accuracy(
    scores: np.ndarray, targets: np.ndarray, num_classes: int | None = None
) -> float:
    """Mean over classes present in ``targets`` of per-class recall of argmax predictions.

    Equals sklearn ``balanced_accuracy_score(targets, scores.argmax(1))``.
    Single-label only.  ``num_classes``, if given, must equal ``scores.shape[1]``.
    """
    s = _as_scores(scores)
    if num_classes is not None and _as_num_classes(num_classes) != s.shape[1]:
        raise ValueError(
            f"num_classes={num_classes} does not match scores shape {s.shape}"
        )
    t, multilabel = _as_targets(targets, s)
    if multilabel:
        raise ValueError("mean_per_class_accuracy needs single-label targets of shape [N]")
    preds = _ranked(s)[:, 0]
    return float(np.nanmean(per_class_recall(preds, t, s.shape[1])))


# --------------------------------------------------------------------------- ranking metrics


def _binary_inputs(
    scores_1d: np.ndarray, positives_1d: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    s = _as_scores(scores_1d, ndim=(1,))
    y = _as_int_array(positives_1d, "positives")
    if y.shape != s.shape:
        raise ValueError(
            f"scores shape {s.shape} and positives shape {y.shape} do not match"
        )
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("positives must contain only 0 and 1")
    return s, y


def _pr_counts(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (true positives, predicted positives) at each distinct threshold,
    from the highest score down; tied scores form one threshold."""
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    # last index of each group of equal scores
    ends = np.flatnonzero(np.diff(s_sorted) != 0)
    ends = np.append(ends, s_sorted.size - 1)
    tps = np.cumsum(y_sorted)[ends]
    return tps, ends + 1


def average_precision(scores_1d: np.ndarray, positives_1d: np.ndarray) -> float:
    """Non-interpolated average precision of one binary problem.

    ``sum_n (R_n - R_{n-1}) * P_n`` over distinct score thresholds; equals sklearn
    ``average_precision_score``.  Raises ValueError when there are no positives.
    """
    s, y = _binary_inputs(scores_1d, positives_1d)
    n_pos = int(y.sum())
    if n_pos == 0:
        raise ValueError("average_precision is undefined: no positive samples")
    tps, predicted = _pr_counts(s, y)
    precision = tps / predicted
    recall_gain = np.diff(tps, prepend=0) / n_pos
    return float(np.sum(recall_gain * precision))


def _eleven_point_ap(s: np.ndarray, y: np.ndarray) -> float:
    n_pos = int(y.sum())
    tps, predicted = _pr_counts(s, y)
    precision = tps / predicted
    ap = 0.0
    for i in range(11):
        # recall >= i/10  <=>  10 * tp >= i * n_pos   (exact, no float rounding)
        mask = 10 * tps >= i * n_pos
        ap += precision[mask].max()  # never empty: the last threshold has recall 1
    return ap / 11.0


def eleven_point_map(scores: np.ndarray, targets: np.ndarray) -> float:
    """VOC-2007 11-point interpolated mean average precision.

    Per class: at each recall threshold t in {0, 0.1, ..., 1.0} take the maximum
    precision over operating points with recall >= t, average the 11 values;
    then average over the classes with at least one positive.  Operating points
    are the distinct score thresholds (ties count as one point, like sklearn's
    ``precision_recall_curve``); recall is compared with t exactly.

    ``targets`` are {0, 1} ``[N, C]``; single-label ``[N]`` indices are one-hot encoded.
    """
    s = _as_scores(scores)
    t, multilabel = _as_targets(targets, s)
    if not multilabel:
        t = _one_hot(t, s.shape[1])
    aps = [
        _eleven_point_ap(s[:, c], t[:, c]) for c in range(s.shape[1]) if t[:, c].any()
    ]
    if not aps:
        raise ValueError("eleven_point_map is undefined: no class has a positive sample")
    return float(np.mean(aps))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x in ascending order, ties get their average rank."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)  # rank of the last member of each group
    avg = upper - (counts - 1) / 2.0
    return avg[inverse.reshape(-1)]


def roc_auc(scores: np.ndarray, targets: np.ndarray) -> float:
    """Area under the ROC curve of a binary problem.

    ``scores`` is ``[N]`` (score of the positive class) or ``[N, 2]``, in which
    case ``scores[:, 1] - scores[:, 0]`` is used: a monotone function of
    ``softmax(scores)[:, 1]`` for logits (and of ``scores[:, 1]`` for
    probabilities) that does not saturate into ties.  ``targets`` are 0/1 of
    shape ``[N]``.  Tied scores count 1/2, like sklearn ``roc_auc_score``.
    """
    s = _as_scores(scores, ndim=(1, 2))
    if s.ndim == 2:
        if s.shape[1] != 2:
            raise ValueError(
                f"roc_auc is for binary problems: scores must be [N] or [N, 2], got shape {s.shape}"
            )
        s = s[:, 1] - s[:, 0]
    y = _as_int_array(targets, "targets")
    if y.shape != s.shape:
        raise ValueError(
            f"scores shape {np.shape(scores)} and targets shape {np.shape(targets)} do not match: "
            f"roc_auc expects targets of shape ({s.shape[0]},) with values 0/1"
        )
    _check_indices(y, 2, "target")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        present = 1 if n_pos else 0
        raise ValueError(
            f"roc_auc is undefined when only one class is present in targets (all {present})"
        )
    ranks = _average_ranks(s)
    auc = (ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return float(auc)


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Metric:
    """A named metric ``fn(scores, targets) -> float``."""

    name: str
    fn: Callable[[np.ndarray, np.ndarray], float]
    higher_is_better: bool = True
    multilabel_ok: bool = False


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("accuracy", top1_accuracy, multilabel_ok=True),
        Metric("mean_per_class", mean_per_class_accuracy, multilabel_ok=False),
        Metric("11point_mAP", eleven_point_map, multilabel_ok=True),
        Metric("roc_auc", roc_auc, multilabel_ok=False),
    )
}


def get_metric(name: str) -> Metric:
    """Look up a metric by name; KeyError lists the valid names."""
    try:
        return METRICS[name]
    except (KeyError, TypeError):
        raise KeyError(
            f"unknown metric {name!r}; valid names: {', '.join(sorted(METRICS))}"
        ) from None


def _bench_metrics(s: np.ndarray, t: np.ndarray, multilabel: bool, metric: Metric) -> dict[str, float | None]:
    """bench's own definitions (this module's functions)."""
    out: dict[str, float | None] = {
        "top1": topk_accuracy(s, t, k=1),
        # top-5 of 5 or fewer classes is 1.0 by construction, not a measurement
        "top5": topk_accuracy(s, t, k=5) if s.shape[1] > 5 else None,
    }
    if not multilabel:
        out["mean_per_class"] = mean_per_class_accuracy(s, t)
    out[metric.name] = float(metric.fn(s, t))
    return out


def _vision_evaluation():
    """ELEVATER's metric package, imported only when asked for (it imports cv2 and pycocotools)."""
    from bench.errors import BenchError  # late: keep this module free of bench imports for pure use

    try:
        import vision_evaluation.evaluators as v_eval
    except ImportError as exc:
        raise BenchError(
            f"metric implementation 'elevater' needs ELEVATER's metric package vision-evaluation "
            f"(import failed: {exc}); install it with: pip install -e '.[elevater]'"
        ) from None
    return v_eval


def _ve_report(evaluator, s: np.ndarray, t: np.ndarray) -> float:
    evaluator.add_predictions(s, t)
    return float(next(iter(evaluator.get_report().values())))


def _ve_topk(k: int) -> Callable[[np.ndarray, np.ndarray], float]:
    return lambda s, t: _ve_report(_vision_evaluation().TopKAccuracyEvaluator(k), s, t)


def _ve_roc_auc(s: np.ndarray, t: np.ndarray) -> float:
    # the toolkit's metric.roc_auc and RocAucEvaluator both score column 1 of an [N, 2] matrix
    return _ve_report(_vision_evaluation().RocAucEvaluator(), s, t)


# bench metric name -> the vision-evaluation evaluator ELEVATER's toolkit
# (vision_benchmark/evaluation/metric.py get_metric) uses for a dataset whose TEST.METRIC is
# ELEVATER_METRIC_NAMES[name].
ELEVATER_EVALUATORS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": _ve_topk(1),
    "mean_per_class": lambda s, t: _ve_report(_vision_evaluation().BalancedAccuracyScoreEvaluator(), s, t),
    "11point_mAP": lambda s, t: _ve_report(_vision_evaluation().MeanAveragePrecisionNPointsEvaluator(11), s, t),
    "roc_auc": _ve_roc_auc,
}
# bench metric name -> the toolkit's TEST.METRIC spelling (vision_benchmark/resources/datasets/*.yaml)
ELEVATER_METRIC_NAMES: dict[str, str] = {
    "accuracy": "accuracy", "mean_per_class": "mean-per-class", "11point_mAP": "11point_mAP", "roc_auc": "roc_auc",
}


def _elevater_metrics(s: np.ndarray, t: np.ndarray, multilabel: bool, metric: Metric) -> dict[str, float | None]:
    """vision-evaluation's evaluators, as ELEVATER's server scores a submission. Its top-k and
    balanced-accuracy evaluators are single-label only: multi-label results carry None there."""
    _vision_evaluation()  # fail with the install hint before computing anything
    out: dict[str, float | None] = {
        "top1": None if multilabel else _ve_topk(1)(s, t),
        "top5": _ve_topk(5)(s, t) if s.shape[1] > 5 and not multilabel else None,
    }
    if not multilabel:
        out["mean_per_class"] = ELEVATER_EVALUATORS["mean_per_class"](s, t)
    out[metric.name] = ELEVATER_EVALUATORS[metric.name](s, t)
    return out


def _cb_topk(s: np.ndarray, t: np.ndarray, k: int) -> float:
    # CLIP_benchmark's accuracy(): the target is among the k highest logits (torch.topk)
    top = _ranked(s)[:, :k]
    return float((top == t[:, None]).any(axis=1).mean())


def unsupported(implementation: str, metric: str, multilabel: bool) -> str | None:
    """Why `implementation` cannot score a dataset with primary `metric` (None: it can), so a run can refuse
    before encoding anything rather than after."""
    if implementation == "clip_benchmark" and (multilabel or metric not in ("accuracy", "mean_per_class")):
        return (f"metric implementation 'clip_benchmark' defines accuracy and mean_per_class for single-label "
                f"targets only (its zero-shot evaluate() reports acc1, acc5, mean_per_class_recall); got "
                f"{metric!r}{' with multi-label targets' if multilabel else ''}")
    return None


def _clip_benchmark_metrics(s: np.ndarray, t: np.ndarray, multilabel: bool,
                            metric: Metric) -> dict[str, float | None]:
    """CLIP_benchmark's zero-shot definitions (metrics/zeroshot_classification.py evaluate()):
    acc1, acc5 (only when C >= 5), mean-per-class recall = sklearn balanced_accuracy_score of argmax."""
    from sklearn.metrics import balanced_accuracy_score

    reason = unsupported("clip_benchmark", metric.name, multilabel)
    if reason:
        raise ValueError(reason)
    mpc = float(balanced_accuracy_score(t, _ranked(s)[:, 0]))
    out: dict[str, float | None] = {
        "top1": _cb_topk(s, t, 1),
        "top5": _cb_topk(s, t, 5) if s.shape[1] >= 5 else None,
        "mean_per_class": mpc,
    }
    out[metric.name] = out["top1"] if metric.name == "accuracy" else mpc
    return out


# implementation name -> fn(scores, targets, is_multilabel, metric) -> metrics dict
IMPLEMENTATIONS: dict[str, Callable[[np.ndarray, np.ndarray, bool, Metric], dict[str, float | None]]] = {
    "bench": _bench_metrics,
    "elevater": _elevater_metrics,
    "clip_benchmark": _clip_benchmark_metrics,
}


def get_implementation(name: str) -> Callable[[np.ndarray, np.ndarray, bool, Metric], dict[str, float | None]]:
    """Look up a metric implementation by name; KeyError lists the valid names."""
    try:
        return IMPLEMENTATIONS[name]
    except (KeyError, TypeError):
        raise KeyError(
            f"unknown metric implementation {name!r}; valid names: {', '.join(sorted(IMPLEMENTATIONS))}"
        ) from None


def compute_metrics(
    scores: np.ndarray, targets: np.ndarray, primary: str, *, implementation: str = "bench"
) -> dict[str, float]:
    """Standard report: ``top1``, ``top5`` (None when C <= 5: every sample would be a hit),
    ``mean_per_class`` (single-label only), ``primary`` and ``<primary name>`` (same value).

    ``implementation`` chooses whose definitions compute them: ``bench`` (this module),
    ``elevater`` (ELEVATER's vision-evaluation package) or ``clip_benchmark`` (CLIP_benchmark's).
    See docs/metrics.md for where they differ."""
    metric = get_metric(primary)
    impl = get_implementation(implementation)
    s = _as_scores(scores)
    t, multilabel = _as_targets(targets, s)
    if multilabel and not metric.multilabel_ok:
        raise ValueError(f"metric {metric.name!r} does not support multi-label targets")
    out = impl(s, t, multilabel, metric)
    out["primary"] = out[metric.name]
    return out
