"""bench.metrics implementations: `elevater` equals vision-evaluation's evaluators, `clip_benchmark`
equals CLIP_benchmark's functions, and the documented differences from bench's own metrics (docs/metrics.md)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.errors import BenchError
from bench.metrics import IMPLEMENTATIONS, compute_metrics, eleven_point_map, mean_per_class_accuracy

SEEDS = [0, 1, 2]


def _probs(rng: np.random.Generator, n: int, c: int) -> np.ndarray:
    logits = rng.normal(size=(n, c)) * 3
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _single(seed: int, n: int = 120, c: int = 8):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, c, size=n)
    s = _probs(rng, n, c)
    s[np.arange(n), t] += rng.uniform(0, 0.5, size=n)
    return s / s.sum(axis=1, keepdims=True), t


@pytest.fixture(scope="module")
def v_eval():
    return pytest.importorskip("vision_evaluation.evaluators", reason="vision-evaluation not installed")


def _report(evaluator, s, t) -> float:
    evaluator.add_predictions(s, t)
    return next(iter(evaluator.get_report().values()))


@pytest.mark.parametrize("seed", SEEDS)
def test_elevater_top1_and_mean_per_class_equal_vision_evaluation(v_eval, seed):
    s, t = _single(seed)
    m = compute_metrics(s, t, "mean_per_class", implementation="elevater")
    assert m["top1"] == _report(v_eval.TopKAccuracyEvaluator(1), s, t)
    assert m["top5"] == _report(v_eval.TopKAccuracyEvaluator(5), s, t)
    assert m["mean_per_class"] == m["primary"] == _report(v_eval.BalancedAccuracyScoreEvaluator(), s, t)
    assert compute_metrics(s, t, "accuracy", implementation="elevater")["primary"] == m["top1"]


@pytest.mark.parametrize("seed", SEEDS)
def test_elevater_11point_map_multilabel_equals_vision_evaluation(v_eval, seed):
    rng = np.random.default_rng(seed)
    t = (rng.random((90, 6)) < 0.3).astype(np.int64)
    t[0] = 1  # every class has a positive
    s = rng.random((90, 6)) + 0.4 * t
    want = _report(v_eval.MeanAveragePrecisionNPointsEvaluator(11), s, t)
    m = compute_metrics(s, t, "11point_mAP", implementation="elevater")
    assert m["11point_mAP"] == m["primary"] == pytest.approx(want, abs=1e-12)
    assert m["top1"] is None and "mean_per_class" not in m  # no multi-label top-k in vision-evaluation


@pytest.mark.parametrize("seed", SEEDS)
def test_elevater_roc_auc_equals_vision_evaluation(v_eval, seed):
    s, t = _single(seed, n=80, c=2)
    m = compute_metrics(s, t, "roc_auc", implementation="elevater")
    assert m["roc_auc"] == _report(v_eval.RocAucEvaluator(), s, t)
    # bench's own roc_auc ranks s1 - s0; on probabilities that is the same ranking as s1
    assert m["roc_auc"] == pytest.approx(compute_metrics(s, t, "roc_auc")["roc_auc"], abs=1e-12)


def test_elevater_missing_package_names_the_extra(monkeypatch):
    import builtins

    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name.startswith("vision_evaluation"):
            raise ImportError("No module named 'vision_evaluation'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)
    s, t = _single(0)
    with pytest.raises(BenchError, match=r"pip install -e '\.\[elevater\]'"):
        compute_metrics(s, t, "accuracy", implementation="elevater")


def test_unknown_implementation_lists_valid_names():
    s, t = _single(0)
    with pytest.raises(KeyError, match="clip_benchmark"):
        compute_metrics(s, t, "accuracy", implementation="sklearn")
    assert set(IMPLEMENTATIONS) == {"bench", "elevater", "clip_benchmark"}


@pytest.mark.parametrize("seed", SEEDS)
def test_clip_benchmark_equals_its_own_functions(seed):
    zc = pytest.importorskip("clip_benchmark.metrics.zeroshot_classification")
    import torch
    from sklearn.metrics import balanced_accuracy_score

    s, t = _single(seed)
    try:
        acc1, acc5 = zc.accuracy(torch.from_numpy(s), torch.from_numpy(t), topk=(1, 5))
    except TypeError:  # its float(1-element array) fails under numpy 2: same expression, .item()
        pred = torch.from_numpy(s).topk(5, 1, True, True)[1].t()
        correct = pred.eq(torch.from_numpy(t).view(1, -1).expand_as(pred))
        acc1, acc5 = (correct[:k].reshape(-1).float().sum().item() / len(t) for k in (1, 5))
    m = compute_metrics(s, t, "mean_per_class", implementation="clip_benchmark")
    assert (m["top1"], m["top5"]) == (acc1, acc5)
    assert m["primary"] == balanced_accuracy_score(t, s.argmax(axis=1))
    assert compute_metrics(s, t, "accuracy", implementation="clip_benchmark")["primary"] == acc1


def test_clip_benchmark_refuses_metrics_it_does_not_define():
    s, t = _single(0, c=2)
    with pytest.raises(ValueError, match="clip_benchmark"):
        compute_metrics(s, t, "roc_auc", implementation="clip_benchmark")


# ---- documented differences (docs/metrics.md) on crafted inputs


def test_11point_map_t0_term_differs_when_top_ranked_is_negative(v_eval):
    # one class, 4 samples; the highest score is a negative: the best precision at any real
    # operating point is 1/2, but sklearn's curve ends in (recall 0, precision 1), which ELEVATER
    # takes as the t=0 value.
    s = np.array([[0.9], [0.8], [0.3], [0.1]])
    t = np.array([[0], [1], [0], [0]])
    ours = eleven_point_map(s, t)
    theirs = compute_metrics(s, t, "11point_mAP", implementation="elevater")["primary"]
    assert ours == pytest.approx(0.5)  # 11 thresholds, every one at precision 1/2
    assert theirs == pytest.approx((10 * 0.5 + 1.0) / 11)
    assert theirs == pytest.approx(_report(v_eval.MeanAveragePrecisionNPointsEvaluator(11), s, t))


def test_mean_per_class_differs_when_prediction_is_an_absent_class(v_eval):
    # 3 classes, class 2 never occurs in the targets. Sample 1 is predicted as class 2 (wrong for us);
    # ELEVATER drops the columns of absent classes before argmax, so it becomes class 1: right.
    s = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.7, 0.1]])
    t = np.array([0, 1, 1])
    ours = mean_per_class_accuracy(s, t)
    theirs = compute_metrics(s, t, "mean_per_class", implementation="elevater")["primary"]
    assert ours == pytest.approx((1.0 + 0.5) / 2)
    assert theirs == pytest.approx(1.0)
    assert theirs == _report(v_eval.BalancedAccuracyScoreEvaluator(), s, t)
    # top-1 does not drop columns: both agree there
    assert compute_metrics(s, t, "accuracy", implementation="elevater")["top1"] == pytest.approx(2 / 3)
