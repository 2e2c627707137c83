"""Grounding DINO (open-vocabulary, text-prompted) through transformers' ``GroundingDinoForObjectDetection``.

The asked labels become one lower-cased prompt, "cat. dining table. dog." (split over several prompts when there
are more than ``labels_per_prompt``). The processor's ``post_process_grounded_object_detection`` keeps boxes whose
best token score passes ``box_threshold`` (0.35) and names each by the prompt tokens scoring above
``text_threshold`` (0.25); ``detectors.labels.match_label`` maps that phrase back to an asked label, and boxes
whose phrase matches none are dropped. Weights are never downloaded by halluc (``local_files_only``, so an offline
machine fails at once instead of retrying): ``from_pretrained`` accepts a local directory, or a hub id already in
the Hugging Face cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from detectors.base import Detection, check_labels, register_detector
from detectors.labels import match_label
from halluc.errors import ConfigError, ModelLoadError

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["DEFAULT_CHECKPOINT", "GroundingDinoDetector", "build_prompt"]

DEFAULT_CHECKPOINT = "IDEA-Research/grounding-dino-base"


def build_prompt(labels: Sequence[str]) -> str:
    """Return the Grounding DINO text prompt for ``labels``: lower-cased, each followed by a period."""
    bad = [label for label in labels if "." in label]
    if bad:
        raise ConfigError(f"Grounding DINO labels cannot contain '.', which separates prompt phrases: {bad!r}")
    return " ".join(f"{label.strip().lower()}." for label in labels)


class GroundingDinoDetector:
    """Open-vocabulary detector wrapping a loaded Grounding DINO model and its processor."""

    vocabulary: frozenset[str] | None = None

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        name: str = "grounding-dino",
        box_threshold: float = 0.35,
        text_threshold: float = 0.25,
        device: str = "cpu",
        batch_size: int = 4,
        labels_per_prompt: int = 32,
    ) -> None:
        for what, value in (("box_threshold", box_threshold), ("text_threshold", text_threshold)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{what} must be in [0, 1], got {value!r}")
        self.model = model.to(device).eval()
        self.processor = processor
        self.name = name
        self.box_threshold = box_threshold
        self.text_threshold = text_threshold
        self.device = device
        self.batch_size = batch_size
        self.labels_per_prompt = labels_per_prompt

    @classmethod
    def from_pretrained(
        cls, checkpoint: str = DEFAULT_CHECKPOINT, *, device: str = "cpu", name: str | None = None
    ) -> GroundingDinoDetector:
        """Load model and processor from a local directory or the local Hugging Face cache."""
        from transformers import AutoProcessor, GroundingDinoForObjectDetection

        try:
            processor = AutoProcessor.from_pretrained(checkpoint, local_files_only=True)
            model = GroundingDinoForObjectDetection.from_pretrained(checkpoint, local_files_only=True)
        except (OSError, ValueError, TypeError) as exc:
            raise ModelLoadError(
                f"cannot load Grounding DINO {checkpoint!r} from local files ({type(exc).__name__}). Provide a "
                "directory with config.json, model.safetensors, preprocessor_config.json and the tokenizer files "
                "(tokenizer.json or vocab.txt, tokenizer_config.json, special_tokens_map.json) and pass it as "
                "'grounding-dino:/path/to/dir', or put the hub snapshot in the Hugging Face cache "
                f"('hf download {checkpoint}' where online; set HF_HOME if the cache is elsewhere). "
                "The default detectors are the shipped toy ones ('toy-yolov8', 'toy-yolo11')."
            ) from None
        return cls(model, processor, name=name or f"grounding-dino:{checkpoint}", device=device)

    def _detect_prompt(self, images: list[Image], group: list[str]) -> list[list[Detection]]:
        """Run one prompt (the labels of ``group``) over one batch of RGB images."""
        import torch

        prompt = build_prompt(group)
        inputs = self.processor(images=images, text=[prompt] * len(images), return_tensors="pt", padding=True)
        inputs = inputs.to(self.device)
        with torch.inference_mode():
            outputs = self.model(**inputs)
        results = self.processor.post_process_grounded_object_detection(
            outputs,
            input_ids=inputs["input_ids"],
            threshold=self.box_threshold,
            text_threshold=self.text_threshold,
            target_sizes=[(image.height, image.width) for image in images],
        )
        found: list[list[Detection]] = []
        for image, result in zip(images, results, strict=True):
            detections = []
            for phrase, score, box in zip(
                result["text_labels"], result["scores"].tolist(), result["boxes"].tolist(), strict=True
            ):
                label = match_label(phrase, group)
                if label is not None:
                    x1, y1, x2, y2 = box
                    clipped = (max(x1, 0.0), max(y1, 0.0), min(x2, image.width), min(y2, image.height))
                    detections.append(Detection(label, float(score), clipped))
            found.append(detections)
        return found

    def detect(self, images: Sequence[Image], labels: Sequence[str]) -> list[list[Detection]]:
        """Return, per image, the boxes whose grounded phrase matches one of ``labels``."""
        asked = check_labels(labels)
        found: list[list[Detection]] = [[] for _ in images]
        for start in range(0, len(images), self.batch_size):
            batch = [image.convert("RGB") for image in images[start : start + self.batch_size]]
            for first in range(0, len(asked), self.labels_per_prompt):
                group = asked[first : first + self.labels_per_prompt]
                for offset, detections in enumerate(self._detect_prompt(batch, group)):
                    found[start + offset].extend(detections)
        return found


@register_detector("grounding-dino")
def _grounding_dino(argument: str | None) -> GroundingDinoDetector:
    """``grounding-dino[:checkpoint]``: Grounding DINO from a local dir or cached hub id (default: base)."""
    return GroundingDinoDetector.from_pretrained(argument or DEFAULT_CHECKPOINT)
