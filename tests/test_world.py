"""Synthetic world: determinism, exact COCO files, caption/object consistency, split priors, glyphs, errors."""

import hashlib
import itertools
import json
from collections import defaultdict
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from halluc.errors import ConfigError, OutputLocationError
from halluc.objects import category_by_name, extract_mentions
from halluc.world import SPLITS, WORLD_VERSION, build_split, image_dir, scene_types, world_categories
from halluc.world.build import MIN_VISIBLE
from halluc.world.captions import OCCLUDED_BELOW
from halluc.world.catalog import COLOURS, GLYPHS, NOUNS, SCENES
from halluc.world.layout import N_OBJECTS_P, SHIFT_ANCHORS_P, SHIFT_FOREIGN_P, Placement, partner
from halluc.world.render import render
from halluc.world.shapes import SHAPES, polygon_area

SIZES = {"train": 150, "val": 30, "shift": 80, "prior_free": 150}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("world")
    for split, n in SIZES.items():
        build_split(split, n, root, seed=0)
    return root


def _load(root: Path, kind: str, split: str) -> dict:
    return json.loads((root / f"{kind}_{split}.json").read_text(encoding="utf-8"))


def _objects(root: Path, split: str) -> tuple[dict, dict[int, list[dict]], dict[int, str]]:
    """(instances json, image id -> its annotations, category id -> name)."""
    data = _load(root, "instances", split)
    by_image: dict[int, list[dict]] = defaultdict(list)
    for ann in data["annotations"]:
        by_image[ann["image_id"]].append(ann)
    return data, by_image, {c["id"]: c["name"] for c in data["categories"]}


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def test_build_is_deterministic_across_runs_and_folders(tmp_path: Path) -> None:
    digests = set()
    for name in ("a", "b", "a"):
        paths = build_split("train", 8, tmp_path / name, seed=3)
        assert paths.images == image_dir(tmp_path / name, "train")
        assert len(list(paths.images.glob("*.png"))) == 8
        digests.add(_digest(tmp_path / name))
    assert len(digests) == 1
    build_split("val", 8, tmp_path / "c", seed=3)
    build_split("train", 8, tmp_path / "d", seed=4)
    val = {p.read_bytes() for p in image_dir(tmp_path / "c", "val").glob("*.png")}
    other_seed = {p.read_bytes() for p in image_dir(tmp_path / "d", "train").glob("*.png")}
    train = {p.read_bytes() for p in image_dir(tmp_path / "a", "train").glob("*.png")}
    assert not val & train and not other_seed & train


# What each world version builds (4 images of every split, seed 0). Splits are cached under WORLD_VERSION, so a
# generator change that keeps the version would leave users evaluating on stale cached splits.
VERSION_DIGESTS = {"2.0": "61a32da7ef0dfe90e795fdcba10ccf7d79066b6a92217463f90acbe207b33fdd"}


def test_world_output_is_pinned_to_its_version(tmp_path: Path) -> None:
    for split in SPLITS:
        build_split(split, 4, tmp_path, seed=0)
    assert _digest(tmp_path) == VERSION_DIGESTS.get(WORLD_VERSION), (
        "the world generator's output changed: bump WORLD_VERSION in halluc/world/build.py and record the new "
        "digest here"
    )


def test_prefix_stability_image_i_does_not_depend_on_n(tmp_path: Path) -> None:
    small, large = build_split("shift", 3, tmp_path / "s"), build_split("shift", 6, tmp_path / "l")
    for path in small.images.glob("*.png"):
        assert path.read_bytes() == (large.images / path.name).read_bytes()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' mask decoding on numpy 2
