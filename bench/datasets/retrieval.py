"""Image–text retrieval sources: images plus captions, each caption paired with one or more images.

Three layouts (docs/retrieval.md, "Formats"):

- ``cn-clip`` — Chinese CLIP's released layout (MUGE, Flickr30K-CN, COCO-CN):
  ``<dir>/<split>_texts.jsonl`` of ``{"text_id": 8428, "text": "…", "image_ids": [1076345, 517602]}`` and
  ``<dir>/<split>_imgs.tsv`` of ``image_id<TAB>base64`` (or a folder ``<dir>/<split>_imgs/<image_id>.<ext>``).
- ``wds-retrieval`` — CLIP_benchmark's retrieval webdatasets (``wds_flickr30k``, ``wds_mscoco_captions``):
  ``<dir>/dataset_type.txt`` saying ``retrieval`` and ``<dir>/<split>/*.tar``; a sample is an image and a
  ``txt`` member with one caption per line.
- ``captions`` — a plain folder: ``<dir>/<split>/`` holds the images and ``<dir>/<split>_captions.csv``
  (or ``.txt``) has a header line and one ``image,caption`` row per caption, the image path relative to
  ``<dir>/<split>/`` — the format of CLIP_benchmark's Flickr annotation files.

Loaders read only text and tar headers: a tsv image is kept as the byte span of its base64 string and a
tar image as the span of its member, decoded in DataLoader workers. Every loader names the file and line
of bad input. The image fingerprint covers the images only (so editing captions never re-encodes them);
the captions and their pairing have a fingerprint of their own.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

from bench.datasets import wds
from bench.datasets.base import SplitData
from bench.datasets.elevater import IMAGE_EXTS
from bench.datasets.registry import DatasetSpec, find_dataset, retrieval_spec
from bench.errors import BenchError

log = logging.getLogger(__name__)
SPLITS = ("test", "valid", "val", "train")
# Chinese CLIP names its validation split `valid`; `--split val` finds it too (and the other way round).
SPLIT_ALIASES = {"val": "valid", "valid": "val"}
CAPTION_FILES = ("{split}_captions.csv", "{split}_captions.txt")


@dataclass(frozen=True)
class RetrievalSplit(SplitData):
    """One split of a retrieval set: the images (as SplitData) plus captions and which images each names.

    ``targets[i]`` lists the captions of image ``i``; ``text_images[t]`` lists the images of caption ``t``."""

    texts: tuple[str, ...] = ()
    text_images: tuple[tuple[int, ...], ...] = ()
    text_ids: tuple[str, ...] = ()  # the source's id of each caption (jsonl text_id, or "<image>#<n>")
    texts_fingerprint: str = ""
    language: str = ""

    @property
    def n_texts(self) -> int:
        return len(self.texts)

    def subset(self, indices: list[int]) -> RetrievalSplit:
        """The given images and the captions that name at least one of them (pairs to other images dropped)."""
        keep = sorted(set(int(i) for i in indices))
        new_index = {old: new for new, old in enumerate(keep)}
        texts, text_images, text_ids = [], [], []
        for t, imgs in enumerate(self.text_images):
            mine = tuple(new_index[i] for i in imgs if i in new_index)
            if mine:
                texts.append(self.texts[t])
                text_images.append(mine)
                text_ids.append(self.text_ids[t])
        base = SplitData.subset(self, keep)
        return replace(self, paths=base.paths, spans=base.spans, fingerprint=base.fingerprint,
                       targets=_image_targets(len(keep), text_images), texts=tuple(texts),
                       text_images=tuple(text_images), text_ids=tuple(text_ids),
                       texts_fingerprint=_texts_fingerprint(texts, text_images, text_ids))


def _image_targets(n_images: int, text_images) -> tuple[tuple[int, ...], ...]:
    caps: list[list[int]] = [[] for _ in range(n_images)]
    for t, imgs in enumerate(text_images):
        for i in imgs:
            caps[i].append(t)
    return tuple(tuple(c) for c in caps)


def _texts_fingerprint(texts, text_images, text_ids) -> str:
    blob = json.dumps([list(texts), [list(x) for x in text_images], list(text_ids)], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _finish(spec: DatasetSpec, split: str, root: Path, source: str, paths: list[str], image_hash,
            texts: list[str], text_images: list[tuple[int, ...]], text_ids: list[str],
            spans: list | None = None, where: str = "") -> RetrievalSplit:
    if not paths:
        raise BenchError(f"{where or root}: split '{split}' has no images")
    if not texts:
        raise BenchError(f"{where or root}: split '{split}' has no captions")
    captioned = {i for imgs in text_images for i in imgs}
    if len(captioned) < len(paths):
        # not an error: an image without a caption is a distractor for text->image and no image->text query
        log.info("%s/%s: %d of %d images have no caption (distractors, not image->text queries)",
                 spec.name, split, len(paths) - len(captioned), len(paths))
    data = RetrievalSplit(spec=spec, split=split, root=root, paths=tuple(paths),
                          targets=_image_targets(len(paths), text_images), source=source,
                          fingerprint=image_hash.hexdigest(), spans=tuple(spans or ()), texts=tuple(texts),
                          text_images=tuple(text_images), text_ids=tuple(text_ids),
                          texts_fingerprint=_texts_fingerprint(texts, text_images, text_ids),
                          language=spec.language)
    _check_counts(data)
    return data


def _check_counts(data: RetrievalSplit) -> None:
    """Warn when a registered set's split has other counts than the registry records (a partial copy?)."""
    want_i, want_t = data.spec.splits.get(data.split), data.spec.captions.get(data.split)
    got = []
    if want_i is not None and want_i != len(data):
        got.append(f"{len(data)} images (registry: {want_i})")
    if want_t is not None and want_t != data.n_texts:
        got.append(f"{data.n_texts} captions (registry: {want_t})")
    if got:
        log.warning("%s/%s has %s: results will not be comparable with published numbers",
                    data.spec.name, data.split, " and ".join(got))


