"""`--protocol cn-clip` gives, image for image, what Chinese CLIP's own zero-shot functions give.

The reference is cn_clip itself: `zero_shot_classifier` and `run` from cn_clip/eval/zeroshot_evaluation.py,
its `ImageFolder` dataset and `image_transform`, on a cn_clip-format checkpoint built from a seeded random
init (RN50@RBT3-chinese, BatchNorm statistics re-estimated on a few images so that image features differ:
with the init's statistics every image gets nearly the same feature and any parity would prove nothing).
The folders are named like the ELEVATER-CN archive's (food-101, cifar-10) and carry a label_cn.txt that is
not ours, so a run that ignored the protocol's label source or template choice would disagree.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from tests.identity_helpers import latest_result
from tests.tiny_models import write_model_yaml

cn_clip = pytest.importorskip("cn_clip")
pytest.importorskip("vision_evaluation")  # the protocol's metric implementation

ARCH = "RN50@RBT3-chinese"


def _images(n: int, seed: int) -> list[Image.Image]:
    """Non-square images with coloured blocks on noise: enough structure for a random CNN to tell apart."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
        arr = rng.integers(0, 256, size=(h, w, 3)).astype(np.int64)
        for _ in range(3):
            y, x = int(rng.integers(0, h - 10)), int(rng.integers(0, w - 10))
            arr[y:y + int(rng.integers(8, h - y + 1)), x:x + int(rng.integers(8, w - x + 1))] = rng.integers(0, 256, 3)
        out.append(Image.fromarray(arr.clip(0, 255).astype(np.uint8)))
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from cn_clip.clip.utils import create_model, image_transform

    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):
        model = create_model(ARCH).float()
    # re-estimate BatchNorm statistics (cumulative average) on a few images, then freeze them
    for m in model.visual.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    tf = image_transform(224)
    batch = torch.stack([tf(im) for im in _images(16, seed=99)])
    model.visual.train()
    with torch.no_grad():
        model.visual(batch)
    model.eval()
    path = tmp_path_factory.mktemp("ckpt") / "clip_cn_rn50_random.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 0, "step": 0}, path)
    return path


