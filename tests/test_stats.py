"""Bootstrap confidence intervals (bench.stats): width against the binomial figure, seeding, exactness of the
vectorised replicates against bench.metrics on the original sample."""

from __future__ import annotations

import numpy as np
import pytest

from bench import stats
from bench.metrics import compute_metrics, eleven_point_map, roc_auc


def _classifier(n: int, classes: int, accuracy: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scores whose argmax is the target on exactly round(accuracy * n) images."""
    rng = np.random.default_rng(seed)
    t = rng.integers(0, classes, n)
    s = rng.standard_normal((n, classes))
    right = rng.permutation(n) < round(accuracy * n)
    s[right, t[right]] += 100.0
    wrong = ~right
    s[wrong, t[wrong]] -= 100.0
    return s, t


def test_top1_ci_matches_binomial_half_width():
    s, t = _classifier(2000, 10, 0.80)
    assert compute_metrics(s, t, "accuracy")["top1"] == pytest.approx(0.80)
    lo, hi = stats.bootstrap_ci(s, t, "accuracy", n_boot=2000, seed=0)["top1"]
    binomial = 1.96 * np.sqrt(0.8 * 0.2 / 2000)  # 0.01753
    assert (hi - lo) / 2 == pytest.approx(binomial, rel=0.1)
    assert lo < 0.80 < hi


def test_same_seed_same_ci_and_other_seed_differs():
    s, t = _classifier(500, 10, 0.7)
    a = stats.bootstrap_ci(s, t, "mean_per_class", n_boot=300, seed=3)
    assert a == stats.bootstrap_ci(s, t, "mean_per_class", n_boot=300, seed=3)
    assert a != stats.bootstrap_ci(s, t, "mean_per_class", n_boot=300, seed=4)


def test_zero_disables_and_keys_follow_compute_metrics():
    s, t = _classifier(300, 10, 0.6)
    assert stats.bootstrap_ci(s, t, "accuracy", n_boot=0) == {}
    ci = stats.bootstrap_ci(s, t, "mean_per_class", n_boot=50)
    metrics = compute_metrics(s, t, "mean_per_class")
    assert set(ci) == {k for k, v in metrics.items() if v is not None}
    with pytest.raises(ValueError):
        stats.bootstrap_ci(s, t, "accuracy", n_boot=-1)


def test_bootstrap_top1_from_correctness():
    correct = np.arange(2000) < 1600
    lo, hi = stats.bootstrap_top1(correct, n_boot=2000, seed=1)
    assert (hi - lo) / 2 == pytest.approx(0.01753, rel=0.1)
    assert stats.bootstrap_top1(correct, seed=5) == stats.bootstrap_top1(correct, seed=5)


def test_outcomes_match_metrics_with_ties():
    rng = np.random.default_rng(2)
    s = rng.integers(0, 3, (400, 8)).astype(float)  # many ties: lower class index wins
    t = rng.integers(0, 8, 400)
    out = stats._outcomes(s, t, multilabel=False)
    m = compute_metrics(s, t, "accuracy")
    assert (out == 2).mean() == pytest.approx(m["top1"])
    assert (out >= 1).mean() == pytest.approx(m["top5"])


def test_weighted_ranking_metrics_equal_metrics_on_unit_weights_and_duplicates():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    d = np.round(rng.standard_normal(300) + y, 1)  # rounded: ties
    w = np.ones((1, 300), dtype=np.int64)
    assert stats._weighted_auc(d, y, w)[0] == pytest.approx(roc_auc(d, y))
    counts = rng.integers(0, 3, 300)
    counts[:2] = 1
    idx = np.repeat(np.arange(300), counts)  # a resample, materialised
    assert stats._weighted_auc(d, y, counts[None])[0] == pytest.approx(roc_auc(d[idx], y[idx]))
    T = (rng.random((300, 6)) < 0.3).astype(int)
    S = np.round(rng.standard_normal((300, 6)) + T, 1)
    assert stats._weighted_11pt_map(S, T, w)[0] == pytest.approx(eleven_point_map(S, T))
    keep = T[idx].any(axis=0)
    assert keep.all()
    assert stats._weighted_11pt_map(S, T, counts[None])[0] == pytest.approx(eleven_point_map(S[idx], T[idx]))


def test_ranking_cis_contain_the_estimate_and_stay_stratified():
    rng = np.random.default_rng(4)
    y = np.r_[np.ones(30, int), np.zeros(270, int)]
    s = np.c_[np.zeros(300), rng.standard_normal(300) + y]
    ci = stats.bootstrap_ci(s, y, "roc_auc", n_boot=200)
    auc = compute_metrics(s, y, "roc_auc")["primary"]
    assert ci["primary"] == ci["roc_auc"] and ci["primary"][0] < auc < ci["primary"][1]
    w = stats._weights(300, stats._strata(y, False, True), 50, rng)
    assert (w[:, y == 1].sum(axis=1) == 30).all()  # every replicate keeps 30 positives
    T = (rng.random((200, 5)) < 0.3).astype(int)
    S = rng.standard_normal((200, 5)) + T
    ci = stats.bootstrap_ci(S, T, "11point_mAP", n_boot=100)
    assert "mean_per_class" not in ci and ci["primary"][0] < compute_metrics(S, T, "11point_mAP")["primary"]


def test_run_records_ci95_and_report_shows_it(bench_cli, cache_dir, digits_root, tmp_path):
    import json

    from identity_helpers import latest_result

    common = ("--model", "demo", "--dataset", "digits", "--data-root", digits_root, "--cache-dir", cache_dir,
              "--workers", "0", "--limit", "100")
    assert bench_cli("run", *common, "--out", tmp_path / "runs", "--bootstrap", "200")[0] == 0
    result = json.loads(latest_result(tmp_path / "runs" / "demo" / "digits", "zeroshot").read_text())
    lo, hi = result["ci95"]["top1"]
    assert lo < result["metrics"]["top1"] < hi and result["ci95"]["primary"] == result["ci95"]["accuracy"]
    assert result["bootstrap"]["resamples"] == 200
    assert bench_cli("report", tmp_path / "runs", "--out", tmp_path / "report", "--format", "md")[0] == 0
    half = 50 * (hi - lo)
    assert f"±{half:.1f}" in (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert bench_cli("run", *common, "--out", tmp_path / "none", "--bootstrap", "0")[0] == 0
    assert "ci95" not in json.loads(latest_result(tmp_path / "none" / "demo" / "digits", "zeroshot").read_text())
    code, _, err = bench_cli("run", *common, "--out", tmp_path / "neg", "--bootstrap", "-1")
    assert code != 0 and "--bootstrap" in err


def test_mcnemar_against_scipy_exact_and_chi2():
    from scipy.stats import binomtest, chi2

    a = np.r_[np.ones(10, bool), np.zeros(3, bool), np.ones(50, bool)]
    b = np.r_[np.zeros(10, bool), np.ones(3, bool), np.ones(50, bool)]
    small = stats.mcnemar(a, b)
    assert (small["b"], small["c"], small["test"]) == (10, 3, "exact")
    assert small["p"] == pytest.approx(binomtest(10, 13, 0.5).pvalue)
    a = np.r_[np.ones(40, bool), np.zeros(20, bool)]
    b = ~a
    big = stats.mcnemar(a, b)
    assert big["test"] == "chi2" and big["p"] == pytest.approx(chi2.sf((20 - 1) ** 2 / 60, 1))


def test_paired_comparison_with_itself_and_with_a_worse_classifier():
    rng = np.random.default_rng(7)
    a = rng.random(1000) < 0.8
    same = stats.paired_bootstrap(a, a)
    assert same["delta"] == 0.0 and same["p"] == 1.0 and stats.mcnemar(a, a)["p"] == 1.0
    worse = a & (rng.random(1000) < 0.9)  # loses about 8 points, never gains
    diff = stats.paired_bootstrap(a, worse, seed=1)
    assert diff["delta"] > 0.05 and diff["ci95"][0] > 0 and diff["p"] < 0.01
    assert stats.mcnemar(a, worse)["p"] < 1e-6
    assert diff == stats.paired_bootstrap(a, worse, seed=1)
