"""Object detectors behind one batched interface, and the two-detector cross-check validator.

    Detector (protocol)        name, vocabulary (None = open), detect(images, labels) -> per-image Detections
    ├── YoloDetector           closed-set ultralytics YOLO: 'yolo:model.pt', shipped 'toy-yolov8' / 'toy-yolo11'
    ├── YoloWorldDetector      open-vocabulary YOLO-World: 'yolo-world:model.pt'
    ├── GroundingDinoDetector  open-vocabulary Grounding DINO: 'grounding-dino[:checkpoint]'
    └── AnnotationOracle       ground-truth COCO annotations: 'oracle:instances.json'
    CrossCheckValidator        present / hallucinated / uncertain from two detectors' agreement

Build any of them from a spec string with ``load_detector``. Heavy libraries load only when a backend is built.
"""

from detectors.base import (
    Detection,
    Detector,
    available_detectors,
    load_detector,
    register_detector,
)
from detectors.crosscheck import CrossCheckValidator, ObjectValidator, Verdict
from detectors.grounding_dino import DEFAULT_CHECKPOINT, GroundingDinoDetector
from detectors.labels import match_label
from detectors.oracle import AnnotationOracle, tag_image_id
from detectors.yolo import TOY_ARCHS, YoloDetector, YoloWorldDetector, toy_detector_path

__all__ = [
    "DEFAULT_CHECKPOINT",
    "TOY_ARCHS",
    "AnnotationOracle",
    "CrossCheckValidator",
    "Detection",
    "Detector",
    "GroundingDinoDetector",
    "ObjectValidator",
    "Verdict",
    "YoloDetector",
    "YoloWorldDetector",
    "available_detectors",
    "load_detector",
    "match_label",
    "register_detector",
    "tag_image_id",
    "toy_detector_path",
]
