"""Detector backends on CPU without downloads: registry, label matcher, oracle, tiny Grounding DINO, YOLO paths.

The ultralytics tests share one session fixture: a YOLOv8n trained from its yaml for 1 epoch on 32 world images at
64 px (through the training script's COCO -> YOLO conversion), so they check plumbing, not accuracy.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from detectors import (
    AnnotationOracle,
    Detection,
    GroundingDinoDetector,
    YoloDetector,
    YoloWorldDetector,
    load_detector,
    match_label,
    register_detector,
    tag_image_id,
)
from detectors.grounding_dino import build_prompt
from halluc.errors import ConfigError, InputDataError, ModelLoadError

ROOT = Path(__file__).resolve().parents[1]


# --- registry and specs ---------------------------------------------------------------------------------------


def test_unknown_detector_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match=r"'yolov8'.*Did you mean 'yolo'.*oracle, toy-yolo11, toy-yolov8"):
        load_detector("yolov8")


def test_duplicate_registration_raises() -> None:
    with pytest.raises(ConfigError, match="already registered"):
        register_detector("oracle")(lambda argument: None)


@pytest.mark.parametrize("spec", ["yolo", "yolo-world", "oracle", "toy-yolov8:extra"])
def test_specs_check_their_argument(spec: str) -> None:
    with pytest.raises(ConfigError, match=spec.split(":")[0]):
        load_detector(spec)


@pytest.mark.parametrize("spec", ["yolo:/nonexistent/best.pt", "yolo-world:/nonexistent/yolov8s-worldv2.pt"])
def test_missing_weights_say_where_to_put_them(spec: str) -> None:
    with pytest.raises(ModelLoadError, match=r"not found: put an ultralytics \.pt.*toy-yolov8"):
        load_detector(spec)


# --- phrase -> label matching ---------------------------------------------------------------------------------

LABELS = ["cat", "dining table", "table", "traffic light", "wine glass", "cup", "sports ball"]


@pytest.mark.parametrize(
    ("phrase", "expected"),
    [
        ("cat", "cat"),  # exact
        ("Traffic Light .", "traffic light"),  # normalised exact
        ("dining table [SEP]", "dining table"),  # special token dropped
        ("the cat sitting", "cat"),  # label inside the phrase
        ("dining", "dining table"),  # phrase inside a label
        ("cat dining table", "dining table"),  # merged phrase: longest contained label
        ("cat cup", "cat"),  # equal length: earliest in the phrase
        ("wine", "wine glass"),
        ("cups", "cup"),  # token overlap after singularising
        ("glasses of wine", "wine glass"),
        ("ball sports", "sports ball"),
        ("dog", None),
        ("[SEP] .", None),
    ],
)
def test_match_label(phrase: str, expected: str | None) -> None:
    assert match_label(phrase, LABELS) == expected


def test_match_label_returns_the_asked_spelling() -> None:
    assert match_label("dining table", ["Dining Table"]) == "Dining Table"


def test_build_prompt() -> None:
    assert build_prompt(["Cat", "dining table"]) == "cat. dining table."
    with pytest.raises(ConfigError, match="cannot contain"):
        build_prompt(["a.b"])


# --- annotation oracle ----------------------------------------------------------------------------------------


@pytest.fixture
def instances(tmp_path: Path) -> Path:
    coco = {
        "images": [{"id": 7, "file_name": "a.png", "width": 64, "height": 64}, {"id": 8, "file_name": "b.png"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 17, "bbox": [1, 2, 10, 20], "area": 200, "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 18, "bbox": [30, 30, 5, 5], "area": 25, "iscrowd": 0},
        ],
        "categories": [{"id": 17, "name": "cat"}, {"id": 18, "name": "dog"}],
    }
    path = tmp_path / "instances_val.json"
    path.write_text(json.dumps(coco))
    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    return path


def test_oracle_detections_are_annotations(instances: Path) -> None:
    oracle = load_detector(f"oracle:{instances}")
    assert isinstance(oracle, AnnotationOracle)
    assert oracle.vocabulary == {"cat", "dog"}
    cat = Detection("cat", 1.0, (1.0, 2.0, 11.0, 22.0))
    assert oracle.detect_ids([7, "8", "7"], ["cat", "bus"]) == [[cat], [], [cat]]
    tagged = tag_image_id(Image.new("RGB", (64, 64)), 7)
    assert [d.label for d in oracle.detect([tagged], ["dog", "cat"])[0]] == ["cat", "dog"]
    with Image.open(instances.parent / "a.png") as opened:  # falls back to the file name
        assert len(oracle.detect([opened], ["dog"])[0]) == 1


def test_oracle_errors(instances: Path, tmp_path: Path) -> None:
    oracle = AnnotationOracle(instances)
    with pytest.raises(InputDataError, match="image id 99 is not in"):
        oracle.detect_ids([99], ["cat"])
    with pytest.raises(InputDataError, match="tag_image_id"):
        oracle.detect([Image.new("RGB", (4, 4))], ["cat"])
    with pytest.raises(InputDataError, match="does not exist"):
        AnnotationOracle(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [], "annotations": [{"id": 1}]}')
    with pytest.raises(InputDataError, match="not a valid COCO"):
        AnnotationOracle(broken)


# --- Grounding DINO (tiny random weights, local WordPiece vocabulary) -----------------------------------------

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "cat", "dog", "dining", "table", "traffic", "light"]


@pytest.fixture(scope="module")
def tiny_gdino() -> tuple[object, object]:
    from transformers import (
        BertConfig,
        BertTokenizerFast,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    torch.manual_seed(0)
    tokenizer = BertTokenizerFast(vocab={word: i for i, word in enumerate(WORDS)})
    backbone = SwinConfig(
        image_size=64, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=2,
        out_indices=[2, 3, 4],
    )  # fmt: skip
    text = BertConfig(
        vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=64,
    )  # fmt: skip
    config = GroundingDinoConfig(
        backbone_config=backbone, text_config=text, num_queries=20, d_model=64, encoder_layers=1, decoder_layers=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_n_points=1, decoder_n_points=1, max_text_len=32,
    )  # fmt: skip
    model = GroundingDinoForObjectDetection(config)
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 64})
    return model, GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)


def test_gdino_detect_runs_and_maps_phrases(tiny_gdino: tuple[object, object]) -> None:
    model, processor = tiny_gdino
    detector = GroundingDinoDetector(model, processor, box_threshold=0.0, text_threshold=0.0, batch_size=2)
    images = [Image.new("RGB", (80, 48), (200, 30, 30)), Image.new("L", (64, 64)), Image.new("RGB", (32, 64))]
    labels = ["Cat", "dining table", "traffic light"]
    found = detector.detect(images, labels)
    assert len(found) == 3 and all(found)  # thresholds 0: every query survives and matches some label
    for image, detections in zip(images, found, strict=True):
        for det in detections:
            assert det.label in labels and 0.0 <= det.score <= 1.0
            x1, y1, x2, y2 = det.box
            assert 0 <= x1 <= x2 <= image.width and 0 <= y1 <= y2 <= image.height


def test_gdino_labels_over_several_prompts(tiny_gdino: tuple[object, object]) -> None:
    model, processor = tiny_gdino
    detector = GroundingDinoDetector(model, processor, box_threshold=0.0, text_threshold=0.0, labels_per_prompt=1)
    found = detector.detect([Image.new("RGB", (64, 64))], ["cat", "dog"])[0]
    assert {det.label for det in found} == {"cat", "dog"}
    strict = GroundingDinoDetector(model, processor, box_threshold=1.0)  # scores never exceed 1
    assert strict.detect([Image.new("RGB", (64, 64))], ["cat"]) == [[]]


def test_gdino_loads_local_directory(tiny_gdino: tuple[object, object], tmp_path: Path) -> None:
    model, processor = tiny_gdino
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    detector = load_detector(f"grounding-dino:{tmp_path}")
    assert detector.name == f"grounding-dino:{tmp_path}" and detector.vocabulary is None
    with pytest.raises(ModelLoadError, match=r"config\.json, model\.safetensors.*HF_HOME.*toy-yolov8"):
        load_detector(f"grounding-dino:{tmp_path / 'missing'}")


# --- ultralytics: YOLO and YOLO-World -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run the training script's quick mode (1 epoch, 32 train / 16 val world images, 64 px); return its out dir."""
    spec = importlib.util.spec_from_file_location("train_toy_detectors", ROOT / "scripts" / "train_toy_detectors.py")
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(script)
    work = tmp_path_factory.mktemp("toy_detectors")
    args = ["--quick", "--work-dir", str(work), "--n-train", "32", "--n-val", "16", "--imgsz-b", "64", "--batch", "16"]
    assert script.main(args) == 0
    return work / "quick" / "out"