@pytest.mark.parametrize("split", SPLITS)
def test_pycocotools_loads_both_files(world: Path, split: str) -> None:
    instances = COCO(str(world / f"instances_{split}.json"))
    captions = COCO(str(world / f"captions_{split}.json"))
    assert len(instances.getImgIds()) == SIZES[split] == len(captions.getImgIds())
    assert sorted(instances.getCatIds()) == sorted(c["id"] for c in world_categories())
    for image_id in instances.getImgIds()[:10]:
        assert len(captions.getAnnIds(imgIds=image_id)) == 5
        for ann in instances.loadAnns(instances.getAnnIds(imgIds=image_id)):
            assert instances.annToMask(ann).sum() > 0
    image = instances.loadImgs(instances.getImgIds()[0])[0]
    assert image["scene"] in SCENES
    assert (image_dir(world, split) / image["file_name"]).is_file()


@pytest.mark.parametrize("split", SPLITS)
def test_ids_boxes_and_areas_are_consistent(world: Path, split: str) -> None:
    data, by_image, names = _objects(world, split)
    image_ids = [img["id"] for img in data["images"]]
    assert len(set(image_ids)) == len(image_ids)
    assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"])
    for cat in data["categories"]:
        assert category_by_name(cat["name"]).id == cat["id"]
    for img in data["images"]:
        assert img["width"] == img["height"] == 64
        anns = by_image[img["id"]]
        assert 1 <= len(anns) <= len(N_OBJECTS_P)
        assert len({a["category_id"] for a in anns}) == len(anns)
        for ann in anns:
            x, y, w, h = ann["bbox"]
            assert min(x, y) >= 0 and max(x + w, y + h) <= 64 + 1e-6
            assert 8.9 <= max(w, h) <= 30.5
            flat = ann["segmentation"][0]
            points = list(zip(flat[::2], flat[1::2], strict=True))
            assert ann["area"] == pytest.approx(polygon_area(points), abs=0.01)
            assert 0.3 * w * h < ann["area"] <= w * h + 0.01
            assert ann["iscrowd"] == 0 and MIN_VISIBLE <= ann["visible"] <= 1.0


@pytest.mark.parametrize("split", SPLITS)
def test_captions_mention_only_present_objects_and_every_visible_one(world: Path, split: str) -> None:
    _, by_image, names = _objects(world, split)
    captions = _load(world, "captions", split)
    scene_of = {img["id"]: img["scene"] for img in captions["images"]}
    mentioned: dict[int, set[str]] = defaultdict(set)
    detailed: dict[int, int] = defaultdict(int)
    for ann in captions["annotations"]:
        present = {names[a["category_id"]] for a in by_image[ann["image_id"]]}
        found = {m.category for m in extract_mentions(ann["caption"])}
        assert found <= present, (ann["caption"], found - present)
        mentioned[ann["image_id"]] |= found
        detailed[ann["image_id"]] += ann["detailed"]
        first = ann["caption"].split(".")[0]
        assert any(name in first for name in SCENES[scene_of[ann["image_id"]]].names)
    for image_id, anns in by_image.items():
        visible = {names[a["category_id"]] for a in anns if a["visible"] >= OCCLUDED_BELOW}
        assert visible <= mentioned[image_id]
        assert detailed[image_id] == 1


def test_caption_nouns_are_chair_synonyms() -> None:
    lines = resources.files("halluc.objects").joinpath("synonyms.txt").read_text(encoding="utf-8").splitlines()
    table = {line.split(", ")[0]: {w.strip() for w in line.split(", ")} for line in lines}
    for category, nouns in NOUNS.items():
        assert set(nouns) <= table[category], category
        assert all({m.category for m in extract_mentions(f"A {noun}.")} == {category} for noun in nouns)


def test_shift_keeps_scene_but_drops_typical_companions(world: Path) -> None:
    _, by_image, names = _objects(world, "shift")
    scene_of = {img["id"]: img["scene"] for img in _load(world, "instances", "shift")["images"]}
    for image_id, anns in by_image.items():
        scene = scene_of[image_id]
        cats = [names[a["category_id"]] for a in anns]
        anchors = [c for c in cats if c in SCENES[scene].weights]
        assert 1 <= len(anchors) <= 2 and 2 <= len(cats) <= len(SHIFT_ANCHORS_P) + len(SHIFT_FOREIGN_P)
        assert all(partner(scene, a) not in cats for a in anchors)


