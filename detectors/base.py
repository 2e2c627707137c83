"""The detector interface, the detector registry, and detector spec strings ("name[:argument]").

Every backend answers one question, batched: which of these labels are visible in these images, where, and how
sure. Backends register a factory under a name; ``load_detector("yolo:model.pt")`` calls the factory of ``yolo``
with the argument ``"model.pt"``. Backend modules import their heavy libraries (transformers, ultralytics) inside
functions, so importing ``detectors`` stays cheap and a backend is only loaded when used.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

from halluc.errors import ConfigError

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = [
    "Box",
    "Detection",
    "Detector",
    "DetectorFactory",
    "available_detectors",
    "check_labels",
    "load_detector",
    "register_detector",
]

Box = tuple[float, float, float, float]  # (x1, y1, x2, y2) in pixels of the input image


class Detection(NamedTuple):
    """One detected object: the asked label it matched, a confidence in [0, 1] and a pixel box."""

    label: str
    score: float
    box: Box


@runtime_checkable
class Detector(Protocol):
    """A batched object detector; ``vocabulary`` is None for open-vocabulary detectors, else its label set."""

    name: str
    vocabulary: frozenset[str] | None

    def detect(self, images: Sequence[Image], labels: Sequence[str]) -> list[list[Detection]]:
        """Return, per image, the detections whose label is one of ``labels``."""
        ...


DetectorFactory = Callable[[str | None], Detector]
"""Builds a detector from the argument part of a spec (None when the spec has no ``:argument``)."""

_REGISTRY: dict[str, DetectorFactory] = {}


def register_detector(name: str) -> Callable[[DetectorFactory], DetectorFactory]:
    """Register a detector factory under ``name``, so ``load_detector`` can build it from a spec string."""

    def decorator(factory: DetectorFactory) -> DetectorFactory:
        if name in _REGISTRY:
            raise ConfigError(f"detector {name!r} is already registered (by {_REGISTRY[name].__qualname__})")
        _REGISTRY[name] = factory
        return factory

    return decorator


def available_detectors() -> list[str]:
    """Return the registered detector names, sorted, for help texts and error messages."""
    return sorted(_REGISTRY)


def load_detector(spec: str) -> Detector:
    """Build a detector from a spec such as ``toy-yolov8``, ``yolo:best.pt`` or ``oracle:instances.json``."""
    name, sep, argument = spec.partition(":")
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown detector {name!r} in spec {spec!r}.{hint} Valid detectors: {', '.join(available_detectors())}"
        )
    return _REGISTRY[name](argument if sep else None)


def check_labels(labels: Sequence[str]) -> list[str]:
    """Return ``labels`` without duplicates (order kept); reject empty labels, which no detector can match."""
    if isinstance(labels, str):
        raise ConfigError(f"labels must be a sequence of strings, got the single string {labels!r}")
    unique = list(dict.fromkeys(labels))
    if any(not label.strip() for label in unique):
        raise ConfigError(f"labels must be non-empty strings, got {unique!r}")
    return unique
