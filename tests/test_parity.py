"""Parity: `bench run` predictions equal a direct computation with the underlying library."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import make_chinese_clip_dir, make_image_dataset, make_open_clip_dir, write_model_yaml  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from identity_helpers import latest_result  # noqa: E402

TEMPLATES_EN = ["a photo of a {{ label }}.", "a blurry photo of the {{ label }}."]
TEMPLATES_ZH = ["一张{{ label }}的照片。", "一张模糊的{{ label }}的照片。"]


def _prompt_file(path: Path, language: str, templates: list[str]) -> Path:
    path.write_text(yaml.safe_dump({"name": path.stem, "language": language, "templates": templates},
                                   allow_unicode=True), encoding="utf-8")
    return path


def _predictions(out: Path, model: str, dataset: str) -> dict[str, int]:
    with open(latest_result(out / model / dataset, "zeroshot", ".predictions.csv"), newline="") as f:
        return {row["path"]: int(row["prediction"]) for row in csv.DictReader(f)}


def _bench_predictions(bench_cli, tmp_path: Path, model_yaml: Path, prompts: Path, model: str) -> dict[str, int]:
    """`bench run` on the toy dataset under tmp_path/data with its own labels; predictions by path."""
    code, _, err = bench_cli("run", "--model", model_yaml, "--dataset", tmp_path / "data" / "toy", "--labels", "dataset",
                             "--prompts", prompts, "--out", tmp_path / "runs", "--cache-dir", tmp_path / "cache",
                             "--workers", "0", "--save-predictions")
    assert code == 0, err
    return _predictions(tmp_path / "runs", model, "toy")


def _direct(encode_image, encode_text, preprocess, data: Path, labels: list[str], templates: list[str]):
    """The protocol written out by hand: normalise each prompt, average, normalise; cosine logits."""
    classes = []
    for label in labels:
        texts = [t.replace("{{ label }}", label) for t in templates]
        emb = F.normalize(encode_text(texts).float(), dim=-1).mean(0)
        classes.append(F.normalize(emb, dim=-1))
    classes = torch.stack(classes)
    preds = {}
    for path in sorted((data / "test").rglob("*.png")):
        with Image.open(path) as img:
            x = preprocess(img).unsqueeze(0)
        feat = F.normalize(encode_image(x).float(), dim=-1)
        preds[path.relative_to(data / "test").as_posix()] = int((feat @ classes.T).argmax())
    return preds


def test_open_clip_local_dir_parity(tmp_path, bench_cli):
    import open_clip

    model_dir = make_open_clip_dir(tmp_path / "oc")
    data = make_image_dataset(tmp_path / "data" / "toy", labels_en=["cat", "dog", "car"])
    labels = ["cat", "dog", "car"]
    yml = write_model_yaml(tmp_path / "tiny.yaml", name="tiny-oc", backend="open_clip",
                           model=f"local-dir:{model_dir}", language="en")
    prompts = _prompt_file(tmp_path / "p-en.yaml", "en", TEMPLATES_EN)
    ours = _bench_predictions(bench_cli, tmp_path, yml, prompts, "tiny-oc")

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    model.eval()
    tok = open_clip.get_tokenizer(f"local-dir:{model_dir}")
    with torch.no_grad():
        theirs = _direct(model.encode_image, lambda t: model.encode_text(tok(t)), preprocess, data, labels, TEMPLATES_EN)
    assert ours == theirs
    assert len(ours) == 12
    result = json.loads(latest_result(tmp_path / "runs" / "tiny-oc" / "toy", "zeroshot").read_text())
    expected_top1 = np.mean([theirs[p] == int(p.split("/")[0]) for p in theirs])
    assert result["metrics"]["top1"] == pytest.approx(expected_top1)


def test_chinese_clip_save_pretrained_parity(tmp_path, bench_cli):
    from transformers import AutoModel, AutoTokenizer

    model_dir = make_chinese_clip_dir(tmp_path / "cc")
    labels = ["猫", "狗", "汽车"]
    data = make_image_dataset(tmp_path / "data" / "toy", labels_zh=labels)
    yml = write_model_yaml(tmp_path / "tiny-cn.yaml", name="tiny-cn", backend="transformers",
                           model=str(model_dir), language="zh", preprocess="cn-clip")
    prompts = _prompt_file(tmp_path / "p-zh.yaml", "zh", TEMPLATES_ZH)
    ours = _bench_predictions(bench_cli, tmp_path, yml, prompts, "tiny-cn")

    model = AutoModel.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]

    def squash(img):  # Chinese CLIP protocol written out: whole image to 32×32, bicubic, no crop
        arr = np.asarray(img.convert("RGB").resize((32, 32), Image.BICUBIC), dtype=np.float32) / 255
        return torch.from_numpy(((arr - mean) / std).transpose(2, 0, 1)).float()

    def enc_text(texts):
        t = tok([x.lower() for x in texts], padding="max_length", max_length=52, truncation=True, return_tensors="pt")
        out = model.get_text_features(**t)
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def enc_image(x):
        out = model.get_image_features(pixel_values=x)
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    with torch.no_grad():
        theirs = _direct(enc_image, enc_text, squash, data, labels, TEMPLATES_ZH)
    assert ours == theirs


@pytest.fixture(scope="module")
def cn_backend(tmp_path_factory):
    from bench.backends import load_backend
    from bench.models import resolve_model

    folder = tmp_path_factory.mktemp("m")
    model_dir = make_chinese_clip_dir(folder / "cc")
    yml = write_model_yaml(folder / "cc.yaml", name="tiny-cn", backend="transformers", model=str(model_dir),
                           language="zh", preprocess="cn-clip")
    return load_backend(resolve_model(str(yml)))


def test_chinese_text_does_not_tokenize_to_unk(cn_backend):
    check = cn_backend.check_text("一张猫的照片。")
    assert check.unknown == ()
    assert check.n_tokens == 7 + 2
    ids = cn_backend.tokenizer("一张猫的照片")["input_ids"]
    assert cn_backend.tokenizer.unk_token_id not in ids


def test_chinese_clip_context_length_is_52(cn_backend):
    assert cn_backend.context_length == 52
    long_text = "猫" * 200
    assert cn_backend.check_text(long_text).truncated
    seen = {}
    original = cn_backend.model.get_text_features

    def spy(**kw):
        seen["shape"] = tuple(kw["input_ids"].shape)
        return original(**kw)

    cn_backend.model.get_text_features = spy
    try:
        cn_backend.encode_texts([long_text, "狗"])
    finally:
        cn_backend.model.get_text_features = original
    assert seen["shape"] == (2, 52)


def test_chinese_clip_squashes_without_crop(cn_backend):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, size=(20, 80, 3), dtype=np.uint8))  # 80 wide, 20 high
    ours = cn_backend.preprocess(img)
    assert tuple(ours.shape) == (3, 32, 32)
    squashed = np.asarray(img.resize((32, 32), Image.BICUBIC), dtype=np.float32) / 255
    mean = np.array(cn_backend.preprocess.transforms[-1].mean, dtype=np.float32)
    std = np.array(cn_backend.preprocess.transforms[-1].std, dtype=np.float32)
    expected = torch.from_numpy(((squashed - mean) / std).transpose(2, 0, 1))
    assert torch.allclose(ours, expected, atol=2e-2)
    # the model's own processor crops the centre: on this image that is a different input
    from bench.backends.hf import HFImageTransform

    cropped = HFImageTransform(cn_backend_processor(cn_backend))(img)
    assert not torch.allclose(ours, cropped, atol=1e-1)


def cn_backend_processor(backend):
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(backend.spec.model)


def test_openai_entries_use_quickgelu():
    import open_clip

    from bench.models import list_models

    openai = [m for m in list_models() if m.name.startswith("openai/")]
    assert len(openai) == 4
    for spec in openai:
        assert spec.model.endswith("-quickgelu"), spec.name
        assert spec.pretrained == "openai"
        assert open_clip.get_model_config(spec.model)["quick_gelu"] is True, spec.name


def test_cn_clip_rn50_random_init_checkpoint(tmp_path, bench_cli):
    cn_utils = pytest.importorskip("cn_clip.clip.utils")
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        model = cn_utils.create_model("RN50@RBT3-chinese")
    ckpt = tmp_path / "clip_cn_rn50.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    data = make_image_dataset(tmp_path / "data" / "toy", per_class=1, size=(40, 30))
    yml = write_model_yaml(tmp_path / "rn50.yaml", name="tiny-rn50", backend="cn_clip", model="RN50@RBT3-chinese",
                           pretrained=str(ckpt), language="zh", preprocess="cn-clip")
    prompts = _prompt_file(tmp_path / "p.yaml", "zh", TEMPLATES_ZH)
    code, out, err = bench_cli("run", "--model", yml, "--dataset", data, "--labels", "dataset", "--prompts", prompts,
                               "--out", tmp_path / "runs", "--cache-dir", tmp_path / "cache", "--workers", "0")
    assert code == 0, err
    result = json.loads(latest_result(tmp_path / "runs" / "tiny-rn50" / "toy", "zeroshot").read_text())
    assert result["n_samples"] == 3
    from bench.backends import load_backend
    from bench.models import resolve_model

    backend = load_backend(resolve_model(str(yml)))
    assert backend.context_length == 52
    assert backend.check_text("一张汽车的照片").unknown == ()


def test_cn_clip_missing_extra_names_install_command(tmp_path, monkeypatch, bench_cli):
    monkeypatch.setitem(sys.modules, "cn_clip", None)
    monkeypatch.setitem(sys.modules, "cn_clip.clip", None)
    data = make_image_dataset(tmp_path / "data" / "toy", per_class=1)
    yml = write_model_yaml(tmp_path / "rn50.yaml", name="x", backend="cn_clip", model="RN50@RBT3-chinese",
                           pretrained="clip_cn_rn50.pt", language="zh", preprocess="cn-clip")
    code, _, err = bench_cli("run", "--model", yml, "--dataset", data, "--labels", "dataset",
                             "--out", tmp_path / "runs", "--cache-dir", tmp_path / "cache", "--workers", "0")
    assert code == 2
    assert "pip install -e '.[cn-clip]'" in err
    assert "Traceback" not in err


def test_labels_outside_the_vocabulary_are_reported(cn_backend, caplog):
    from bench.labels import Labels
    from bench.runner import unknown_labels

    with caplog.at_level("WARNING"):
        unknown = unknown_labels(cn_backend, Labels(("猫", "鸸鹋", "狗"), "toy.yaml"))
    assert unknown == ["鸸鹋"]
    assert "鸸鹋" in caplog.text and "[UNK]" in caplog.text
    assert unknown_labels(cn_backend, Labels(("猫", "澳洲鸵鸟"), "toy.yaml")) == []


def test_result_records_unknown_labels(tmp_path, bench_cli):
    model_dir = make_chinese_clip_dir(tmp_path / "cc")
    data = make_image_dataset(tmp_path / "data" / "toy", n_classes=2, per_class=1, labels_zh=["猫", "鸸鹋"])
    yml = write_model_yaml(tmp_path / "tiny-cn.yaml", name="tiny-cn", backend="transformers",
                           model=str(model_dir), language="zh", preprocess="cn-clip")
    code, _, err = bench_cli("run", "--model", yml, "--dataset", data, "--labels", "dataset", "--prompts", "simple-zh",
                             "--out", tmp_path / "runs", "--cache-dir", tmp_path / "cache", "--workers", "0")
    assert code == 0, err
    result = json.loads(latest_result(tmp_path / "runs" / "tiny-cn" / "toy", "zeroshot").read_text())
    assert result["labels_with_unknown_tokens"] == ["鸸鹋"]
