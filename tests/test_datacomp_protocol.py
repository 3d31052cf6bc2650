"""`--protocol datacomp`: how open_clip's published table was made (DataComp eval_utils/wds_eval.py, which runs
CLIP_benchmark's zero-shot classifier on its webdataset copies with amp=False on the images).

The reference is CLIP_benchmark's own code, imported: `build_wds_dataset` reads the folder's classnames.txt
and zeroshot_classification_templates.txt, `zero_shot_classifier` builds the class embeddings (fp32 here, as
`--no_amp` does) and `run_classification` scores the images with the model's own open_clip transform.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from identity_helpers import latest_result
from test_sources import write_wds
from tiny_models import make_open_clip_dir, non_square_images, write_model_yaml

from bench.datasets.registry import get_dataset
from bench.errors import BenchError

zsc = pytest.importorskip("clip_benchmark.metrics.zeroshot_classification")
pytest.importorskip("webdataset")  # CLIP_benchmark's webdataset reader

# cifar-10 in a class order and spelling that are not ours: every name must come from classnames.txt
CIFAR_NAMES = ["Truck", "ship", "HORSE", "frog", "dog", "deer", "cat", "bird", "automobile", "AirPlane"]
# templates with a repeat (CLIP_benchmark averages the list as written) and one that ends on the name
CIFAR_TEMPLATES = ["a blurry photo of a {c}.", "a photo of the {c}.", "itap of a {c}.", "a photo of the {c}.", "{c}"]
# KITTI: whole-sentence class names and the template '{c}', as CLIP's and DataComp's copies have them
KITTI_NAMES = ["a photo i took of a car on my left or right side.", "a photo i took with a car nearby.",
               "a photo i took with a car in the distance.", "a photo i took with no car."]


def _pngs(n: int, seed: int) -> list[bytes]:
    """Non-square images with a coloured block (so the model's resize + crop matters), PNG-encoded."""
    out = []
    for img in non_square_images(n, seed):
        buf = io.BytesIO()
        img.save(buf, format="png")
        out.append(buf.getvalue())
    return out


def datacomp_folder(folder: Path, names: list[str], templates: list[str], n: int, seed: int) -> Path:
    """A DataComp-style copy (djghosh/wds_<task>_test): shards, nshards.txt, classnames and templates."""
    labels = [i % len(names) for i in range(n)]
    write_wds(folder, names, labels, per_shard=7, images=_pngs(n, seed))
    (folder / "test" / "nshards.txt").write_text(str(len(list((folder / "test").glob("*.tar")))))
    (folder / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n", encoding="utf-8")
    return folder


# random-init seeds whose predictions spread over the classes of each set (most collapse onto one class)
SEEDS = {"cifar-10": 1, "kitti-distance": 5}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("datacomp-model")
    out = {}
    for dataset, seed in SEEDS.items():
        folder = make_open_clip_dir(root / f"tiny-oc-{seed}", seed=seed)
        out[dataset] = write_model_yaml(root / f"tiny-{seed}.yaml", name="tiny-oc", backend="open_clip",
                                        model=f"local-dir:{folder}", language="en")
    return out


@pytest.fixture(scope="module")
def model_yaml(models) -> Path:
    return models["kitti-distance"]


def _model_folder(model_yaml: Path) -> Path:
    return Path(model_yaml.read_text().split("local-dir:")[1].split()[0])


def clip_benchmark_reference(model_yaml: Path, folder: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(logits, targets, class names) from CLIP_benchmark's own functions, fp32 (amp=False) on the CPU."""
    import open_clip
    from clip_benchmark.datasets.builder import build_wds_dataset

    name = f"local-dir:{_model_folder(model_yaml)}"
    model, _, transform = open_clip.create_model_and_transforms(name)
    model.eval()
    dataset = build_wds_dataset("wds/x", transform, split="test", data_dir=str(folder))
    loader = torch.utils.data.DataLoader(dataset.batched(8), batch_size=None, shuffle=False, num_workers=0)
    classifier = zsc.zero_shot_classifier(model, open_clip.get_tokenizer(name), dataset.classes, dataset.templates,
                                          "cpu", amp=False)
    logits, target = zsc.run_classification(model, classifier, loader, "cpu", amp=False)
    return logits, target, dataset.classes


def _run(bench_cli, model_yaml: Path, folder: Path, tmp_path: Path, *extra) -> tuple[dict, dict]:
    out = tmp_path / "runs"
    code, _, err = bench_cli("run", "--model", model_yaml, "--dataset", folder, "--protocol", "datacomp",
                             "--save-logits", "--out", out, "--cache-dir", tmp_path / "cache", "--workers", "0",
                             "--device", "cpu", *extra)
    assert code == 0, err
    from bench.datasets import sources

    path = latest_result(out / "tiny-oc" / sources.ref_for_path(folder).spec.name, "zeroshot")
    saved = np.load(path.with_name(path.stem + ".logits.npz"), allow_pickle=False)
    return json.loads(path.read_text(encoding="utf-8")), {k: saved[k] for k in saved.files}


@pytest.mark.parametrize("dataset,names,templates", [
    ("cifar-10", CIFAR_NAMES, CIFAR_TEMPLATES),
    ("kitti-distance", KITTI_NAMES, ["{c}"]),
])
def test_predictions_and_metrics_equal_clip_benchmarks(dataset, names, templates, models, tmp_path, bench_cli):
    spec, model_yaml = get_dataset(dataset), models[dataset]
    folder = datacomp_folder(tmp_path / "data" / spec.sources["datacomp"], names, templates, n=30, seed=11)
    result, saved = _run(bench_cli, model_yaml, folder, tmp_path)
    assert result["dataset"] == dataset  # the DataComp folder name is recognised as the registered set
    assert (result["protocol"], result["precision"], result["metrics_implementation"]) == \
        ("datacomp", "fp32", "clip_benchmark")
    # the label source and the templates are the folder's, repeats kept
    assert sorted(result["class_names"]) == sorted(names)
    assert result["labels"].endswith("classnames.txt")
    assert result["n_templates"] == result["prompt_texts"]["n_prompts"] == len(templates)
    assert result["prompts"].endswith("zeroshot_classification_templates.txt")

    logits, target, ref_names = clip_benchmark_reference(model_yaml, folder)
    ours = [result["class_names"][j] for j in saved["scores"].argmax(axis=1)]
    theirs = [ref_names[j] for j in logits.argmax(dim=1).tolist()]
    assert len(set(theirs)) > 1  # the reference spreads its predictions, so agreement means something
    assert ours == theirs  # image for image (both read the shards in order)
    torch.testing.assert_close(torch.from_numpy(np.sort(saved["scores"], axis=1)), logits.sort(dim=1).values,
                               rtol=1e-4, atol=1e-4)
    from sklearn.metrics import balanced_accuracy_score

    # zsc.accuracy's definition (its float() of a 1-element array fails on this numpy): target in the top 1
    acc1 = float(logits.topk(1, 1, True, True)[1].t().eq(target.view(1, -1)).float().sum()) / len(target)
    assert result["metrics"]["top1"] == pytest.approx(acc1, abs=1e-12)
    assert result["metrics"]["mean_per_class"] == pytest.approx(
        balanced_accuracy_score(target, logits.argmax(dim=1)), abs=1e-12)


def test_control_bench_protocol_gives_other_predictions(model_yaml, tmp_path, bench_cli):
    """The same folder under bench's protocol (our labels and templates) does not agree: the parity above is
    owed to reading the folder's files, not to a model that predicts the same whatever it is told."""
    folder = datacomp_folder(tmp_path / "data" / get_dataset("kitti-distance").sources["datacomp"], KITTI_NAMES,
                             ["{c}"], n=30, seed=11)
    ours, saved = _run(bench_cli, model_yaml, folder, tmp_path)
    out = tmp_path / "bench-runs"
    code, _, err = bench_cli("run", "--model", model_yaml, "--dataset", folder, "--save-logits", "--out", out,
                             "--cache-dir", tmp_path / "cache", "--workers", "0", "--device", "cpu")
    assert code == 0, err
    path = latest_result(out / "tiny-oc" / "kitti-distance", "zeroshot")
    other = np.load(path.with_name(path.stem + ".logits.npz"))["scores"]
    assert json.loads(path.read_text())["class_names"] != ours["class_names"]
    assert (other.argmax(axis=1) != saved["scores"].argmax(axis=1)).any()


def test_an_elevater_folder_is_refused_with_the_copy_to_fetch(model_yaml, tmp_path, bench_cli):
    from tiny_models import make_image_dataset

    make_image_dataset(tmp_path / "data" / "cifar-10", n_classes=10, per_class=1)
    code, _, err = bench_cli("run", "--model", model_yaml, "--dataset", "cifar-10", "--data-root", tmp_path / "data",
                             "--protocol", "datacomp", "--out", tmp_path / "runs", "--cache-dir", tmp_path / "cache")
    assert code != 0
    assert "classnames.txt" in err and "--copy datacomp" in err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("zeroshot*.json"))


def test_the_datacomp_copy_is_found_first(tmp_path):
    """With an ELEVATER folder and DataComp's copy under one data root, --protocol datacomp reads DataComp's and
    bench's protocol keeps finding the ELEVATER folder."""
    from tiny_models import make_image_dataset

    from bench.protocols import load_protocol
    from bench.runner import resolve_datasets

    make_image_dataset(tmp_path / "cifar-10", n_classes=10, per_class=1)
    datacomp_folder(tmp_path / "wds_cifar10_test", CIFAR_NAMES, CIFAR_TEMPLATES, n=10, seed=1)
    (ref,), _ = resolve_datasets(["cifar-10"], tmp_path, protocol=load_protocol("datacomp"))
    assert (ref.folder.name, ref.source) == ("wds_cifar10_test", "wds")
    (ref,), _ = resolve_datasets(["cifar-10"], tmp_path, protocol=load_protocol("bench"))
    assert (ref.folder.name, ref.source) == ("cifar-10", "elevater")


def test_all_skips_what_the_protocol_cannot_score(tmp_path):
    """CLIP_benchmark's metrics have no 11-point mAP: under `all`, VOC is a note, not a crash mid-run; named,
    it is refused before any work."""
    from bench.protocols import load_protocol
    from bench.runner import resolve_datasets

    write_wds(tmp_path / "wds_voc2007_multilabel", list(get_dataset("voc-2007").classes), [(0,), (1, 2)],
              multilabel=True)
    datacomp_folder(tmp_path / "wds_cifar10_test", CIFAR_NAMES, CIFAR_TEMPLATES, n=10, seed=1)
    refs, notes = resolve_datasets(["all"], tmp_path, protocol=load_protocol("datacomp"))
    assert "cifar-10" in [r.spec.name for r in refs] and "voc-2007" not in [r.spec.name for r in refs]
    assert any("voc-2007" in n and "clip_benchmark" in n for n in notes)
    with pytest.raises(BenchError, match="voc-2007.*cannot score"):
        resolve_datasets(["voc-2007"], tmp_path, protocol=load_protocol("datacomp"))


@pytest.mark.parametrize("line,message", [
    ("a photo of {c} and {c}", "exactly once"),
    ("a photo of {}", "not CLIP_benchmark's plain"),
    ("a {c!r} photo", "not CLIP_benchmark's plain"),
    ("a {{literal}} {c}", "literal braces"),
    ("a photo", "exactly once"),
])
def test_templates_bench_cannot_render_as_clip_benchmark_does_are_refused(line, message, tmp_path):
    from bench.protocol_prompts import wds_prompt_set

    (tmp_path / "zeroshot_classification_templates.txt").write_text(f"a photo of a {{c}}.\n{line}\n")
    with pytest.raises(BenchError, match=message) as err:
        wds_prompt_set(tmp_path, "datacomp")
    assert "zeroshot_classification_templates.txt:2" in str(err.value)


def test_templates_keep_order_and_repeats(tmp_path):
    from bench.protocol_prompts import wds_prompt_set

    (tmp_path / "zeroshot_classification_templates.txt").write_text("\n".join(CIFAR_TEMPLATES) + "\n")
    ps = wds_prompt_set(tmp_path, "datacomp")
    assert ps.render("cifar-10", ["cat"])[0] == [t.format(c="cat") for t in CIFAR_TEMPLATES]
    assert ps.language == "en"


def test_prompts_eval_takes_the_protocols_templates_with_their_repeats_as_baseline(model_yaml, tmp_path, bench_cli):
    """A protocol's published list keeps its repeats (CLIP_benchmark averages them as written): as the baseline
    of `bench prompts eval` it is a warning, not a lint error that stops the command."""
    folder = datacomp_folder(tmp_path / "data" / "wds_cifar10_test", CIFAR_NAMES, CIFAR_TEMPLATES, n=10, seed=3)
    mine = tmp_path / "mine.yaml"
    mine.write_text("name: mine\nlanguage: en\ntemplates:\n  - 'a photo of a {{ label }}.'\n", encoding="utf-8")
    code, out, err = bench_cli("prompts", "eval", mine, "--model", model_yaml, "--dataset", folder,
                               "--protocol", "datacomp", "--out", tmp_path / "runs", "--cache-dir", tmp_path / "cache",
                               "--device", "cpu")
    assert code == 0, err
    assert "zeroshot_classification_templates.txt" in out + err
