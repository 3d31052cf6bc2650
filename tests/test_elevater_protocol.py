"""`--protocol elevater`: the ELEVATER toolkit's zero-shot pipeline (vision_benchmark/commands/zeroshot.py).

The toolkit itself is not on the package registry, so its pipeline is rebuilt here from its source, step by
step, as the reference: construct_dataloader's transform (Resize of the short side + CenterCrop, bicubic;
Resize to a square where a dataset YAML sets CENTER_CROP false, KITTI), extract_text_features' class
embeddings (templates × name, each normalised, averaged, normalised again), clip_zeroshot_evaluator's
softmax(100 · cos) and its metric.py, which calls vision-evaluation's evaluators (installed: the metric
numbers are theirs by construction). Its templates and class names are pinned by tests/test_elevater_prompts.py
and the label files' `elevater` variants.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from identity_helpers import latest_result
from PIL import Image
from test_sources import write_wds
from tiny_models import CLIP_MEAN, CLIP_STD, make_image_dataset, make_open_clip_dir, write_model_yaml
from tiny_models import non_square_images as _images

from bench.datasets.registry import get_dataset
from bench.errors import BenchError
from bench.labels import resolve_labels
from bench.prompts import load_prompt_set

v_eval = pytest.importorskip("vision_evaluation.evaluators")
SIZE = 32  # the tiny open_clip model's input size


def _elevater_transform(crop: bool):
    """construct_dataloader's transform_clip, as written there (PIL's BICUBIC constant included)."""
    from torchvision import transforms

    size = [SIZE, SIZE]  # config.TRAIN.IMAGE_SIZE
    steps = ([transforms.Resize(size[0], interpolation=Image.BICUBIC), transforms.CenterCrop(size=size)] if crop
             else [transforms.Resize(size, interpolation=Image.BICUBIC)])
    return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(mean=CLIP_MEAN, std=CLIP_STD)])


@pytest.fixture(scope="module")
def model_yaml(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("elevater-model")
    folder = make_open_clip_dir(root / "tiny-oc", seed=1)  # a seed whose predictions spread over classes
    return write_model_yaml(root / "tiny.yaml", name="tiny-oc", backend="open_clip", model=f"local-dir:{folder}",
                            language="en")


def _runner(model_yaml: Path, tmp_path: Path):
    from bench.models import resolve_model
    from bench.runner import Runner, RunOptions

    return Runner(RunOptions(out=tmp_path / "runs", cache_dir=tmp_path / "cache", protocol="elevater",
                             device="cpu")), resolve_model(str(model_yaml))


def test_image_transform_is_the_toolkits_crop_and_kittis_squash(model_yaml, tmp_path):
    runner, spec = _runner(model_yaml, tmp_path)
    crop, squash = runner.backend(spec, "cifar-10").preprocess, runner.backend(spec, "kitti-distance").preprocess
    for img in _images(4, seed=1):
        torch.testing.assert_close(crop(img), _elevater_transform(crop=True)(img), rtol=0, atol=0)
        torch.testing.assert_close(squash(img), _elevater_transform(crop=False)(img), rtol=0, atol=0)
        assert not torch.equal(crop(img), squash(img))  # the two really differ on a non-square image
    # two transforms, two feature-cache identities: KITTI's squashed features never read as cropped ones
    assert runner.backend(spec, "cifar-10").identity() != runner.backend(spec, "kitti-distance").identity()


def test_labels_are_the_toolkits_class_map_names(tmp_path):
    from bench.protocols import load_protocol
    from bench.runner import Runner, RunOptions

    runner = Runner(RunOptions(out=tmp_path / "runs", cache_dir=tmp_path / "cache", protocol="elevater", device="cpu"))
    assert load_protocol("elevater").labels == "elevater"
    voc = get_dataset("voc-2007")
    names = resolve_labels(runner.labels_arg(voc, "en"), voc, "en").names
    assert (names[10], names[15], names[19]) == ("diningtable", "pottedplant", "tvmonitor")
    pets = get_dataset("oxford-iiit-pets")
    assert resolve_labels(runner.labels_arg(pets, "en"), pets, "en").names[1] == "american bulldog"
    # a dataset whose names already are ELEVATER's has no variant: the shipped names, not an error
    cifar = get_dataset("cifar-10")
    assert runner.labels_arg(cifar, "en") is None
    # ImageNet's list names two pairs of classes alike: kept (a warning), as the toolkit averages them apart
    inet = get_dataset("imagenet-1k")
    names = resolve_labels(runner.labels_arg(inet, "en"), inet, "en", duplicates="warn").names
    assert names.count("missile") == 2 and names.count("sunglasses") == 2


def test_fallback_template_for_a_dataset_the_toolkit_does_not_name():
    # feature.py: template_map.get(name, ['a photo of a {}'])
    assert load_prompt_set("elevater-en").render("digits", ["seven"]) == [["a photo of a seven"]]


@pytest.mark.parametrize("flag", [("--prompts", "openai-en"), ("--labels", "us-english"), ("--language", "zh")])
def test_flags_the_protocol_fixes_are_refused(flag, model_yaml, tmp_path, bench_cli):
    folder = make_image_dataset(tmp_path / "data" / "cifar-10", n_classes=10, per_class=1)
    code, _, err = bench_cli("run", "--model", model_yaml, "--dataset", folder, "--protocol", "elevater", *flag,
                             "--out", tmp_path / "runs", "--cache-dir", tmp_path / "cache")
    assert code != 0 and f"drop {flag[0]}" in err and "elevater" in err


def _reference(model_yaml: Path, images: list[Image.Image], texts_per_class: list[list[str]], crop: bool = True):
    """extract_features + extract_text_features + clip_zeroshot_evaluator, on the same open_clip model."""
    import open_clip

    folder = Path(model_yaml.read_text().split("local-dir:")[1].split()[0])
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    model.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    tf = _elevater_transform(crop)
    with torch.no_grad():
        image_features = model.encode_image(torch.stack([tf(im.convert("RGB")) for im in images]))
        weights = []
        for texts in texts_per_class:
            emb = model.encode_text(tokenizer(texts))
            emb /= emb.norm(dim=-1, keepdim=True)
            emb = emb.mean(dim=0)
            weights.append(emb / emb.norm())
        text_features = torch.stack(weights, dim=1)
    image_features = torch.nn.functional.normalize(image_features)
    return (100.0 * image_features @ text_features).softmax(dim=-1).numpy()


def _run(bench_cli, model_yaml: Path, folder: Path, tmp_path: Path) -> tuple[dict, np.ndarray, np.ndarray, list]:
    out = tmp_path / "runs"
    code, _, err = bench_cli("run", "--model", model_yaml, "--dataset", folder, "--protocol", "elevater",
                             "--save-logits", "--out", out, "--cache-dir", tmp_path / "cache", "--workers", "0",
                             "--device", "cpu")
    assert code == 0, err
    path = latest_result(out / "tiny-oc" / get_dataset_name(folder), "zeroshot")
    saved = np.load(path.with_name(path.stem + ".logits.npz"), allow_pickle=False)
    return json.loads(path.read_text(encoding="utf-8")), saved["scores"], saved["targets"], list(saved["paths"])


def get_dataset_name(folder: Path) -> str:
    from bench.datasets import sources

    return sources.ref_for_path(folder).spec.name


def test_cifar_predictions_and_metric_equal_the_toolkits(model_yaml, tmp_path, bench_cli):
    folder = tmp_path / "data" / "cifar-10"  # ELEVATER-CN layout: test/<class id>/<image>
    for i, img in enumerate(_images(30, seed=11)):
        (folder / "test" / f"{i % 10:03d}").mkdir(parents=True, exist_ok=True)
        img.save(folder / "test" / f"{i % 10:03d}" / f"{i}.png")
    result, scores, targets, paths = _run(bench_cli, model_yaml, folder, tmp_path)
    assert (result["protocol"], result["scores"], result["metrics_implementation"], result["precision"]) == \
        ("elevater", "softmax100", "elevater", "fp32")
    names = resolve_labels(None, get_dataset("cifar-10"), "en").names
    texts = load_prompt_set("elevater-en").render("cifar-10", list(names))
    images = [Image.open(folder / "test" / p) for p in paths]
    ref = _reference(model_yaml, images, texts)
    assert len(set(ref.argmax(1))) >= 3, "the reference predicts too few classes for parity to mean much"
    np.testing.assert_array_equal(scores.argmax(1), ref.argmax(1))
    np.testing.assert_allclose(scores, ref, rtol=1e-4, atol=1e-6)
    top1 = v_eval.TopKAccuracyEvaluator(1)
    top1.add_predictions(predictions=ref, targets=targets)
    assert result["metrics"]["top1"] == pytest.approx(top1.get_report()["accuracy_top1"], abs=1e-9)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="png")
    return buf.getvalue()


def _voc_folder(tmp_path: Path, n: int, seed: int, image_seed: int) -> Path:
    """clip-benchmark's wds_voc2007_multilabel with n images of 1-3 random classes each."""
    rng = np.random.default_rng(seed)
    labels = [tuple(sorted(rng.choice(20, size=int(rng.integers(1, 4)), replace=False).tolist())) for _ in range(n)]
    return write_wds(tmp_path / "data" / "wds_voc2007_multilabel", list(get_dataset("voc-2007").classes), labels,
                     multilabel=True, images=[_png(im) for im in _images(n, seed=image_seed)])