def test_train_has_the_priors_that_shift_breaks(world: Path) -> None:
    rates = {}
    for split in ("train", "shift", "prior_free"):
        _, by_image, names = _objects(world, split)
        scene_of = {img["id"]: img["scene"] for img in _load(world, "instances", split)["images"]}
        pairs = hits = in_scene = total = 0
        for image_id, anns in by_image.items():
            cats = {names[a["category_id"]] for a in anns}
            in_scene += sum(c in SCENES[scene_of[image_id]].weights for c in cats)
            total += len(cats)
            for c in cats:
                mate = partner(scene_of[image_id], c)
                pairs += mate is not None
                hits += mate in cats
        rates[split] = (in_scene / total, hits / pairs)
    assert rates["train"][0] > 0.8 and rates["train"][1] > 0.4
    assert rates["shift"][0] < 0.5 and rates["shift"][1] == 0.0
    # prior-free: the scene says nothing about the objects (7 of 27 categories are a scene's own by chance)
    assert 0.15 < rates["prior_free"][0] < 0.4 and rates["prior_free"][1] < 0.3


def test_every_category_appears_in_train(world: Path) -> None:
    data, _, names = _objects(world, "train")
    assert {names[a["category_id"]] for a in data["annotations"]} == set(GLYPHS)
    assert {img["scene"] for img in data["images"]} == set(SCENES)


def test_catalog_tables_agree() -> None:
    assert len(world_categories()) == len(GLYPHS) >= 20
    types = scene_types()
    assert set(types) == set(SCENES) and all(len(v) == 7 for v in types.values())
    assert set(itertools.chain.from_iterable(types.values())) == set(GLYPHS)
    assert len({(g.shape, g.colour) for g in GLYPHS.values()}) == len(GLYPHS)
    for scene in SCENES.values():
        assert len({GLYPHS[c].shape for c in scene.weights}) == len(scene.weights)
        assert all(a in scene.weights and b in scene.weights for a, b in scene.pairs)
    assert all(g.shape in SHAPES and g.colour in COLOURS for g in GLYPHS.values())


def test_small_glyphs_stay_distinguishable() -> None:
    """Every pair of categories differs clearly at the smallest size (9 px), solid, on the same background."""
    crops = {}
    for category in GLYPHS:
        aspect = SHAPES[GLYPHS[category].shape].aspect
        w, h = (9.0, 9.0 / aspect) if aspect >= 1 else (9.0 * aspect, 9.0)
        image, _ = render(
            "street", [Placement(category, (32 - w / 2, 32 - h / 2, w, h), "solid", 1.0)], 64, np.random.default_rng(0)
        )
        crops[category] = np.asarray(image.crop((26, 26, 38, 38)), dtype=float)
    for a, b in itertools.combinations(crops, 2):
        assert np.abs(crops[a] - crops[b]).mean() > 8.0, (a, b)


def test_errors_name_the_bad_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'test'.*train, val, shift"):
        build_split("test", 1, tmp_path)
    with pytest.raises(ConfigError, match="0"):
        build_split("train", 0, tmp_path)
    with pytest.raises(ConfigError, match="16"):
        build_split("train", 1, tmp_path, image_size=16)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputLocationError, match="file"):
        build_split("train", 1, blocker / "out")


def test_image_size_is_configurable(tmp_path: Path) -> None:
    paths = build_split("val", 4, tmp_path, image_size=96)
    data = json.loads(paths.instances.read_text(encoding="utf-8"))
    assert {(img["width"], img["height"]) for img in data["images"]} == {(96, 96)}
    assert all(a["bbox"][0] + a["bbox"][2] <= 96 + 1e-6 for a in data["annotations"])
