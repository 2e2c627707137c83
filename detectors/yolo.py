"""Ultralytics detectors: closed-set YOLO (``yolo:model.pt``, the shipped ``toy-*``) and YOLO-World (open set).

Closed-set YOLO only knows its ``model.names``; asked labels outside them are simply not detected (and the
cross-check validator lets the other detector decide them). YOLO-World is open-vocabulary: before predicting it
embeds the asked labels with ultralytics' CLIP text encoder (``set_classes``), but only when some asked label is
not already among the classes baked into the checkpoint, so a checkpoint saved with its classes set works
offline for those classes. Embedding new classes needs the ``clip`` package and the CLIP ViT-B/32 weights, which
ultralytics installs and downloads itself when online. halluc never downloads detector weights: a missing
``.pt`` raises ``ModelLoadError``.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Self

import halluc
from detectors.base import Detection, check_labels, register_detector
from halluc.errors import ConfigError, ModelLoadError

if TYPE_CHECKING:
    from PIL.Image import Image
    from ultralytics import YOLO

__all__ = ["TOY_ARCHS", "TOY_DETECTOR_DIR", "YoloDetector", "YoloWorldDetector", "toy_detector_path"]

TOY_DETECTOR_DIR = Path(halluc.__file__).parent / "assets" / "detectors"
TOY_ARCHS = ("yolov8", "yolo11")
_TOY_HINT = (
    "The default detectors are the toy ones shipped in halluc/assets/detectors/ ('toy-yolov8', 'toy-yolo11'); "
    "rebuild them with 'python scripts/train_toy_detectors.py'."
)
# What a broken or foreign checkpoint makes ultralytics/torch raise while loading it.
_LOAD_ERRORS = (RuntimeError, OSError, ValueError, TypeError, AttributeError, KeyError, pickle.UnpicklingError)


def toy_detector_path(arch: str) -> Path:
    """Where the shipped toy detector of ``arch`` (one of ``TOY_ARCHS``) lives."""
    return TOY_DETECTOR_DIR / f"toy-{arch}.pt"


def _load_ultralytics(path: str | Path, *, world: bool) -> YOLO:
    """Load a local ultralytics checkpoint, turning a missing or unreadable file into ``ModelLoadError``."""
    kind = "YOLO-World" if world else "YOLO"
    file = Path(path)
    if not file.is_file():
        raise ModelLoadError(
            f"{kind} weights {str(file)!r} not found: put an ultralytics .pt checkpoint at that path "
            f"(halluc never downloads weights). {_TOY_HINT}"
        )
    from ultralytics import YOLO, YOLOWorld

    try:
        model = YOLOWorld(str(file)) if world else YOLO(str(file))
    except _LOAD_ERRORS as exc:
        raise ModelLoadError(f"cannot load {kind} weights {str(file)!r}: {exc!r}. {_TOY_HINT}") from None
    if model.task != "detect":
        raise ModelLoadError(f"{str(file)!r} is a {model.task!r} model; a 'detect' model is needed")
    if world and not hasattr(model.model, "set_classes"):
        raise ModelLoadError(f"{str(file)!r} is not a YOLO-World checkpoint; load it with 'yolo:{file}'")
    return model


class YoloDetector:
    """Closed-set ultralytics YOLO detector; its vocabulary is the model's class names."""

    open_vocabulary = False  # YOLO-World: True (vocabulary None, labels embedded on demand)

    def __init__(
        self,
        model: YOLO,
        *,
        name: str,
        conf: float = 0.25,
        imgsz: int | None = None,
        device: str = "cpu",
        batch_size: int = 16,
    ) -> None:
        if not 0.0 <= conf <= 1.0:
            raise ConfigError(f"conf must be in [0, 1], got {conf!r}")
        self.model = model
        self.name = name
        self.conf = conf
        self.imgsz = imgsz  # None: the size the checkpoint was trained at
        self.device = device
        self.batch_size = batch_size
        self.vocabulary: frozenset[str] | None = None if self.open_vocabulary else frozenset(model.names.values())

    @classmethod
    def from_file(cls, path: str | Path, *, name: str | None = None, conf: float = 0.25) -> Self:
        """Load a checkpoint (``.pt``) from disk; the default name is its spec, ``yolo[-world]:<path>``."""
        world = cls.open_vocabulary
        default_name = f"{'yolo-world' if world else 'yolo'}:{path}"
        return cls(_load_ultralytics(path, world=world), name=name or default_name, conf=conf)

    def _prepare(self, labels: list[str]) -> None:
        """Make the model able to score ``labels``; a closed-set model needs nothing."""

    def detect(self, images: Sequence[Image], labels: Sequence[str]) -> list[list[Detection]]:
        """Return, per image, detections of the asked labels the model knows, above ``conf``."""
        asked = [label for label in check_labels(labels) if self.vocabulary is None or label in self.vocabulary]
        if not asked or not images:
            return [[] for _ in images]
        self._prepare(asked)
        classes = [index for index, label in self.model.names.items() if label in asked]
        size = {"imgsz": self.imgsz} if self.imgsz else {}  # else ultralytics uses the trained size
        found: list[list[Detection]] = []
        for start in range(0, len(images), self.batch_size):
            batch = list(images[start : start + self.batch_size])
            results = self.model.predict(
                batch, conf=self.conf, device=self.device, classes=classes, verbose=False, **size
            )
            for result in results:
                boxes = result.boxes
                found.append(
                    [
                        Detection(result.names[int(cls)], float(score), (x1, y1, x2, y2))
                        for (x1, y1, x2, y2), score, cls in zip(
                            boxes.xyxy.tolist(), boxes.conf.tolist(), boxes.cls.tolist(), strict=True
                        )
                    ]
                )
        return found


