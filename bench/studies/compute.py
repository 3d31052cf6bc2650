"""Pure study computations on features and prompt embeddings (no I/O, no model calls)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch

from bench.metrics import compute_metrics, confusion_matrix, get_metric, per_class_recall
from bench.zeroshot import LOGIT_SCALE, class_embeddings, normalize, protocol_scores, scores


@dataclass(frozen=True)
class Scoring:
    """What a protocol's metrics are computed on (`logits` or `softmax100`) and whose definitions compute
    them (`bench`, `elevater`, `clip_benchmark`): a study under --protocol scores its arms as a run would."""

    scores: str = "logits"
    implementation: str = "bench"

    def metrics(self, logits: np.ndarray, targets: np.ndarray, metric: str) -> dict:
        s = logits if self.scores == "logits" else protocol_scores(torch.from_numpy(logits), self.scores).numpy()
        return compute_metrics(s, targets, metric, implementation=self.implementation)


BENCH_SCORING = Scoring()


def evaluate(features: torch.Tensor, per_prompt: torch.Tensor, targets: np.ndarray, metric: str,
             scoring: Scoring = BENCH_SCORING) -> dict:
    """Metrics of the zero-shot classifier built from [C, T, D] prompt embeddings (the runner's exact path)."""
    logits = scores(features, class_embeddings(per_prompt)).numpy()
    return scoring.metrics(logits, targets, metric)


def ensemble_logits(features: torch.Tensor, per_prompt: torch.Tensor) -> np.ndarray:
    """[N, C] logits of the ensemble of `per_prompt` [C, T, D] (what `evaluate` scores)."""
    return scores(features, class_embeddings(per_prompt)).numpy()


def paired(logits_a: np.ndarray, logits_b: np.ndarray, targets: np.ndarray, metric: str, n_boot: int = 1000,
           seed: int = 0) -> dict:
    """Paired test of classifier A against B on the same images (``bench.stats.paired_compare``): Δ = A − B in
    the primary metric, its 95% CI, p and the test used (McNemar for accuracy, paired bootstrap otherwise)."""
    from bench import per_image, stats

    return stats.paired_compare(per_image.record(logits_a, targets, metric),
                                per_image.record(logits_b, targets, metric), metric, n_boot=n_boot, seed=seed)


def predictions(features: torch.Tensor, per_prompt: torch.Tensor) -> np.ndarray:
    """Argmax class per image for the ensemble of `per_prompt` [C, T, D]."""
    return scores(features, class_embeddings(per_prompt)).argmax(dim=1).numpy()


def template_logits(features: torch.Tensor, per_prompt: torch.Tensor) -> np.ndarray:
    """[N, C, T] logits of every template alone, in one matrix product (images are normalised once)."""
    c, t, d = per_prompt.shape
    flat = normalize(per_prompt).reshape(c * t, d)
    return (LOGIT_SCALE * normalize(features) @ flat.T).reshape(-1, c, t).numpy()


def per_template(features: torch.Tensor, per_prompt: torch.Tensor, targets: np.ndarray, metric: str,
                 scoring: Scoring = BENCH_SCORING) -> list[dict]:
    """{primary, top1} of every template alone (a one-template ensemble, as a one-template prompt set gives)."""
    logits = template_logits(features, per_prompt)
    out = []
    for t in range(per_prompt.shape[1]):
        m = scoring.metrics(np.ascontiguousarray(logits[:, :, t]), targets, metric)
        out.append({"primary": m["primary"], "top1": m["top1"]})
    return out


def distribution(values: list[float]) -> dict:
    """min, quartiles, max and (population) std of a list of scores."""
    v = np.asarray(values, dtype=np.float64)
    q1, median, q3 = np.percentile(v, [25, 50, 75])
    return {"min": float(v.min()), "q1": float(q1), "median": float(median), "q3": float(q3),
            "max": float(v.max()), "std": float(v.std()), "mean": float(v.mean())}


def ranks(values: list[float]) -> list[int]:
    """1 = best; ties broken by position so ranks are a permutation."""
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    out = [0] * len(values)
    for r, i in enumerate(order, start=1):
        out[i] = r
    return out


def best_median_worst(templates: list[str], values: list[float]) -> dict:
    """The best, median and worst single template by score (ties: the earlier template)."""
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    pick = {"best": order[0], "median": order[(len(order) - 1) // 2], "worst": order[-1]}
    return {k: {"template": templates[i], "primary": values[i], "index": i} for k, i in pick.items()}


def greedy_select(features: torch.Tensor, per_prompt: torch.Tensor, targets: np.ndarray, metric: str,
                  max_templates: int | None = None) -> dict:
    """Greedy forward template selection: add the template that most improves the metric, stop when none does.

    Call it with validation data only; the caller scores the selection on test afterwards. Candidates are
    scored without rebuilding class embeddings: with s_c the sum of the selected unit prompt embeddings of
    class c, image·normalise(s_c + u_ct) = (image·s_c + image·u_ct) / |s_c + u_ct|, and the norm comes from
    the prompts' Gram matrix.
    """
    fn = get_metric(metric).fn
    unit = normalize(per_prompt)  # [C, T, D]
    proj = template_logits(features, per_prompt).astype(np.float64)  # [N, C, T] = scale · image·u_ct
    gram = torch.einsum("csd,ctd->cst", unit, unit).double().numpy()  # [C, T, T]
    n_templates = unit.shape[1]
    limit = n_templates if max_templates is None else min(max_templates, n_templates)
    selected: list[int] = []
    acc = np.zeros(proj.shape[:2])  # scale · image·s_c
    cross = np.zeros((unit.shape[0], n_templates))  # s_c·u_ct
    norm2 = np.zeros(unit.shape[0])  # |s_c|²
    best = -math.inf
    trace = []
    while len(selected) < limit:
        denom = np.sqrt(norm2[:, None] + 2 * cross + 1.0)  # |s_c + u_ct| for every candidate t
        cand = [(float(fn((acc + proj[:, :, t]) / denom[:, t], targets)), -t)
                for t in range(n_templates) if t not in selected]
        score, neg_t = max(cand)
        if selected and score <= best:
            break
        t = -neg_t
        selected.append(t)
        norm2 = norm2 + 2 * cross[:, t] + 1.0
        acc = acc + proj[:, :, t]
        cross = cross + gram[:, t, :]
        best = score
        trace.append({"index": t, "val_primary": score})
    return {"selected": selected, "val_primary": best, "trace": trace}


def rank_agreement(vectors: dict[str, list[float]]) -> dict:
    """Spearman and Kendall (tau-b) between every pair of score vectors over the same templates."""
    from scipy.stats import kendalltau, spearmanr

    pairs = []
    for a, b in itertools.combinations(sorted(vectors), 2):
        x, y = vectors[a], vectors[b]
        if len(x) != len(y) or len(x) < 2:
            continue
        rho = spearmanr(x, y).statistic
        tau = kendalltau(x, y).statistic
        pairs.append({"a": a, "b": b, "spearman": _finite(rho), "kendall": _finite(tau)})
    return {"pairs": pairs, "mean_spearman": _mean([p["spearman"] for p in pairs]),
            "mean_kendall": _mean([p["kendall"] for p in pairs])}


def overall_ranking(templates: list[str], per_dataset: dict[str, list[float]]) -> list[dict]:
    """Templates ordered by mean rank over datasets (then mean score), with both figures."""
    rk = {d: ranks(v) for d, v in per_dataset.items()}
    rows = [{"template": t, "mean_rank": float(np.mean([rk[d][i] for d in rk])),
             "mean_primary": float(np.mean([v[i] for v in per_dataset.values()]))}
            for i, t in enumerate(templates)]
    rows.sort(key=lambda r: (r["mean_rank"], -r["mean_primary"]))
    for r, row in enumerate(rows, start=1):
        row["rank"] = r
    return rows


def class_report(preds: np.ndarray, targets: np.ndarray, num_classes: int) -> dict:
    """Per-class recall (None for absent classes) and the confusion matrix (rows true, columns predicted)."""
    recall = per_class_recall(preds, targets, num_classes)
    return {"per_class_recall": [None if np.isnan(r) else float(r) for r in recall],
            "confusion": confusion_matrix(preds, targets, num_classes).tolist()}


def negation_rates(preds_by_class: dict[int, np.ndarray], targets: np.ndarray, negation_index: dict[int, int]) -> dict:
    """How often images of class X go to X's own negation, per class and pooled over all probed images.

    `preds_by_class[X]` are predictions with "no X" present at `negation_index[X]`.
    """
    rows, hits, total = [], 0, 0
    for x, preds in preds_by_class.items():
        mask = targets == x
        n = int(mask.sum())
        k = int((preds[mask] == negation_index[x]).sum())
        rows.append({"index": x, "n": n, "negated": k, "negation_rate": k / n if n else None})
        hits, total = hits + k, total + n
    return {"classes": rows, "overall_rate": hits / total if total else None, "n": total}


def label_deltas(names: list[str], variant_names: list[str], base_recall: list, var_recall: list,
                 top: int = 10) -> dict:
    """Per-class accuracy deltas of a label variant, the classes it helps and hurts, and the top movers."""
    rows = []
    for i, (b, v) in enumerate(zip(base_recall, var_recall)):
        delta = None if b is None or v is None else v - b
        rows.append({"index": i, "class": names[i], "variant_class": variant_names[i],
                     "renamed": names[i] != variant_names[i], "baseline": b, "variant": v, "delta": delta})
    moved = [r for r in rows if r["delta"]]
    movers = sorted(moved, key=lambda r: (-abs(r["delta"]), r["index"]))[:top]
    return {"per_class": rows, "top_movers": movers,
            "helped": [r["index"] for r in moved if r["delta"] > 0],
            "hurt": [r["index"] for r in moved if r["delta"] < 0]}


def _finite(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _mean(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None