def test_voc_11_point_map_equals_vision_evaluations_on_the_same_scores(model_yaml, tmp_path, bench_cli):
    spec = get_dataset("voc-2007")
    folder = _voc_folder(tmp_path, 12, seed=7, image_seed=5)
    result, scores, targets, _ = _run(bench_cli, model_yaml, folder, tmp_path)
    assert result["metric"] == "11point_mAP" and targets.shape == (12, 20)
    np.testing.assert_allclose(scores.sum(1), 1.0, atol=1e-5)  # softmax(100·cos), what the server scored
    evaluator = v_eval.MeanAveragePrecisionNPointsEvaluator(11)
    evaluator.add_predictions(predictions=scores, targets=targets)
    assert result["metrics"]["11point_mAP"] == pytest.approx(evaluator.get_report()[evaluator._get_id()], abs=1e-9)
    # the toolkit's class names reached the prompts: 'a photo of a diningtable.', not our 'dining table'
    names = resolve_labels("elevater", spec, "en").names
    ref = _reference(model_yaml, [Image.open(io.BytesIO(b)) for b in
                                  [_png(im) for im in _images(12, seed=5)]],
                     load_prompt_set("elevater-en").render("voc-2007", list(names)))
    np.testing.assert_allclose(scores, ref, rtol=1e-4, atol=1e-6)