class YoloWorldDetector(YoloDetector):
    """Open-vocabulary YOLO-World detector: asked labels become its classes (re-embedded only when new)."""

    open_vocabulary = True

    def _prepare(self, labels: list[str]) -> None:
        """Embed ``labels`` as the model's classes unless they all are among its current classes."""
        if set(labels) <= set(self.model.names.values()):
            return
        try:
            self.model.set_classes(labels)
        except (ImportError, OSError, RuntimeError) as exc:
            raise ModelLoadError(
                f"YOLO-World cannot embed the labels {labels!r}: {exc!r}. New classes need ultralytics' CLIP text "
                "encoder: 'pip install git+https://github.com/ultralytics/CLIP.git' and the ViT-B/32 weights in "
                "ultralytics' weights_dir/clip (downloaded automatically when online), or use a checkpoint "
                f"saved with these classes set. {_TOY_HINT}"
            ) from None


def _register_toy(arch: str) -> None:
    """Register ``toy-<arch>``: the shipped closed-set detector trained on the synthetic world."""

    @register_detector(f"toy-{arch}")
    def factory(argument: str | None) -> YoloDetector:
        if argument:
            raise ConfigError(f"detector 'toy-{arch}' takes no argument, got {argument!r}")
        path = toy_detector_path(arch)
        if not path.is_file():
            raise ModelLoadError(f"toy detector 'toy-{arch}' is missing ({path}). {_TOY_HINT}")
        return YoloDetector.from_file(path, name=f"toy-{arch}")


for _arch in TOY_ARCHS:
    _register_toy(_arch)


@register_detector("yolo")
def _yolo(argument: str | None) -> YoloDetector:
    """``yolo:<model.pt>``: a closed-set ultralytics YOLO checkpoint."""
    if not argument:
        raise ConfigError("detector 'yolo' needs a checkpoint: 'yolo:path/to/model.pt'")
    return YoloDetector.from_file(argument)


@register_detector("yolo-world")
def _yolo_world(argument: str | None) -> YoloWorldDetector:
    """``yolo-world:<model.pt>``: an open-vocabulary YOLO-World checkpoint."""
    if not argument:
        raise ConfigError("detector 'yolo-world' needs a checkpoint: 'yolo-world:path/to/yolov8s-worldv2.pt'")
    return YoloWorldDetector.from_file(argument)
