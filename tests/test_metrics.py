"""Tests for bench.metrics: cross-checks against sklearn and hand-computed cases."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from sklearn import metrics as skm

from bench.metrics import (
    METRICS,
    Metric,
    average_precision,
    compute_metrics,
    confusion_matrix,
    eleven_point_map,
    get_metric,
    mean_per_class_accuracy,
    per_class_recall,
    roc_auc,
    topk_accuracy,
)

SEEDS = [0, 1, 2, 3, 4]


def _single_label_problem(seed: int, n: int = 200, c: int = 7):
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, c, size=n)
    # informative but noisy scores: targets get a boost
    scores = rng.normal(size=(n, c))
    scores[np.arange(n), targets] += rng.uniform(0.0, 2.0, size=n)
    return scores, targets


def _multilabel_problem(seed: int, n: int = 150, c: int = 6, quantize: bool = False):
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, c)) < 0.3).astype(np.int64)
    targets[0] = 1  # every class has at least one positive
    scores = rng.normal(size=(n, c)) + targets * rng.uniform(0, 1.5, size=(n, c))
    if quantize:  # lots of ties
        scores = np.round(scores, 0)
    return scores, targets


# --------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [1, 2, 5])
def test_topk_matches_sklearn(seed, k):
    scores, targets = _single_label_problem(seed)
    expected = skm.top_k_accuracy_score(
        targets, scores, k=k, labels=np.arange(scores.shape[1])
    )
    assert topk_accuracy(scores, targets, k=k) == pytest.approx(expected, abs=1e-12)


def test_top1_matches_argmax_accuracy_and_ties_break_to_lowest_index():
    scores = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0]])
    # ties -> lowest class index, as np.argmax
    assert topk_accuracy(scores, np.array([0, 1]), k=1) == 1.0
    assert topk_accuracy(scores, np.array([1, 2]), k=1) == 0.0
    scores, targets = _single_label_problem(7)
    assert topk_accuracy(scores, targets) == pytest.approx(
        skm.accuracy_score(targets, scores.argmax(1))
    )


def test_topk_k_larger_than_classes_is_clamped():
    scores = np.array([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05]])
    targets = np.array([0, 2])
    assert topk_accuracy(scores, targets, k=3) == 1.0
    assert topk_accuracy(scores, targets, k=100) == 1.0


def test_topk_all_correct_and_all_wrong():
    targets = np.array([0, 1, 2, 1])
    correct = np.eye(3)[targets]
    assert topk_accuracy(correct, targets) == 1.0
    wrong = np.eye(3)[(targets + 1) % 3]
    assert topk_accuracy(wrong, targets) == 0.0
    # the target is ranked last -> top-2 misses, top-3 hits
    last = -np.eye(3)[targets]
    assert topk_accuracy(last, targets, k=2) == 0.0
    assert topk_accuracy(last, targets, k=3) == 1.0


def test_topk_multilabel_hit_is_any_positive_in_topk():
    scores = np.array(
        [
            [0.9, 0.5, 0.1],  # top1 = 0 (positive)
            [0.9, 0.5, 0.1],  # top1 = 0 (negative), top2 contains 1 (positive)
            [0.9, 0.5, 0.1],  # only class 2 positive -> miss for k <= 2
        ]
    )
    targets = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 1]])
    assert topk_accuracy(scores, targets, k=1) == pytest.approx(1 / 3)
    assert topk_accuracy(scores, targets, k=2) == pytest.approx(2 / 3)
    assert topk_accuracy(scores, targets, k=5) == 1.0


def test_topk_rejects_bad_k():
    with pytest.raises(ValueError, match="k must be >= 1"):
        topk_accuracy(np.zeros((2, 3)), np.array([0, 1]), k=0)


# --------------------------------------------------------------------------- confusion / recall


@pytest.mark.parametrize("seed", SEEDS)
def test_confusion_matrix_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    k = 6
    preds = rng.integers(0, k, size=300)
    targets = rng.integers(0, k - 1, size=300)  # class k-1 never a target
    cm = confusion_matrix(preds, targets, k)
    assert cm.dtype.kind == "i"
    np.testing.assert_array_equal(
        cm, skm.confusion_matrix(targets, preds, labels=np.arange(k))
    )
    assert cm.sum() == 300
    np.testing.assert_array_equal(cm.sum(axis=1), np.bincount(targets, minlength=k))


def test_confusion_matrix_orientation():
    # true 0 predicted 2 -> row 0, col 2
    cm = confusion_matrix(np.array([2]), np.array([0]), 3)
    assert cm[0, 2] == 1 and cm.sum() == 1


def test_per_class_recall_nan_for_absent_class():
    preds = np.array([0, 1, 1, 0, 2])
    targets = np.array([0, 1, 0, 0, 1])
    rec = per_class_recall(preds, targets, 4)
    np.testing.assert_allclose(rec[:2], [2 / 3, 1 / 2])
    assert np.isnan(rec[2]) and np.isnan(rec[3])


def test_confusion_matrix_validation():
    with pytest.raises(ValueError, match=r"\(3,\).*\(2,\)"):
        confusion_matrix(np.array([0, 1, 2]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="max class 2"):
        confusion_matrix(np.array([0, 1]), np.array([0, 3]), 3)
    with pytest.raises(ValueError, match="out of range"):
        confusion_matrix(np.array([0, -1]), np.array([0, 1]), 3)


# --------------------------------------------------------------------------- mean per class


@pytest.mark.parametrize("seed", SEEDS)
def test_mean_per_class_matches_sklearn_balanced_accuracy(seed):
    scores, targets = _single_label_problem(seed)
    expected = skm.balanced_accuracy_score(targets, scores.argmax(1))
    assert mean_per_class_accuracy(scores, targets) == pytest.approx(expected, abs=1e-12)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("seed", SEEDS)
def test_mean_per_class_ignores_classes_absent_from_targets(seed):
    scores, targets = _single_label_problem(seed, c=8)
    targets = np.where(targets == 3, 4, targets)  # class 3 absent (but may be predicted)
    expected = skm.balanced_accuracy_score(targets, scores.argmax(1))
    got = mean_per_class_accuracy(scores, targets, num_classes=8)
    assert got == pytest.approx(expected, abs=1e-12)


def test_mean_per_class_edge_cases():
    targets = np.array([0, 0, 0, 1])
    assert mean_per_class_accuracy(np.eye(2)[targets], targets) == 1.0
    assert mean_per_class_accuracy(np.eye(2)[1 - targets], targets) == 0.0
    # always predicting class 0: accuracy 3/4, mean per class (1 + 0) / 2
    always0 = np.tile([1.0, 0.0], (4, 1))
    assert topk_accuracy(always0, targets) == 0.75
    assert mean_per_class_accuracy(always0, targets) == 0.5
    with pytest.raises(ValueError, match="num_classes"):
        mean_per_class_accuracy(always0, targets, num_classes=3)
    with pytest.raises(ValueError, match="single-label"):
        mean_per_class_accuracy(always0, np.array([[1, 0]] * 4))


# --------------------------------------------------------------------------- average precision


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("quantize", [False, True])
def test_average_precision_matches_sklearn(seed, quantize):
    scores, targets = _multilabel_problem(seed, quantize=quantize)
    for c in range(scores.shape[1]):
        expected = skm.average_precision_score(targets[:, c], scores[:, c])
        got = average_precision(scores[:, c], targets[:, c])
        assert got == pytest.approx(expected, abs=1e-12)


def test_average_precision_hand_case_and_errors():
    # ranking P N P N N: AP = (1/2)*1 + (1/2)*(2/3) = 5/6
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    y = np.array([1, 0, 1, 0, 0])
    assert average_precision(s, y) == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="no positive"):
        average_precision(s, np.zeros(5, dtype=int))
    with pytest.raises(ValueError, match=r"\(5,\).*\(4,\)"):
        average_precision(s, y[:4])


# --------------------------------------------------------------------------- 11-point mAP

# Hand-computed cases.  Recall thresholds t = 0, 0.1, ..., 1.0; interpolated
# precision p(t) = max precision over operating points with recall >= t.
#
# Case A (no ties), scores .9 .8 .7 .6 .5, positives P N P N N (2 positives):
#   after 1: P=1   R=.5 | after 2: P=1/2 R=.5 | after 3: P=2/3 R=1
#   after 4: P=2/4 R=1  | after 5: P=2/5 R=1
#   t = 0..0.5 (6 points): p = 1;  t = 0.6..1.0 (5 points): p = 2/3
#   AP11 = (6*1 + 5*2/3) / 11 = 28/33
CASE_A = (np.array([0.9, 0.8, 0.7, 0.6, 0.5]), np.array([1, 0, 1, 0, 0]), 28 / 33)
#
# Case B (ties), scores .9 .9 .5 .5 .1, positives P N N P N (2 positives).
# Tied scores form one operating point (order-independent, like sklearn):
#   score>=.9: 2 predicted, 1 TP -> P=1/2 R=1/2
#   score>=.5: 4 predicted, 2 TP -> P=1/2 R=1
#   score>=.1: 5 predicted, 2 TP -> P=2/5 R=1
#   every t: p = 1/2  ->  AP11 = 1/2
#   (an arbitrary sort putting the positive first in the tie would give 8/11.)
CASE_B = (np.array([0.9, 0.9, 0.5, 0.5, 0.1]), np.array([1, 0, 0, 1, 0]), 0.5)
#
# Case C (ties), scores .9 .8 .8 .8 .3 .3, positives P N P P N P (4 positives):
#   score>=.9: 1 pred, 1 TP -> P=1   R=1/4
#   score>=.8: 4 pred, 3 TP -> P=3/4 R=3/4
#   score>=.3: 6 pred, 4 TP -> P=2/3 R=1
#   t = 0, .1, .2 (3 points): p = 1;  t = .3 .. .7 (5 points): p = 3/4
#   t = .8, .9, 1 (3 points): p = 2/3
#   AP11 = (3 + 5*3/4 + 3*2/3) / 11 = 8.75/11 = 35/44
CASE_C = (
    np.array([0.9, 0.8, 0.8, 0.8, 0.3, 0.3]),
    np.array([1, 0, 1, 1, 0, 1]),
    35 / 44,
)
#
# Case D (recall hits a threshold exactly), 10 positives, ranking
# P P P N N N P P P P P P P (13 distinct scores):
#   after 3: P=1 R=3/10;  later points have P = 3/4, 3/5, 3/6, then
#   4/7 .. 10/13 (increasing) at R = .4 .. 1.
#   t = 0 .. .3 (4 points): p = 1  (R = 3/10 counts as >= 0.3 exactly)
#   t = .4 .. 1 (7 points): p = 10/13
#   AP11 = (4 + 7*10/13) / 11 = 122/143
#   (comparing with float 3*0.1 = 0.30000000000000004 would wrongly give 119/143.)
CASE_D = (
    np.linspace(1.0, 0.0, 13),
    np.array([1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1]),
    122 / 143,
)


@pytest.mark.parametrize("case", [CASE_A, CASE_B, CASE_C, CASE_D], ids="ABCD")
def test_eleven_point_hand_cases(case):
    s, y, expected = case
    got = eleven_point_map(s[:, None], y[:, None])
    assert got == pytest.approx(expected, abs=1e-12)
    # sample order does not matter (ties are one operating point)
    perm = np.random.default_rng(0).permutation(len(s))
    assert eleven_point_map(s[perm, None], y[perm, None]) == pytest.approx(expected, abs=1e-12)


def test_eleven_point_map_skips_class_without_positives():
    # class 0 = case A, class 1 = case B, class 2 has no positives (excluded)
    s = np.stack([CASE_A[0], CASE_B[0], np.array([0.1, 0.9, 0.3, 0.2, 0.5])], axis=1)
    y = np.stack([CASE_A[1], CASE_B[1], np.zeros(5, dtype=int)], axis=1)
    # (28/33 + 1/2) / 2 = 89/132
    assert eleven_point_map(s, y) == pytest.approx(89 / 132, abs=1e-12)
    with pytest.raises(ValueError, match="no class has a positive"):
        eleven_point_map(s, np.zeros_like(y))


def test_eleven_point_map_perfect_and_single_label_targets():
    targets = np.array([0, 1, 2, 1])
    assert eleven_point_map(np.eye(3)[targets], np.eye(3, dtype=int)[targets]) == 1.0
    # single-label index targets are one-hot encoded
    scores, t = _single_label_problem(3, c=4)
    assert eleven_point_map(scores, t) == pytest.approx(
        eleven_point_map(scores, np.eye(4, dtype=int)[t])
    )


def _reference_11pt_ap(y: np.ndarray, s: np.ndarray) -> float:
    """Independent reference from sklearn's precision_recall_curve."""
    precision, recall, _ = skm.precision_recall_curve(y, s)
    # sklearn appends the artificial point (recall 0, precision 1); drop it
    precision, recall = precision[:-1], recall[:-1]
    total = 0.0
    for i in range(11):
        total += precision[recall >= i / 10 - 1e-9].max()
    return total / 11


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("quantize", [False, True])
def test_eleven_point_map_matches_sklearn_reference(seed, quantize):
    scores, targets = _multilabel_problem(seed, quantize=quantize)
    expected = np.mean(
        [_reference_11pt_ap(targets[:, c], scores[:, c]) for c in range(scores.shape[1])]
    )
    assert eleven_point_map(scores, targets) == pytest.approx(expected, abs=1e-12)