def test_kitti_is_squashed_end_to_end(model_yaml, tmp_path, bench_cli):
    spec = get_dataset("kitti-distance")
    sentences = ["a photo i took of a car on my left or right side.", "a photo i took with a car nearby.",
                 "a photo i took with a car in the distance.", "a photo i took with no car."]
    imgs = _images(8, seed=9)
    folder = write_wds(tmp_path / "data" / "wds_vtab-kitti_closest_vehicle_distance", sentences,
                       [i % 4 for i in range(8)], images=[_png(im) for im in imgs])
    result, scores, _, _ = _run(bench_cli, model_yaml, folder, tmp_path)
    # ELEVATER's kitti_templates is ['{}'] over its whole-sentence names
    ref = _reference(model_yaml, imgs, [[s] for s in sentences], crop=False)
    np.testing.assert_allclose(scores, ref, rtol=1e-4, atol=1e-6)
    assert not np.allclose(scores, _reference(model_yaml, imgs, [[s] for s in sentences], crop=True),
                           rtol=1e-4, atol=1e-6)
    assert spec.name == result["dataset"]


def test_unknown_transform_in_a_protocol_file_is_refused(tmp_path):
    from bench import protocols

    path = tmp_path / "p.yaml"
    path.write_text("name: p\ndescription: x\ntemplates: elevater-en\nlabels: elevater\ntext_normalisation: none\n"
                    "image_transform: {default: elevater, per_dataset: {kitti-distanse: squash}}\nprecision: fp32\n"
                    "scores: softmax100\nmetric_implementation: elevater\ndata: elevater\n")
    with pytest.raises(BenchError, match="kitti-distanse"):
        protocols._load(path)