# ----------------------------------------------------------------------------- Chinese CLIP layout


def _split_file(folder: Path, split: str, pattern: str) -> Path | None:
    for name in (split, SPLIT_ALIASES.get(split)):
        if name and (folder / pattern.format(split=name)).exists():
            return folder / pattern.format(split=name)
    return None


def cnclip_splits(folder: Path) -> list[str]:
    return sorted(p.name.removesuffix("_texts.jsonl") for p in folder.glob("*_texts.jsonl"))


def is_cnclip_folder(path: Path) -> bool:
    return path.is_dir() and any(
        (path / f"{s}_imgs.tsv").is_file() or (path / f"{s}_imgs").is_dir() for s in cnclip_splits(path))


def _read_tsv(tsv: Path, h) -> tuple[list[str], list[tuple], dict[str, int]]:
    """Image ids, base64 spans and id -> row of a ``image_id<TAB>base64`` file, reading it once."""
    paths, spans, rows = [], [], {}
    offset = 0
    with open(tsv, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            start, offset = offset, offset + len(line)
            h.update(line)
            body = line.rstrip(b"\r\n")
            if not body.strip():
                continue
            tab = body.find(b"\t")
            if tab < 0:
                raise BenchError(f"{tsv}:{lineno}: expected `image_id<TAB>base64`, found no tab")
            try:
                image_id = body[:tab].decode("utf-8").strip()
            except UnicodeDecodeError:
                raise BenchError(f"{tsv}:{lineno}: the image id is not UTF-8 text") from None
            if not image_id:
                raise BenchError(f"{tsv}:{lineno}: empty image id before the tab")
            if tab + 1 == len(body):
                raise BenchError(f"{tsv}:{lineno}: image {image_id} has no base64 data after the tab")
            if image_id in rows:
                raise BenchError(f"{tsv}:{lineno}: image id {image_id} already appears on line {rows[image_id][1]}")
            rows[image_id] = (len(paths), lineno)
            paths.append(f"{tsv.name}/{image_id}")
            spans.append((tsv.name, start + tab + 1, len(body) - tab - 1, "base64"))
    return paths, spans, {k: v[0] for k, v in rows.items()}


def _read_image_dir(img_dir: Path, h) -> tuple[list[str], dict[str, int]]:
    files = sorted((e for e in os.scandir(img_dir) if e.is_file() and Path(e.name).suffix.lower() in IMAGE_EXTS),
                   key=lambda e: e.name)
    paths, rows = [], {}
    for e in files:
        image_id = Path(e.name).stem
        if image_id in rows:
            raise BenchError(f"{img_dir}: two images have the id {image_id} ({paths[rows[image_id]]} and {e.name})")
        st = e.stat()
        h.update(f"{e.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        rows[image_id] = len(paths)
        paths.append(f"{img_dir.name}/{e.name}")
    return paths, rows


def _read_jsonl(path: Path, rows: dict[str, int], images_file: Path, split: str, dataset: str):
    texts, text_images, text_ids = [], [], []
    seen: dict[str, int] = {}
    unannotated = 0
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise BenchError(f"{path}: not UTF-8 text") from None
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            raise BenchError(f"{where}: not a JSON object ({exc.args[0] if exc.args else exc})") from None
        if not isinstance(obj, dict):
            raise BenchError(f"{where}: expected a JSON object with text_id, text and image_ids")
        missing = [k for k in ("text_id", "text", "image_ids") if k not in obj]
        if missing:
            raise BenchError(f"{where}: missing key(s) {', '.join(missing)} (expected text_id, text, image_ids)")
        text, ids = obj["text"], obj["image_ids"]
        if not isinstance(text, str) or not text.strip():
            raise BenchError(f"{where}: 'text' must be a non-empty string")
        if not isinstance(ids, list) or not all(isinstance(i, (int, str)) and not isinstance(i, bool) for i in ids):
            raise BenchError(f"{where}: 'image_ids' must be a list of image ids")
        tid = str(obj["text_id"])
        if tid in seen:
            raise BenchError(f"{where}: text_id {tid} already appears on line {seen[tid]}")
        seen[tid] = lineno
        if not ids:
            unannotated += 1
            continue
        unknown = [str(i) for i in ids if str(i) not in rows]
        if unknown:
            raise BenchError(f"{where}: image id {unknown[0]} is not in {images_file}")
        texts.append(text)
        text_images.append(tuple(sorted({rows[str(i)] for i in ids})))
        text_ids.append(tid)
    if unannotated and not texts:
        raise BenchError(f"{path}: no caption has image_ids, so the '{split}' split of {dataset} is unannotated "
                         "and cannot be scored (MUGE's test split is scored by its leaderboard; use --split valid)")
    if unannotated:
        raise BenchError(f"{path}: {unannotated} caption(s) have empty image_ids; an annotated split needs "
                         "the images of every caption")
    return texts, text_images, text_ids


def load_cnclip(spec: DatasetSpec, folder: Path, split: str) -> RetrievalSplit:
    """``<split>_texts.jsonl`` + ``<split>_imgs.tsv`` (or ``<split>_imgs/``), Chinese CLIP's layout."""
    jsonl = _split_file(folder, split, "{split}_texts.jsonl")
    if jsonl is None:
        raise BenchError(f"{folder}: no '{split}' split ({split}_texts.jsonl); found: "
                         f"{', '.join(cnclip_splits(folder)) or 'none'}")
    name = jsonl.name.removesuffix("_texts.jsonl")
    tsv, img_dir = folder / f"{name}_imgs.tsv", folder / f"{name}_imgs"
    h = hashlib.sha256(f"cn-clip|{name}|".encode())
    if tsv.is_file():
        paths, spans, rows = _read_tsv(tsv, h)
        images_file = tsv
    elif img_dir.is_dir():
        (paths, rows), spans, images_file = _read_image_dir(img_dir, h), [], img_dir
    else:
        raise BenchError(f"{folder}: {jsonl.name} has no images beside it (expected {tsv.name} of "
                         f"`image_id<TAB>base64` lines, or a folder {img_dir.name}/ of <image_id>.jpg files)")
    texts, text_images, text_ids = _read_jsonl(jsonl, rows, images_file, split, spec.name)
    return _finish(spec, name, folder, "cn-clip", paths, h, texts, text_images, text_ids, spans, str(jsonl))


# ----------------------------------------------------------------------------- CLIP_benchmark webdataset


def is_wds_retrieval_folder(path: Path) -> bool:
    f = path / "dataset_type.txt"
    return wds.is_wds_folder(path) and f.is_file() and f.read_text(encoding="utf-8").strip().lower() == "retrieval"


def load_wds(spec: DatasetSpec, folder: Path, split: str) -> RetrievalSplit:
    """Tar shards whose samples are an image and a ``txt`` member of captions, one per line."""
    split_dir = folder / split
    parts = wds.shards(split_dir) if split_dir.is_dir() else []
    if not parts:
        have = [s for s in SPLITS if (folder / s).is_dir() and wds.shards(folder / s)]
        raise BenchError(f"{folder}: no '{split}' split of .tar shards (found: {', '.join(have) or 'none'})")
    h = hashlib.sha256(f"wds-retrieval|{split}|".encode())
    paths, spans, texts, text_images, text_ids = [], [], [], [], []
    for shard in parts:
        st = shard.stat()
        h.update(f"{shard.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        for key, image, raw in wds.tar_samples(shard, "txt"):
            where = f"{shard}:{key}"
            if image is None or raw is None:
                raise BenchError(f"{where}: sample has no {'image' if image is None else 'txt'} member")
            try:
                caps = [c for c in raw.decode("utf-8").splitlines() if c.strip()]  # as CLIP_benchmark: str.splitlines
            except UnicodeDecodeError:
                raise BenchError(f"{where}.txt: captions are not UTF-8 text") from None
            if not caps:
                raise BenchError(f"{where}.txt: no caption (expected one caption per line)")
            i = len(paths)
            paths.append(f"{shard.name}/{image.name}")
            spans.append((shard.name, image.offset_data, image.size))
            for n, c in enumerate(caps):
                texts.append(c)
                text_images.append((i,))
                text_ids.append(f"{paths[-1]}#{n}")
    return _finish(spec, split, split_dir, "wds-retrieval", paths, h, texts, text_images, text_ids, spans,
                   str(split_dir))


# ----------------------------------------------------------------------------- plain folder + captions file


def caption_file(folder: Path, split: str) -> Path | None:
    for name in (split, SPLIT_ALIASES.get(split)):
        for pattern in CAPTION_FILES:
            if name and (folder / pattern.format(split=name)).is_file() and (folder / name).is_dir():
                return folder / pattern.format(split=name)
    return None


def is_captions_folder(path: Path) -> bool:
    return path.is_dir() and any(caption_file(path, s) for s in SPLITS)


def load_captions(spec: DatasetSpec, folder: Path, split: str) -> RetrievalSplit:
    """``<split>/`` images + ``<split>_captions.csv`` (header, then ``image,caption`` per caption)."""
    ann = caption_file(folder, split)
    if ann is None:
        have = [s for s in SPLITS if caption_file(folder, s)]
        raise BenchError(f"{folder}: no '{split}' split (expected {split}/ and {split}_captions.csv); "
                         f"found: {', '.join(have) or 'none'}")
    split_dir = folder / ann.name.split("_captions.")[0]
    try:
        text = ann.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise BenchError(f"{ann}: not UTF-8 text") from None
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header or [c.strip().lower() for c in header[:2]] != ["image", "caption"]:
        raise BenchError(f"{ann}:1: expected the header `image,caption`, got {','.join(header or []) or 'nothing'}")
    h = hashlib.sha256(f"captions|{split_dir.name}|".encode())
    paths, rows, texts, text_images, text_ids = [], {}, [], [], []
    per_image: dict[int, int] = {}
    for row in reader:
        lineno = reader.line_num
        if not row or not "".join(row).strip():
            continue
        # CLIP_benchmark's Flickr files do not quote captions that contain commas: the caption is the rest
        image, caption = row[0].strip().replace("\\", "/"), ",".join(row[1:]).strip()
        if not image or not caption:
            raise BenchError(f"{ann}:{lineno}: expected `image,caption` with both filled, got {','.join(row)!r}")
        if image not in rows:
            p = split_dir / image
            if ".." in Path(image).parts or Path(image).is_absolute():
                raise BenchError(f"{ann}:{lineno}: image path {image} must be relative to {split_dir}")
            if not p.is_file():
                raise BenchError(f"{ann}:{lineno}: image {image} not found in {split_dir}")
            st = p.stat()
            h.update(f"{image}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            rows[image] = len(paths)
            paths.append(image)
        i = rows[image]
        text_ids.append(f"{image}#{per_image.get(i, 0)}")
        per_image[i] = per_image.get(i, 0) + 1
        texts.append(caption)
        text_images.append((i,))
    return _finish(spec, split_dir.name, split_dir, "captions", paths, h, texts, text_images, text_ids,
                   where=str(ann))


# ----------------------------------------------------------------------------- lookup


def spec_for_folder(folder: Path) -> DatasetSpec:
    """The registry spec named like the folder, else an ad-hoc retrieval spec (captions' language unknown)."""
    spec = find_dataset(folder.name)
    if spec is not None and spec.task == "retrieval":
        return spec
    return retrieval_spec(folder.name)