# --------------------------------------------------------------------------- ROC AUC


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("quantize", [False, True])
def test_roc_auc_1d_matches_sklearn(seed, quantize):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=300)
    s = rng.normal(size=300) + 0.8 * y
    if quantize:
        s = np.round(s, 0)  # ties
    assert roc_auc(s, y) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_roc_auc_two_column_uses_softmax_of_positive(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=250)
    logits = rng.normal(size=(250, 2))
    logits[:, 1] += 0.7 * y
    e = np.exp(logits - logits.max(1, keepdims=True))
    p1 = (e / e.sum(1, keepdims=True))[:, 1]
    expected = skm.roc_auc_score(y, p1)
    assert roc_auc(logits, y) == pytest.approx(expected, abs=1e-12)
    # probabilities as input give the same result
    assert roc_auc(np.stack([1 - p1, p1], 1), y) == pytest.approx(expected, abs=1e-12)


def test_roc_auc_hand_cases_and_errors():
    assert roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert roc_auc(np.array([0.9, 0.8, 0.2, 0.1]), np.array([0, 0, 1, 1])) == 0.0
    # all tied -> 1/2
    assert roc_auc(np.zeros(4), np.array([0, 1, 0, 1])) == 0.5
    with pytest.raises(ValueError, match="only one class"):
        roc_auc(np.array([0.1, 0.5, 0.9]), np.array([1, 1, 1]))
    with pytest.raises(ValueError, match="only one class"):
        roc_auc(np.zeros((3, 2)), np.array([0, 0, 0]))
    with pytest.raises(ValueError, match="binary"):
        roc_auc(np.zeros((3, 3)), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"\(3, 2\).*\(4,\)"):
        roc_auc(np.zeros((3, 2)), np.array([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="max class 1"):
        roc_auc(np.zeros(3), np.array([0, 1, 2]))


# --------------------------------------------------------------------------- validation


def test_input_validation_messages():
    scores = np.zeros((4, 3))
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(5,\)"):
        topk_accuracy(scores, np.array([0, 1, 2, 0, 1]))
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(4, 2\)"):
        eleven_point_map(scores, np.zeros((4, 2), dtype=int))
    with pytest.raises(ValueError, match="max class 2"):
        topk_accuracy(scores, np.array([0, 1, 3, 0]))
    with pytest.raises(ValueError, match="out of range"):
        mean_per_class_accuracy(scores, np.array([0, -1, 2, 0]))
    with pytest.raises(ValueError, match="only 0 and 1"):
        eleven_point_map(scores, np.full((4, 3), 2))
    with pytest.raises(ValueError, match="NaN"):
        topk_accuracy(np.full((4, 3), np.nan), np.array([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="2-D"):
        topk_accuracy(np.zeros(4), np.array([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="empty"):
        topk_accuracy(np.zeros((0, 3)), np.zeros(0, dtype=int))
    with pytest.raises(ValueError, match="integers"):
        topk_accuracy(scores, np.array([0.5, 1, 2, 0]))
    # integral floats and bools are accepted
    assert topk_accuracy(np.eye(3), np.array([0.0, 1.0, 2.0])) == 1.0
    assert eleven_point_map(np.eye(3), np.eye(3, dtype=bool)) == 1.0


# --------------------------------------------------------------------------- registry


def test_registry():
    assert set(METRICS) == {"accuracy", "mean_per_class", "11point_mAP", "roc_auc"}
    for name, m in METRICS.items():
        assert isinstance(m, Metric) and m.name == name and m.higher_is_better
        assert get_metric(name) is m
    assert METRICS["accuracy"].multilabel_ok and METRICS["11point_mAP"].multilabel_ok
    assert not METRICS["mean_per_class"].multilabel_ok
    assert not METRICS["roc_auc"].multilabel_ok
    with pytest.raises(dataclasses.FrozenInstanceError):
        METRICS["accuracy"].name = "x"  # type: ignore[misc]
    with pytest.raises(KeyError, match="11point_mAP.*accuracy.*mean_per_class.*roc_auc"):
        get_metric("top1")
    scores, targets = _single_label_problem(0)
    assert get_metric("accuracy").fn(scores, targets) == topk_accuracy(scores, targets)


# --------------------------------------------------------------------------- compute_metrics


def _check_report(report: dict) -> None:
    for v in report.values():
        if v is None:  # top5 on 5 or fewer classes
            continue
        assert type(v) is float and 0.0 <= v <= 1.0 and not math.isnan(v)


@pytest.mark.parametrize("primary", ["accuracy", "mean_per_class", "11point_mAP"])
def test_compute_metrics_single_label(primary):
    scores, targets = _single_label_problem(1, c=10)
    r = compute_metrics(scores, targets, primary)
    assert set(r) == {"top1", "top5", "mean_per_class", "primary", primary}
    _check_report(r)
    assert r["top1"] == topk_accuracy(scores, targets, 1)
    assert r["top5"] == topk_accuracy(scores, targets, 5)
    assert r["mean_per_class"] == mean_per_class_accuracy(scores, targets)
    assert r["primary"] == r[primary] == METRICS[primary].fn(scores, targets)


def test_compute_metrics_accuracy_equals_top1_and_top5_absent():
    scores, targets = _single_label_problem(2, c=3)
    r = compute_metrics(scores, targets, "accuracy")
    assert r["accuracy"] == r["primary"] == r["top1"]
    assert r["top5"] is None  # 3 classes: top-5 would be 1.0 by construction, so it is not reported


@pytest.mark.parametrize("c,absent", [(2, True), (4, True), (5, True), (6, False)])
def test_compute_metrics_top5_only_when_it_can_miss(c, absent):
    scores, targets = _single_label_problem(3, c=c)
    r = compute_metrics(scores, targets, "accuracy")
    assert (r["top5"] is None) == absent


def test_compute_metrics_multilabel():
    scores, targets = _multilabel_problem(0)
    r = compute_metrics(scores, targets, "11point_mAP")
    assert set(r) == {"top1", "top5", "primary", "11point_mAP"}
    _check_report(r)
    assert r["11point_mAP"] == r["primary"] == eleven_point_map(scores, targets)
    with pytest.raises(ValueError, match="multi-label"):
        compute_metrics(scores, targets, "mean_per_class")
    with pytest.raises(ValueError, match="multi-label"):
        compute_metrics(scores, targets, "roc_auc")


def test_compute_metrics_roc_auc_binary():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=100)
    logits = rng.normal(size=(100, 2))
    r = compute_metrics(logits, y, "roc_auc")
    assert set(r) == {"top1", "top5", "mean_per_class", "primary", "roc_auc"}
    _check_report(r)
    assert r["roc_auc"] == pytest.approx(skm.roc_auc_score(y, logits[:, 1] - logits[:, 0]))
    assert r["top5"] is None


def test_compute_metrics_errors():
    scores, targets = _single_label_problem(0)
    with pytest.raises(KeyError, match="valid names"):
        compute_metrics(scores, targets, "mAP")
    with pytest.raises(ValueError, match=r"\(200, 7\).*\(199,\)"):
        compute_metrics(scores, targets[:-1], "accuracy")
