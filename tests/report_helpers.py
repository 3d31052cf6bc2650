"""Constructed result JSON for report tests, in the shapes agreed for runs, probes and studies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

NASTY = 'a <script>alert("x")</script> & \'quoted\' "label"'


def write(root: Path, model: str, dataset: str, task: str, payload: dict) -> Path:
    path = root / model / dataset / f"{task}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model": model, "dataset": dataset, "task": task, **payload}, ensure_ascii=False),
                    encoding="utf-8")
    return path


def zeroshot(root: Path, model: str, dataset: str, primary: float, top1: float | None = None,
             metric: str = "accuracy", **extra) -> Path:
    top1 = primary if top1 is None else top1
    metrics = {"top1": top1, "top5": min(1.0, top1 + 0.1), "mean_per_class": extra.pop("mean_per_class", top1),
               "primary": primary, metric: primary}
    language = "zh" if model.startswith("cn-clip") else "en"
    from bench.models import list_models

    # a registered name ran as the registry's model (the report compares only those with published numbers)
    spec = next((m for m in list_models() if m.name == model), None)
    ran = {"backend": spec.backend, "model": spec.model, "pretrained": spec.pretrained} if spec else \
        {"backend": "open_clip", "model": model}
    return write(root, model, dataset, "zeroshot", {
        "split": "test", "language": language, "prompts": f"openai-{language}", "labels": f"{language} (registry)",
        "n_samples": 100, "metric": metric, "metrics": metrics,
        "manifest": {"created": "2026-11-24T10:00:00+00:00", "versions": {"bench": "0.1.0", "torch": "2.14.1"},
                     "model": ran, "device": "cpu",
                     "dataset": {"fingerprint": "abc123"}},
        **extra})


def full_runs(root: Path) -> Path:
    """Three families on a few datasets, plus every study and a linear probe: all sections have data."""
    # cn-clip/vit-h14 published: cifar-10 96.0, kitti-distance 39.1, voc-2007 (11pt mAP)
    # under the protocol that made Chinese CLIP's table; the others under bench's (a "different protocol" Δ)
    zeroshot(root, "cn-clip/vit-h14", "cifar-10", 0.951, protocol="cn-clip")        # Δ -0.9: not flagged
    zeroshot(root, "cn-clip/vit-h14", "kitti-distance", 0.165, protocol="cn-clip")  # Δ -22.6: flagged + caveat
    zeroshot(root, "cn-clip/vit-h14", "voc-2007", 0.80, top1=0.70, metric="11point_mAP", protocol="cn-clip")
    zeroshot(root, "openai/vit-b16", "cifar-10", 0.90)
    zeroshot(root, "openai/vit-b16", "eurosat", 0.50)
    zeroshot(root, "openclip/vit-h14", "cifar-10", 0.975)
    zeroshot(root, "openclip/vit-h14", "voc-2007", 0.70, top1=0.77, metric="11point_mAP")
    zeroshot(root, "openclip/vit-h14", "eurosat", 0.70)
    write(root, "cn-clip/vit-h14", "cifar-10", "study-prompts", {
        "metric": "accuracy", "prompts": "openai-zh", "n_templates": 4,
        "templates": [{"template": NASTY + " {{ label }}", "primary": 0.90, "top1": 0.90},
                      {"template": "一张{{ label }}的照片。", "primary": 0.94, "top1": 0.94},
                      {"template": "{{ label }}", "primary": 0.80, "top1": 0.80},
                      {"template": "一张模糊的{{ label }}的照片。", "primary": 0.92, "top1": 0.92}],
        "ensemble": {"primary": 0.951, "top1": 0.951},
        "summary": {"min": 0.80, "q1": 0.875, "median": 0.91, "q3": 0.925, "max": 0.94, "std": 0.055},
        "best": {"template": "一张{{ label }}的照片。", "primary": 0.94},
        "worst": {"template": "{{ label }}", "primary": 0.80},
        "greedy": {"selected": ["一张{{ label }}的照片。"], "val_primary": 0.95, "test_primary": 0.94}})
    write(root, "openai/vit-b16", "cifar-10", "study-prompts", {
        "prompts": "openai-en", "templates": [{"template": "a photo of a {{ label }}.", "primary": 0.88},
                                              {"template": "{{ label }}", "primary": 0.83}],
        "ensemble": {"primary": 0.90}})  # no summary/best/greedy: tolerated
    write(root, "cn-clip/vit-h14", "cifar-10", "study-sets", {
        "sets": [{"name": "openai-zh", "n_templates": 90, "primary": 0.951, "top1": 0.951},
                 {"name": "simple-zh", "n_templates": 1, "primary": 0.93, "top1": 0.93}],
        "union": {"n_templates": 91, "primary": 0.952, "top1": 0.952}})
    write(root, "cn-clip/vit-h14", "kitti-distance", "study-negation", {
        "variants": [{"name": "registry", "labels": ["左右两侧的汽车", "附近的汽车", "远处的汽车", "没有汽车"],
                      "primary": 0.165, "top1": 0.165, "per_class_recall": [0.1, 0.2, 0.3, 0.05]},
                     {"name": "other-not-negation", "labels": ["左右两侧的汽车", "附近的汽车", "远处的汽车", NASTY],
                      "primary": 0.40, "top1": 0.40, "per_class_recall": [0.3, 0.4, 0.35, 0.6]}],
        "probe": {"classes": [{"class": "没有汽车", "negation_rate": 0.7}], "overall_rate": 0.7}})
    write(root, "cn-clip/vit-h14", "cifar-10", "study-labels", {
        "baseline": "zh (registry)", "variant": "alt-names",
        "primary": {"baseline": 0.951, "variant": 0.94, "delta": -0.011},
        "per_class": [{"index": 0, "class": "飞机", "baseline": 0.97, "variant": 0.90, "delta": -0.07},
                      {"index": 3, "class": NASTY, "baseline": 0.90, "variant": 0.93, "delta": 0.03}]})
    write(root, "openai/vit-b16", "cifar-10", "linear_probe", {
        "split": "test", "language": "en", "n_samples": 100, "metric": "accuracy",
        "metrics": {"top1": 0.95, "top5": 1.0, "primary": 0.95}, "implementation": "torch",
        "regularization": {"weight_decay": 0.001}, "sweep": [{"value": 0.001, "val_score": 0.94}],
        "n_train": 500, "n_val": 100, "few_shot": [{"k": 5, "seeds": [0, 1, 2], "scores": [0.6, 0.62, 0.64],
                                                     "mean": 0.62, "std": 0.016}]})
    return root


def zeroshot_scored(root: Path, model: str, dataset: str, scores, targets, metric: str = "accuracy",
                    class_names: list[str] | None = None, paths: list[str] | None = None, **extra) -> Path:
    """A zero-shot result whose metrics, per-image record and per-class view all come from `scores`, as a run
    writes them (runner.Runner.write_per_image), so paired tests and per-class tables have real data."""
    import numpy as np

    from bench import per_image
    from bench.experiment import per_image_path
    from bench.metrics import compute_metrics

    s, t = np.asarray(scores, dtype=np.float64), np.asarray(targets)
    m = compute_metrics(s, t, metric)
    paths = paths or [f"{i % s.shape[1]}/{i}.png" for i in range(len(s))]
    rec = per_image.record(s, t, metric)
    path = zeroshot(root, model, dataset, m["primary"], top1=m["top1"], metric=metric,
                    mean_per_class=m.get("mean_per_class"), n_samples=len(s), n_classes=s.shape[1],
                    class_names=class_names or [f"class {c}" for c in range(s.shape[1])], **extra)
    result = json.loads(path.read_text(encoding="utf-8"))
    result["metrics"] = m
    result["n_samples"] = len(s)
    from bench.stats import bootstrap_ci

    result["ci95"] = bootstrap_ci(s, t, metric, n_boot=200)
    per_image.write_per_image(per_image_path(path), paths, rec)
    result["per_image"] = {"file": per_image_path(path).name, "format": per_image.FORMAT, "n": len(s),
                           "images": per_image.images_digest(paths, rec["targets"]), "fields": sorted(rec)}
    if t.ndim == 1:
        result["per_class"] = per_image.per_class_summary(t, rec["prediction"], s.shape[1])
    path.write_text(json.dumps(result, ensure_ascii=False), encoding="utf-8")
    return path


def scores_at_accuracy(t: np.ndarray, classes: int, accuracy: float, seed: int) -> np.ndarray:
    """Scores whose argmax is the target on about `accuracy` of the images (independently per image)."""
    rng = np.random.default_rng(seed)
    s = rng.standard_normal((len(t), classes))
    right = rng.random(len(t)) < accuracy
    s[right, t[right]] += 100.0
    s[~right, t[~right]] -= 100.0
    return s
