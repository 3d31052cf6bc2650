"""Retrieval sources: Chinese CLIP's tsv/jsonl layout, CLIP_benchmark retrieval webdatasets, plain folders
with a captions file; validation errors name file and line; fingerprints follow content."""

from __future__ import annotations

import base64
import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from bench.datasets import sources
from bench.datasets.registry import get_dataset, list_datasets
from bench.errors import BenchError


def _png(value: int, size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (value % 256, 50, 0)).save(buf, format="png")
    return buf.getvalue()


def write_cnclip(folder: Path, split: str = "test", n_images: int = 4, texts: list | None = None,
                 urlsafe: bool = True) -> Path:
    """Chinese CLIP layout: <split>_imgs.tsv (id<TAB>base64) + <split>_texts.jsonl."""
    folder.mkdir(parents=True, exist_ok=True)
    enc = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    with open(folder / f"{split}_imgs.tsv", "w", encoding="utf-8") as f:
        for i in range(n_images):
            f.write(f"{1000 + i}\t{enc(_png(i * 40)).decode()}\n")
    if texts is None:  # caption 0 shared by two images; image 3 has two captions
        texts = [{"text_id": 1, "text": "红色的图", "image_ids": [1000, 1001]},
                 {"text_id": 2, "text": "第三张", "image_ids": [1002]},
                 {"text_id": 3, "text": "第四张", "image_ids": [1003]},
                 {"text_id": 4, "text": "又一张第四张", "image_ids": [1003]}]
    (folder / f"{split}_texts.jsonl").write_text(
        "".join((t if isinstance(t, str) else json.dumps(t, ensure_ascii=False)) + "\n" for t in texts),
        encoding="utf-8")
    return folder


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_wds_retrieval(folder: Path, captions: list[list[str]], split: str = "test", per_shard: int = 2) -> Path:
    """CLIP_benchmark's retrieval webdataset: dataset_type.txt 'retrieval', <split>/<n>.tar of png + txt."""
    (folder / split).mkdir(parents=True, exist_ok=True)
    (folder / "dataset_type.txt").write_text("retrieval\n")
    for s in range(0, len(captions), per_shard):
        with tarfile.open(folder / split / f"{s // per_shard}.tar", "w") as tar:
            for i in range(s, min(s + per_shard, len(captions))):
                _add(tar, f"s{i:07d}.png", _png(i * 30))
                _add(tar, f"s{i:07d}.txt", "\n".join(captions[i]).encode())
    return folder


def write_captions(folder: Path, rows: list[str], n_images: int = 3, split: str = "test") -> Path:
    (folder / split).mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        (folder / split / f"{i}.png").write_bytes(_png(i * 50))
    (folder / f"{split}_captions.csv").write_text("image,caption\n" + "".join(r + "\n" for r in rows),
                                                  encoding="utf-8")
    return folder


def _load(folder: Path, split: str = "test"):
    return sources.load(sources.ref_for_path(folder), split)


# --- registry -----------------------------------------------------------------------------


def test_registry_has_the_five_retrieval_sets_apart_from_classification():
    names = {s.name for s in list_datasets(task="retrieval")}
    assert {"muge", "flickr30k-cn", "coco-cn", "flickr30k", "mscoco"} <= names
    assert not names & {s.name for s in list_datasets()}  # `all` (classification) never includes them
    for name in ("muge", "flickr30k-cn", "coco-cn", "flickr30k", "mscoco"):
        spec = get_dataset(name)
        assert spec.metric == "mean_recall" and spec.language in ("en", "zh") and spec.splits
    assert get_dataset("muge").eval_split == "valid"
    assert get_dataset("mscoco").sources["wds"] == "wds_mscoco_captions"


def test_retrieval_spec_with_classes_is_refused(tmp_path):
    from bench.datasets.registry import DatasetSpec

    with pytest.raises(BenchError, match="captions, not classes"):
        DatasetSpec("x", 2, "mean_recall", ("a", "b"), task="retrieval").validate("x.yaml")
    with pytest.raises(BenchError, match="metric"):
        DatasetSpec("x", 0, "accuracy", task="retrieval").validate("x.yaml")


# --- Chinese CLIP layout ------------------------------------------------------------------


