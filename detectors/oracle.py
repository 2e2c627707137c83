"""An "oracle" detector that answers from COCO-format instance annotations instead of looking at pixels.

It gives the ceiling any real detector is compared against, and lets the cross-check machinery be tested against
ground truth. Every annotation of an asked category is a detection with score 1.0.

Which annotations belong to an image is decided by its COCO ``image_id``, passed on a side channel:

* ``detect_ids(image_ids, labels)`` takes the ids directly (no pixels needed);
* ``detect(images, labels)`` reads ``image.info["image_id"]`` (set it with ``tag_image_id``), and otherwise falls
  back to the image's file name (``image.filename``, which ``PIL.Image.open`` sets) looked up in the annotation
  file's ``images[].file_name``. An image with neither raises ``InputDataError``.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from detectors.base import Detection, check_labels, register_detector
from halluc.errors import ConfigError, InputDataError

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["AnnotationOracle", "tag_image_id"]

ImageId = int | str


def tag_image_id(image: Image, image_id: ImageId) -> Image:
    """Record ``image_id`` in ``image.info`` (in place) so the oracle can find its annotations; returns the image."""
    image.info["image_id"] = image_id
    return image


class AnnotationOracle:
    """Closed-set detector whose detections are the ground-truth boxes of a COCO instances file."""

    def __init__(self, instances: str | Path, *, name: str | None = None) -> None:
        from pycocotools.coco import COCO

        path = Path(instances)
        if not path.is_file():
            raise InputDataError(f"oracle annotation file {str(path)!r} does not exist (expected COCO instances JSON)")
        self.name = name or f"oracle:{path}"
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
                coco = COCO(str(path))
            names = {cat_id: cat["name"] for cat_id, cat in coco.cats.items()}
            self._by_image: dict[ImageId, list[Detection]] = {image_id: [] for image_id in coco.imgs}
            for ann in coco.anns.values():
                x, y, w, h = (float(v) for v in ann["bbox"])
                detection = Detection(names[ann["category_id"]], 1.0, (x, y, x + w, y + h))
                self._by_image.setdefault(ann["image_id"], []).append(detection)
            self._id_by_file = {Path(img["file_name"]).name: image_id for image_id, img in coco.imgs.items()}
        except (ValueError, KeyError, TypeError, AssertionError) as exc:
            raise InputDataError(f"{str(path)!r} is not a valid COCO instances file: {exc!r}") from None
        self.vocabulary: frozenset[str] | None = frozenset(names.values())

    def _known_id(self, image_id: ImageId) -> ImageId:
        """Return ``image_id`` as stored in the file (accepting "42" for 42), or raise naming the unknown id."""
        if image_id in self._by_image:
            return image_id
        if isinstance(image_id, str) and image_id.isdigit() and int(image_id) in self._by_image:
            return int(image_id)
        raise InputDataError(
            f"image id {image_id!r} is not in the oracle's annotation file {self.name!r} ({len(self._by_image)} images)"
        )

    def image_id_of(self, image: Image) -> ImageId:
        """Return the COCO id of ``image`` from ``image.info["image_id"]`` or, failing that, its file name."""
        if "image_id" in image.info:
            return self._known_id(image.info["image_id"])
        file_name = Path(getattr(image, "filename", "") or "").name
        if file_name in self._id_by_file:
            return self._id_by_file[file_name]
        raise InputDataError(
            "the oracle cannot tell which annotated image this is: set image.info['image_id'] "
            f"(detectors.oracle.tag_image_id) or open it from a file listed in {self.name!r} "
            f"(got file name {file_name!r})"
        )

    def detect_ids(self, image_ids: Sequence[ImageId], labels: Sequence[str]) -> list[list[Detection]]:
        """Return, per image id, the annotations whose category is among ``labels`` (score 1.0)."""
        wanted = set(check_labels(labels))
        return [[d for d in self._by_image[self._known_id(i)] if d.label in wanted] for i in image_ids]

    def detect(self, images: Sequence[Image], labels: Sequence[str]) -> list[list[Detection]]:
        """Return, per image, its annotations whose category is among ``labels``; see the module docstring."""
        return self.detect_ids([self.image_id_of(image) for image in images], labels)


@register_detector("oracle")
def _oracle(argument: str | None) -> AnnotationOracle:
    """``oracle:<instances.json>``: ground-truth annotations as detections."""
    if not argument:
        raise ConfigError("detector 'oracle' needs an annotation file: 'oracle:path/to/instances.json'")
    return AnnotationOracle(argument)