def _world_val(out: Path) -> tuple[Path, list[Path]]:
    """Return the quick run's val instances file and its image files."""
    (instances,) = out.parent.glob("world_*/instances_val.json")
    files = [img["file_name"] for img in json.loads(instances.read_text())["images"]]
    (image_dir,) = {p.parent for f in files for p in out.parent.glob(f"world_*/**/{Path(f).name}")}
    return instances, [image_dir / Path(f).name for f in files]


def test_training_script_outputs(toy_run: Path) -> None:
    metrics = json.loads((toy_run / "metrics.json").read_text())
    assert metrics["quick"] is True and metrics["world"]["n_train"] == 32
    for name in ("toy-yolov8", "toy-yolo11"):
        assert metrics[name]["epochs_run"] == 1 and 0.0 <= metrics[name]["map50"] <= 1.0
        assert (toy_run / f"{name}.pt").stat().st_size <= 8 * 2**20


def test_evaluate_measures_shipped_checkpoints_without_training(
    toy_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = sys.modules["train_toy_detectors"]
    before = {p.name: p.stat().st_mtime_ns for p in toy_run.iterdir()}
    args = ["--evaluate", "--quick", "--work-dir", str(toy_run.parent.parent), "--out-dir", str(toy_run)]
    assert script.main([*args, "--n-train", "32", "--n-val", "16", "--imgsz-b", "64", "--batch", "16"]) == 0
    records = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines() if line.startswith("toy-"))
    assert set(records) == {"toy-yolov8", "toy-yolo11"}
    assert all(0.0 <= json.loads(r)["map50"] <= 1.0 for r in records.values())
    assert {p.name: p.stat().st_mtime_ns for p in toy_run.iterdir()} == before  # nothing trained or written
    worlds = sorted(toy_run.parent.glob("world_*"))
    assert script.main(["--evaluate", "--work-dir", str(toy_run.parent), "--out-dir", str(toy_run / "absent")]) == 2
    assert "no checkpoint at" in capsys.readouterr().out
    assert sorted(toy_run.parent.glob("world_*")) == worlds  # refused before building anything