@pytest.mark.parametrize("urlsafe", [True, False])
def test_cnclip_tsv_reads_pairs_and_decodes_base64_lazily(tmp_path, urlsafe):
    folder = write_cnclip(tmp_path / "MySet", urlsafe=urlsafe)
    ref = sources.ref_for_path(folder)
    assert ref.source == "cn-clip" and ref.spec.task == "retrieval"
    data = sources.load(ref, "test")
    assert len(data) == 4 and data.n_texts == 4
    assert data.text_images == ((0, 1), (2,), (3,), (3,))
    assert data.targets == ((0,), (0,), (1,), (2, 3))  # per image: its captions
    assert data.text_ids == ("1", "2", "3", "4")
    img = data.images(lambda im: im.convert("RGB").getpixel((0, 0)))
    assert [img[k][0][0] for k in range(4)] == [0, 40, 80, 120]


def test_cnclip_image_folder_instead_of_tsv(tmp_path):
    folder = write_cnclip(tmp_path / "s")
    (folder / "test_imgs.tsv").unlink()
    (folder / "test_imgs").mkdir()
    for i in range(4):
        (folder / "test_imgs" / f"{1000 + i}.png").write_bytes(_png(i))
    data = _load(folder)
    assert data.paths[0] == "test_imgs/1000.png" and data.text_images[0] == (0, 1)
    assert data.images(lambda im: im.size)[3][0] == (8, 8)


def test_valid_split_is_found_as_val_too(tmp_path):
    folder = write_cnclip(tmp_path / "s", split="valid")
    assert _load(folder, "val").split == "valid"
    with pytest.raises(BenchError, match=r"no 'test' split .*found: valid"):
        _load(folder, "test")


@pytest.mark.parametrize("line, match", [
    ('{"text_id": 1, "text": "a", "image_ids": [1000]', r"test_texts.jsonl:2: not a JSON object"),
    ('{"text_id": 9, "image_ids": [1000]}', r"test_texts.jsonl:2: missing key\(s\) text"),
    ('{"text_id": 9, "text": "", "image_ids": [1000]}', r"test_texts.jsonl:2: 'text' must be a non-empty"),
    ('{"text_id": 9, "text": "a", "image_ids": 1000}', r"test_texts.jsonl:2: 'image_ids' must be a list"),
    ('{"text_id": 9, "text": "a", "image_ids": [77]}', r"test_texts.jsonl:2: image id 77 is not in .*test_imgs.tsv"),
    ('{"text_id": 1, "text": "a", "image_ids": [1000]}', r"test_texts.jsonl:2: text_id 1 already appears on line 1"),
    ('{"text_id": 9, "text": "a", "image_ids": []}', r"1 caption\(s\) have empty image_ids"),
])
def test_bad_jsonl_names_file_and_line(tmp_path, line, match):
    folder = write_cnclip(tmp_path / "s", texts=[{"text_id": 1, "text": "x", "image_ids": [1000]}, line])
    with pytest.raises(BenchError, match=match):
        _load(folder)


def test_unannotated_split_says_what_to_do(tmp_path):
    folder = write_cnclip(tmp_path / "s", texts=[{"text_id": 1, "text": "x", "image_ids": []}])
    with pytest.raises(BenchError, match="unannotated.*--split valid"):
        _load(folder)


@pytest.mark.parametrize("content, match", [
    ("1000 no tab here\n", r"test_imgs.tsv:1: expected `image_id<TAB>base64`, found no tab"),
    ("1000\tAAAA\n1000\tBBBB\n", r"test_imgs.tsv:2: image id 1000 already appears on line 1"),
    ("\tAAAA\n", r"test_imgs.tsv:1: empty image id"),
    ("1000\t\n", r"test_imgs.tsv:1: image 1000 has no base64 data"),
])
def test_bad_tsv_names_file_and_line(tmp_path, content, match):
    folder = write_cnclip(tmp_path / "s")
    (folder / "test_imgs.tsv").write_text(content)
    with pytest.raises(BenchError, match=match):
        _load(folder)


def test_corrupt_base64_is_an_unreadable_image_with_its_path(tmp_path):
    folder = write_cnclip(tmp_path / "s", n_images=1, texts=[{"text_id": 1, "text": "x", "image_ids": [1000]}])
    (folder / "test_imgs.tsv").write_text("1000\tbm90IGFuIGltYWdl\n")  # base64 of "not an image"
    _, _, err = _load(folder).images(lambda im: im)[0]
    assert "test_imgs.tsv/1000" in err


