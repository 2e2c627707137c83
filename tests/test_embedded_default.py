"""The shipped embedded default: the toy LLaVA and the two toy detectors load as users load real ones, and work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration

from detectors import TOY_ARCHS, load_detector, toy_detector_path
from halluc.defaults import default_model
from halluc.models import load_lvlm
from halluc.objects import categories
from halluc.world import build_split

MAX_MODEL_MB, MAX_DETECTOR_MB = 20, 8


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Image.Image], list[set[str]]]:
    """Eight fixed val images of the world and the categories each one holds."""
    root = build_split("val", 8, tmp_path_factory.mktemp("world"), seed=0)
    coco = json.loads(root.instances.read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    present = {img["id"]: set() for img in coco["images"]}
    for ann in coco["annotations"]:
        present[ann["image_id"]].add(names[ann["category_id"]])
    images = [Image.open(root.images / img["file_name"]).convert("RGB") for img in coco["images"]]
    return images, [present[img["id"]] for img in coco["images"]]


def test_shipped_model_is_a_small_safetensors_llava() -> None:
    path = default_model()
    weights = path / "model.safetensors"
    assert weights.stat().st_size / 2**20 <= MAX_MODEL_MB
    model = AutoModelForImageTextToText.from_pretrained(path)
    assert isinstance(model, LlavaForConditionalGeneration)
    text = model.config.text_config
    assert text.num_hidden_layers >= 8 and text.num_attention_heads >= 8
    assert AutoProcessor.from_pretrained(path).chat_template


def test_shipped_model_names_present_objects(world: tuple[list[Image.Image], list[set[str]]]) -> None:
    images, present = world
    lvlm = load_lvlm(default_model())
    captions = lvlm.generate(images, ["Please describe this image in detail."] * len(images), max_new_tokens=96)
    named = [set(categories(caption)) for caption in captions]
    hits = [len(said & truth) for said, truth in zip(named, present, strict=True)]
    assert hits[0] >= 1, (captions[0], present[0])
    assert sum(hits) >= len(images), list(zip(captions, present, strict=True))


@pytest.mark.parametrize("arch", TOY_ARCHS)
def test_shipped_detectors_find_present_objects(arch: str, world: tuple[list[Image.Image], list[set[str]]]) -> None:
    path = toy_detector_path(arch)
    assert Path(path).stat().st_size / 2**20 <= MAX_DETECTOR_MB
    detector = load_detector(f"toy-{arch}")
    images, present = world
    found = detector.detect(images, sorted(set().union(*present)))
    correct = sum(len({d.label for d in dets} & truth) for dets, truth in zip(found, present, strict=True))
    assert correct >= sum(len(truth) for truth in present) // 2