def test_yolo_detect(toy_run: Path) -> None:
    detector = load_detector(f"yolo:{toy_run / 'toy-yolov8.pt'}")
    assert isinstance(detector, YoloDetector) and detector.name == f"yolo:{toy_run / 'toy-yolov8.pt'}"
    assert {"cat", "dog", "dining table"} <= detector.vocabulary
    detector.conf, detector.batch_size = 0.0, 2
    _, files = _world_val(toy_run)
    images = [Image.open(f) for f in files[:3]]
    found = detector.detect(images, [*sorted(detector.vocabulary), "unicorn"])
    assert len(found) == 3 and all(found)  # conf 0: even a 1-epoch model returns boxes
    for image, detections in zip(images, found, strict=True):
        for det in detections:
            assert det.label in detector.vocabulary and 0.0 <= det.score <= 1.0
            assert -1 <= det.box[0] <= det.box[2] <= image.width + 1
    some = sorted({det.label for det in found[0]})[:2]
    assert {det.label for det in detector.detect(images[:1], some)[0]} <= set(some)
    assert detector.detect(images, ["unicorn"]) == [[], [], []]  # outside the closed vocabulary


def test_toy_specs_and_crosscheck_end_to_end(toy_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from detectors import CrossCheckValidator

    monkeypatch.setattr("detectors.yolo.TOY_DETECTOR_DIR", toy_run)
    toy_a, toy_b = load_detector("toy-yolov8"), load_detector("toy-yolo11")
    assert (toy_a.name, toy_b.name) == ("toy-yolov8", "toy-yolo11") and toy_a.vocabulary == toy_b.vocabulary
    instances, files = _world_val(toy_run)
    oracle = AnnotationOracle(instances)
    images = [Image.open(f) for f in files[:4]]
    keys = [str(oracle.image_id_of(image)) for image in images]  # matched by file name
    truth = [sorted({d.label for d in dets}) for dets in oracle.detect(images, sorted(oracle.vocabulary))]
    verdicts = CrossCheckValidator(toy_a, toy_b).validate_many(images, keys, [[*t, "unicorn"] for t in truth])
    for per_image, objects in zip(verdicts, truth, strict=True):
        assert per_image["unicorn"].status == "uncertain" and per_image["unicorn"].decided_by == "none"
        assert {v.status for v in per_image.values()} <= {"present", "hallucinated", "uncertain"}
        assert list(per_image) == [*objects, "unicorn"]
    sure = CrossCheckValidator(oracle, oracle).validate_many(images, keys, truth)
    assert all(v.status == "present" for per_image in sure for v in per_image.values())


def test_yolo_world_embeds_only_new_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    from ultralytics import YOLOWorld

    model = YOLOWorld("yolov8n-worldv2.yaml")  # random weights; CLIP replaced by fixed random text embeddings
    embedded: list[list[str]] = []

    def fake_text_embeddings(text: list[str], batch: int = 80, cache_clip_model: bool = False) -> torch.Tensor:
        embedded.append(list(text))
        return torch.randn(1, len(text), 512, generator=torch.Generator().manual_seed(len(text)))

    monkeypatch.setattr(model.model, "get_text_pe", fake_text_embeddings)
    detector = YoloWorldDetector(model, name="world", conf=0.0, imgsz=64)
    assert detector.vocabulary is None
    images = [Image.new("RGB", (64, 48), (250, 0, 0)), Image.new("RGB", (64, 64))]
    found = detector.detect(images, ["red square", "cat"])
    assert len(found) == 2 and all(det.label in {"red square", "cat"} for dets in found for det in dets)
    detector.detect(images, ["cat"])  # already a class: no re-embedding
    assert embedded == [["red square", "cat"]]
    detector.detect(images[:1], ["kite"])
    assert embedded[-1] == ["kite"]


def test_yolo_world_without_clip_explains(monkeypatch: pytest.MonkeyPatch) -> None:
    from ultralytics import YOLOWorld

    model = YOLOWorld("yolov8n-worldv2.yaml")

    def no_clip(*args: object, **kwargs: object) -> None:
        raise ModuleNotFoundError("No module named 'clip'")

    monkeypatch.setattr(model.model, "get_text_pe", no_clip)
    detector = YoloWorldDetector(model, name="world")
    with pytest.raises(ModelLoadError, match="CLIP text encoder"):
        detector.detect([Image.new("RGB", (64, 64))], ["unicorn"])