# --- --protocol on studies and `bench prompts eval` ----------------------------------------------------


def test_study_and_prompts_eval_score_as_the_run_does(model_yaml, tmp_path, bench_cli):
    """Under --protocol elevater a study's ensemble and `bench prompts eval` of the protocol's own set give the
    run's number: same transform, templates, labels, softmax scores and vision-evaluation metric."""
    folder = _voc_folder(tmp_path, 10, seed=3, image_seed=2)
    run, _, _, _ = _run(bench_cli, model_yaml, folder, tmp_path)
    common = ("--model", model_yaml, "--dataset", folder, "--out", tmp_path / "runs", "--cache-dir",
              tmp_path / "cache", "--workers", "0", "--device", "cpu")
    code, _, err = bench_cli("study", "prompts", *common, "--protocol", "elevater", "--no-greedy")
    assert code == 0, err
    study = json.loads(latest_result(tmp_path / "runs" / "tiny-oc" / "voc-2007", "study-prompts").read_text())
    assert (study["protocol"], study["scores"], study["metrics_implementation"]) == ("elevater", "softmax100",
                                                                                     "elevater")
    assert study["ensemble"]["primary"] == pytest.approx(run["metrics"]["primary"], abs=1e-9)
    assert study["cache"]["images_encoded"] == 0  # the run's features (same transform), not new ones
    code, out, err = bench_cli("prompts", "eval", "elevater-en", *common, "--protocol", "elevater")
    assert code == 0, err
    ev = json.loads(latest_result(tmp_path / "runs" / "tiny-oc" / "voc-2007", "prompts-eval").read_text())
    assert ev["baseline"]["prompts"] == "elevater-en"  # the protocol's set is the default baseline
    assert ev["metrics"]["primary"] == pytest.approx(run["metrics"]["primary"], abs=1e-9)
    assert ev["labels"].endswith("en/voc-2007.yaml#elevater")  # the protocol's label source
    # the same study under bench's protocol scores logits with bench's 11-point mAP: recorded as such
    code, _, err = bench_cli("study", "prompts", *common, "--no-greedy", "--prompts", "elevater-en")
    assert code == 0, err
    own = json.loads(latest_result(tmp_path / "runs" / "tiny-oc" / "voc-2007", "study-prompts").read_text())
    assert (own["protocol"], own["scores"], own["metrics_implementation"]) == ("bench", "logits", "bench")


def test_study_labels_compares_ours_with_a_protocols_label_source(tmp_path, digits_root, cache_dir, bench_cli):
    """`--variant protocol:cn-clip` is Chinese CLIP's label source: the dataset folder's label_cn.txt."""
    out = tmp_path / "runs"
    code, _, err = bench_cli("study", "labels", "--model", "demo", "--dataset", "digits", "--data-root", digits_root,
                             "--cache-dir", cache_dir, "--out", out, "--workers", "0", "--language", "zh",
                             "--variant", "protocol:cn-clip")
    assert code == 0, err
    res = json.loads(latest_result(out / "demo" / "digits", "study-labels").read_text(encoding="utf-8"))
    assert res["variant"] == str(digits_root / "digits" / "label_cn.txt")
    assert res["baseline"].endswith("zh/digits.yaml")


def test_study_sets_reads_a_protocols_templates(tmp_path, digits_root, cache_dir, bench_cli):
    out = tmp_path / "runs"
    code, _, err = bench_cli("study", "sets", "--model", "demo", "--dataset", "digits", "--data-root", digits_root,
                             "--cache-dir", cache_dir, "--out", out, "--workers", "0", "--language", "en",
                             "--sets", "demo-en", "protocol:elevater")
    assert code == 0, err
    res = json.loads(latest_result(out / "demo" / "digits", "study-sets").read_text(encoding="utf-8"))
    names = [s["name"] if isinstance(s, dict) and "name" in s else s.get("prompts") for s in res["sets"]]
    assert names[:2] == ["demo-en", "elevater-en"]