def test_fingerprints_follow_images_and_captions_separately(tmp_path):
    a = _load(write_cnclip(tmp_path / "a"))
    b = _load(write_cnclip(tmp_path / "b"))
    assert (a.fingerprint, a.texts_fingerprint) == (b.fingerprint, b.texts_fingerprint)  # content, not path
    c = _load(write_cnclip(tmp_path / "c", texts=[{"text_id": 1, "text": "另一句", "image_ids": [1000]}]))
    assert c.fingerprint == a.fingerprint and c.texts_fingerprint != a.texts_fingerprint
    d_folder = write_cnclip(tmp_path / "d")
    lines = (d_folder / "test_imgs.tsv").read_text().splitlines()
    lines[0] = f"1000\t{base64.urlsafe_b64encode(_png(7)).decode()}"
    (d_folder / "test_imgs.tsv").write_text("\n".join(lines) + "\n")
    assert _load(d_folder).fingerprint != a.fingerprint


def test_subset_keeps_captions_of_kept_images(tmp_path):
    data = _load(write_cnclip(tmp_path / "s"))
    sub = data.subset([0, 3])
    assert len(sub) == 2 and sub.texts == ("红色的图", "第四张", "又一张第四张")
    assert sub.text_images == ((0,), (1,), (1,)) and sub.fingerprint != data.fingerprint


# --- CLIP_benchmark retrieval webdataset --------------------------------------------------


def test_wds_retrieval_captions_per_image(tmp_path):
    folder = write_wds_retrieval(tmp_path / "wds_flickr30k", [["a dog", "a brown dog"], ["a cat"], ["a car", "red"]])
    ref = sources.ref_for_path(folder)
    assert ref.source == "wds-retrieval" and ref.spec.name == "flickr30k"
    data = sources.load(ref, "test")
    assert data.texts == ("a dog", "a brown dog", "a cat", "a car", "red")
    assert data.text_images == ((0,), (0,), (1,), (2,), (2,))
    assert data.images(lambda im: im.getpixel((0, 0)))[2][0][0] == 60


def test_wds_retrieval_sample_without_captions_fails(tmp_path):
    folder = write_wds_retrieval(tmp_path / "w", [["a"], [""]])
    with pytest.raises(BenchError, match=r"0\.tar:/s0000001\.txt: no caption"):
        _load(folder)


def test_classification_wds_is_not_mistaken_for_retrieval(tmp_path):
    from test_sources import write_wds

    folder = write_wds(tmp_path / "cls", ["a", "b"], [0, 1])
    assert sources.detect(folder) == "wds"


# --- plain folder with a captions file ----------------------------------------------------


def test_captions_folder_clip_benchmark_style_rows(tmp_path):
    folder = write_captions(tmp_path / "caps", ["0.png,a red square", "0.png,one, two, three", "2.png,last"])
    data = _load(folder)
    assert data.source == "captions" and len(data) == 2  # image 1.png has no caption: not an image
    assert data.texts == ("a red square", "one, two, three", "last")  # unquoted commas stay in the caption
    assert data.text_images == ((0,), (0,), (1,)) and data.text_ids == ("0.png#0", "0.png#1", "2.png#0")


@pytest.mark.parametrize("rows, match", [
    (["0.png,fine", "9.png,missing image"], r"test_captions.csv:3: image 9.png not found"),
    (["0.png,"], r"test_captions.csv:2: expected `image,caption` with both filled"),
    (["../x.png,escape"], r"test_captions.csv:2: image path ../x.png must be relative"),
])
def test_bad_captions_file_names_line(tmp_path, rows, match):
    folder = write_captions(tmp_path / "caps", rows)
    with pytest.raises(BenchError, match=match):
        _load(folder)


def test_captions_file_without_header_is_refused(tmp_path):
    folder = write_captions(tmp_path / "caps", [])
    (folder / "test_captions.csv").write_text("0.png,a caption\n")
    with pytest.raises(BenchError, match=r"test_captions.csv:1: expected the header `image,caption`"):
        _load(folder)


def test_registered_set_found_under_data_root(tmp_path):
    write_cnclip(tmp_path / "Flickr30k-CN")
    ref = sources.locate(get_dataset("flickr30k-cn"), tmp_path, use_hub_cache=False)
    assert ref is not None and ref.source == "cn-clip" and ref.folder.name == "Flickr30k-CN"
    # a classification set never picks up a retrieval folder of the same name, nor the other way round
    write_cnclip(tmp_path / "mnist")
    assert sources.locate(get_dataset("mnist"), tmp_path, use_hub_cache=False) is None