def _archive_folder(root: Path, name: str, n_classes: int, per_class: int) -> Path:
    """An ELEVATER-CN folder: <name>/test/<zero-padded class id>/*.png and a label_cn.txt of our own making."""
    folder = root / name
    images = iter(_images(per_class * n_classes, seed=n_classes))
    for c in range(n_classes):
        d = folder / "test" / f"{c:03d}"
        d.mkdir(parents=True)
        for i in range(per_class):
            next(images).save(d / f"{i}.png")
    # names no bench translation uses, with a curly-quoted one and upper-case Latin for the normalisation
    names = [f"第{c}类“样本”" if c % 7 == 0 else f"测试类别{c}号ABC" for c in range(n_classes)]
    (folder / "label_cn.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    (folder / "label.txt").write_text("\n".join(f"class {c}" for c in range(n_classes)) + "\n", encoding="utf-8")
    return folder


def _reference(checkpoint: Path, folder: Path, templates) -> tuple[list[str], np.ndarray]:
    """Chinese CLIP's zeroshot_evaluation.py, through its own functions, on the CPU in fp32."""
    from cn_clip.clip.utils import create_model, image_transform
    from cn_clip.eval import zeroshot_evaluation as ze
    from cn_clip.eval.data import get_zeroshot_dataset
    from cn_clip.training.main import convert_models_to_fp32

    ckpt = torch.load(checkpoint, map_location="cpu")
    with contextlib.redirect_stdout(io.StringIO()):
        model = create_model(ARCH, ckpt)
    convert_models_to_fp32(model)
    model.eval()
    args = SimpleNamespace(context_length=52, gpu="cpu", datapath=str(folder / "test"), img_batch_size=8,
                           num_workers=0)
    classnames = [line.strip() for line in (folder / "label_cn.txt").read_text(encoding="utf-8").splitlines()]
    data = get_zeroshot_dataset(args, image_transform(224))
    # its `accuracy` calls float() on a 1-element array, which numpy 2 refuses; the top-1 it feeds is not
    # compared here (the probabilities `run` returns are), so only that helper is replaced
    accuracy, ze.accuracy = ze.accuracy, lambda output, target, topk=(1,): [0.0 for _ in topk]
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            classifier = ze.zero_shot_classifier(model, classnames, templates, args)
            _, probs = ze.run(model, classifier, data.dataloader, args)
    finally:
        ze.accuracy = accuracy
    return [str(Path(p).resolve()) for p, _ in data.dataloader.dataset.samples], probs.numpy()


def _bench(tmp_path: Path, checkpoint: Path, folder: Path, bench_cli, *extra) -> tuple[dict, list[str], np.ndarray]:
    yml = write_model_yaml(tmp_path / "cn.yaml", name="cn-random", backend="cn_clip", model=ARCH,
                           pretrained=str(checkpoint), language="zh", preprocess="cn-clip")
    out = tmp_path / "runs"
    code, _, err = bench_cli("run", "--model", yml, "--dataset", folder, "--protocol", "cn-clip", "--save-logits",
                             "--out", out, "--cache-dir", tmp_path / "cache", "--workers", "0", "--device", "cpu",
                             *extra)
    assert code == 0, err
    path = latest_result(out / "cn-random" / folder.name, "zeroshot")
    saved = np.load(path.with_name(path.stem + ".logits.npz"), allow_pickle=False)
    paths = [str((folder / "test" / p).resolve()) if not Path(p).is_absolute() else str(Path(p).resolve())
             for p in saved["paths"]]
    return json.loads(path.read_text(encoding="utf-8")), paths, saved["scores"]


@pytest.mark.slow
@pytest.mark.parametrize("name, n_classes, per_class, templates", [
    ("food-101", 101, 1, "food_templates"),      # its own list in zeroshot_evaluation.py's template_dict
    ("cifar-10", 10, 3, "openai_templates"),     # not in it: the 183 openai templates, 4 of them repeats
])
def test_predictions_equal_cn_clips_own_functions_image_for_image(name, n_classes, per_class, templates, tmp_path,
                                                                   checkpoint, bench_cli):
    from cn_clip.eval import zeroshot_evaluation as ze

    folder = _archive_folder(tmp_path / "data", name, n_classes, per_class)
    ref_paths, ref_probs = _reference(checkpoint, folder, getattr(ze, templates))
    result, paths, probs = _bench(tmp_path, checkpoint, folder, bench_cli)
    assert result["protocol"] == "cn-clip" and result["scores"] == "softmax100"
    assert result["metrics_implementation"] == "elevater" and result["precision"] == "fp32"
    assert result["n_templates"] == len(getattr(ze, templates))  # repeats kept
    assert result["labels"] == str(folder / "label_cn.txt")
    order = [paths.index(p) for p in ref_paths]
    probs = probs[order]
    assert len(set(ref_probs.argmax(1))) >= 3, "the reference predicts too few classes for parity to mean much"
    np.testing.assert_array_equal(probs.argmax(1), ref_probs.argmax(1))
    np.testing.assert_allclose(probs, ref_probs, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)  # the metrics saw probabilities


@pytest.mark.slow
def test_bench_protocol_on_the_same_folder_differs(tmp_path, checkpoint, bench_cli):
    """The control: the same model and folder under bench's own protocol (our templates, the shipped cifar-10
    translations) is a different experiment in its own file, and it does not reproduce cn_clip's scores."""
    from cn_clip.eval import zeroshot_evaluation as ze

    folder = _archive_folder(tmp_path / "data", "cifar-10", 10, 3)
    ref_paths, ref_probs = _reference(checkpoint, folder, ze.openai_templates)
    cn_result, _, _ = _bench(tmp_path, checkpoint, folder, bench_cli)
    own, paths, logits = _bench(tmp_path, checkpoint, folder, bench_cli, "--protocol", "bench")
    assert own["protocol"] == "bench" and own["experiment"]["id"] != cn_result["experiment"]["id"]
    probs = torch.from_numpy(logits[[paths.index(p) for p in ref_paths]]).softmax(-1).numpy()
    assert not np.allclose(probs, ref_probs, rtol=1e-4, atol=1e-6)


def _script_template_dict() -> dict[str, str]:
    """`template_dict` as written in cn_clip/eval/zeroshot_evaluation.py (its __main__ block), read from the
    installed file's syntax tree."""
    from cn_clip.eval import zeroshot_evaluation as ze

    tree = ast.parse(Path(ze.__file__).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "template_dict" for t in node.targets):
            return {k.value: v.id for k, v in zip(node.value.keys, node.value.values)}
    raise AssertionError("template_dict not found in zeroshot_evaluation.py")


def test_template_choice_is_the_scripts():
    from bench import protocols

    spec = protocols.load_protocol("cn-clip").templates
    script = _script_template_dict()
    assert script.pop("openai") == spec["default"]
    assert script == spec["per_dataset"]


def test_package_templates_keep_order_and_repeats():
    from cn_clip.eval import cvinw_zeroshot_templates as t

    from bench import protocols
    from bench.protocol_prompts import package_prompt_set

    spec = protocols.load_protocol("cn-clip").templates
    ps = package_prompt_set(spec, "test", "pip install cn_clip")
    default = ps.templates_for("cifar-10")
    assert len(default) == len(t.openai_templates) == 183 and len(set(default)) == 179
    rendered = [ps.render("cifar-10", ["猫"])[0][i] for i in range(len(default))]
    assert rendered == [f("猫") for f in t.openai_templates]
    assert ps.templates_for("resisc-45") == ps.templates_for("eurosat")  # both eurosat_templates, by ELEVATER id
    assert [x.replace("{{ label }}", "x") for x in ps.templates_for("fgvc-aircraft")] == \
        [f("x") for f in t.aircraft_templates]
    assert ps.templates_for("imagenet-1k") == default  # no ImageNet entry in the script


def test_a_template_that_changes_its_argument_is_refused():
    from bench.errors import BenchError
    from bench.protocol_prompts import template_from_callable

    assert template_from_callable(lambda c: f"一张{c}的照片。", "x") == "一张{{ label }}的照片。"
    with pytest.raises(BenchError, match="exactly once"):
        template_from_callable(lambda c: f"{c.upper()} photo", "x")
    with pytest.raises(BenchError, match="exactly once"):
        template_from_callable(lambda c: f"{c} and {c}", "x")


@pytest.mark.parametrize("flags", [("--prompts", "demo-zh"), ("--labels", "numerals")])
def test_cn_clip_protocol_refuses_flags_it_fixes(flags, tmp_path, digits_root, cache_dir, bench_cli):
    out = tmp_path / "runs"
    code, _, err = bench_cli("run", "--model", "demo", "--dataset", "digits", "--data-root", digits_root,
                             "--cache-dir", cache_dir, "--out", out, "--workers", "0", "--protocol", "cn-clip", *flags)
    assert code == 2 and "fixes its templates" in err and flags[0] in err
    assert not out.exists() or not any(out.rglob("*.json"))


def test_duplicate_names_in_an_official_label_file_warn_under_the_protocol(tmp_path, caplog):
    from bench.datasets import sources
    from bench.errors import BenchError
    from bench.labels import resolve_labels
    from tests.tiny_models import make_image_dataset

    folder = make_image_dataset(tmp_path / "toy", n_classes=3, per_class=1, labels_zh=["猫", "狗", "猫"])
    ref = sources.ref_for_path(folder)
    data = sources.load(ref, "test")
    with pytest.raises(BenchError, match="identical names"):
        resolve_labels("dataset", ref.spec, "zh", data)
    labels = resolve_labels("dataset", ref.spec, "zh", data, duplicates="warn")
    assert labels.names == ("猫", "狗", "猫")
    assert "kept as the protocol publishes them" in caplog.text
