"""Head analysis: per-(layer, head) vision-aware head divergence and image-attention mass, for ``halluc heads``.

One paired prefill (the images' batch and its text-only twin, as in VHR) with observers on every layer: an
``o_proj`` pre-hook records each head's VHD at the prompt's last position, and a zero-strength score edit records
each head's attention mass on the image tokens from that position. Nothing is modified; other attached
interventions are off during this forward (it is the analysis' own).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image

from halluc.errors import ConfigError
from halluc.models import LVLM
from interventions.batching import fit, image_key_mask, paired_inputs, run_prefill
from interventions.head_edit import add_head_hooks
from interventions.row_edit import add_row_edit
from interventions.scope import owned_forward
from interventions.vhr import head_divergence

__all__ = ["HeadReport", "analyse_heads"]


@dataclass(frozen=True)
class HeadReport:
    """Per-(layer, head) means over the analysed images."""

    model: str
    prompt: str
    images: int
    vhd: list[list[float]]  # [layers][heads]: L2 distance of head outputs with vs without the image
    image_attention: list[list[float]]  # [layers][heads]: attention mass on image tokens (0..1)

    def to_json(self) -> str:
        """The report as an indented JSON object."""
        return json.dumps(asdict(self), indent=2)

    def write_heatmap(self, path: str | Path) -> Path:
        """Save a PNG with one heatmap per measure (layers down, heads across); returns the path."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(1, 2, figsize=(10, 1.5 + 0.35 * len(self.vhd)), squeeze=False)
        for axis, (title, values) in zip(
            axes[0], (("VHD", self.vhd), ("image attention mass", self.image_attention)), strict=True
        ):
            shown = axis.imshow(values, aspect="auto", cmap="viridis")
            axis.set(title=title, xlabel="head", ylabel="layer")
            figure.colorbar(shown, ax=axis)
        figure.suptitle(f"{self.model}: {self.images} images")
        figure.tight_layout()
        path = Path(path)
        figure.savefig(path, dpi=100)
        plt.close(figure)
        return path


class _Observer:
    """Records VHD (o_proj hook) and image-attention mass (zero-strength row edit) for each layer."""

    def __init__(self, image_keys: torch.Tensor) -> None:
        """``image_keys``: ``[2B, prompt]`` bool for the paired batch (none in the text-only half)."""
        self.image_keys = image_keys
        self.vhd: dict[int, torch.Tensor] = {}  # layer -> [B, heads]
        self.mass: dict[int, torch.Tensor] = {}  # layer -> [B, heads]

    armed = True

    def record_heads(self, layer: int, heads: torch.Tensor) -> None:
        """o_proj pre-hook body: VHD at the last position of ``[2B, seq, heads, head_dim]``; no edit."""
        self.vhd[layer] = head_divergence(heads[:, -1])[0]

    def strength(self, layer: int, scores: torch.Tensor) -> torch.Tensor:
        """Record the image half's attention mass on image keys; the edit itself is zero."""
        half = scores.shape[0] // 2
        image = fit(self.image_keys, scores.shape[0], scores.shape[-1])[:half, None]  # [B, 1, keys]
        self.mass[layer] = (scores[:half].softmax(dim=-1) * image).sum(dim=-1)
        return scores.new_zeros(())


def analyse_heads(lvlm: LVLM, images: Sequence[Image.Image], prompt: str) -> HeadReport:
    """Measure every head of every layer on ``images`` with one ``prompt``; means over the images."""
    if not images or any(image is None for image in images):
        raise ConfigError("analyse_heads needs at least one image and no None entries (VHD compares with/without)")
    batch = lvlm.prepare(list(images), [prompt] * len(images))
    keys = image_key_mask(batch)
    observer = _Observer(torch.cat([keys, torch.zeros_like(keys)]))
    layers = range(lvlm.num_layers)
    undo_heads = add_head_hooks(lvlm, layers, observer.record_heads, owner=observer)
    try:
        undo_edit = add_row_edit(lvlm, layers, observer)
        try:
            with owned_forward(observer), torch.no_grad():
                run_prefill(lvlm, paired_inputs(lvlm, batch))
        finally:
            undo_edit()
    finally:
        undo_heads()

    def means(per_layer: dict[int, torch.Tensor]) -> list[list[float]]:
        """``[layers][heads]`` means over the images."""
        return [per_layer[layer].mean(dim=0).tolist() for layer in layers]

    return HeadReport(lvlm.name_or_path, prompt, len(images), means(observer.vhd), means(observer.mass))
