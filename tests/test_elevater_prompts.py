"""elevater-en must render the prompts ELEVATER's toolkit (vision_benchmark/datasets/prompts.py) builds.

The toolkit is not installable from the registry, so the one place our file had to differ from it,
KITTI, is pinned here: ELEVATER uses the template '{}' over whole-sentence class names; we rebuild those
sentences from our short English labels (label_translations/en/kitti-distance.yaml).
"""

from __future__ import annotations

import yaml

from bench.paths import labels_dir
from bench.prompts import load_prompt_set


def _kitti_labels() -> list[str]:
    with open(labels_dir() / "en" / "kitti-distance.yaml", encoding="utf-8") as f:
        return yaml.safe_load(f)["labels"]


def test_kitti_renders_elevater_sentences():
    rendered = load_prompt_set("elevater-en").render("kitti-distance", _kitti_labels())
    # one prompt per class, no extra templates averaged in (ELEVATER's kitti_templates is ['{}'])
    assert rendered == [
        ["a photo i took of a car on my left or right side."],
        ["a photo i took with a car nearby."],
        ["a photo i took with a car in the distance."],
        ["a photo i took with no car."],
    ]


def test_kitti_negation_variant_still_renders():
    # the 'other' label of the negation study goes through the same template without error
    assert load_prompt_set("elevater-en").render("kitti-distance", ["other"]) == [["a photo i took with other."]]
