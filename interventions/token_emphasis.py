"""Token emphasis ("Fixing Imbalanced Attention to Mitigate In-Context Hallucination of LVLMs"), head-specific.

Dual-stream selection of each sample's image tokens from a saliency score per token:

* local stream: the top ``fraction`` (25%) of tokens by saliency, minus the summary tokens below;
* spatial stream: summary tokens (IQR outliers of the saliency, ``> Q3 + 1.5 IQR``) plus spatially salient
  tokens: local maxima of the saliency over the token grid (3x3 neighbourhood, above the grid median) that the
  local stream missed, so regions outside the global top fraction still get emphasis. Layouts without a single
  grid (tiles, anyres) use the summary tokens only.

Saliency: the vision encoder's CLS-to-patch attention at the feature layer (``vision``) when the encoder has a
class token and its patches map one-to-one onto the LM's image tokens (LLaVA-1.5). Otherwise (Qwen2-VL,
Idefics3/SmolVLM without a CLS token; LLaVA-NeXT whose tiles do not map one-to-one) the fallback is the LM's own
attention: per edited layer, the head-averaged attention of the prompt's last position to each image token in the
prefill, before any edit of that layer.

Head-specific modulation (absent from the paper's public code): in the prefill, each head's visual sensitivity is
its attention mass on the image tokens (last prompt position, unedited); a head's emphasis is the stream strength
times its sensitivity relative to the layer's most visual head. The edit is the score edit ``a + s|a|`` on the
generating row (local ``s`` 0.7, spatial 0.3, as in the paper), on PAI's default layers; selection and head
weights are fixed after the prefill for the rest of the call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from halluc.errors import ConfigError
from halluc.models import LVLM, GenerationHook, PreparedBatch
from interventions.base import Handle, Intervention, register
from interventions.batching import add_generation_hook, fit, image_key_mask
from interventions.layers import check_layer_spec, resolve_layers
from interventions.modality import pai_layers
from interventions.row_edit import add_row_edit
from interventions.vision import add_cls_probe

__all__ = ["TokenEmphasis", "select_tokens", "spatial_peaks"]


def spatial_peaks(saliency: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``[tokens]`` bool: tokens that are the maximum of their 3x3 grid neighbourhood and above the grid median."""
    field = saliency.float().reshape(1, 1, *grid)
    pooled = F.max_pool2d(field, kernel_size=3, stride=1, padding=1)
    return ((field == pooled) & (field > field.median())).flatten()


def select_tokens(
    saliency: torch.Tensor, grid: tuple[int, int] | None, fraction: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(local, spatial) ``[tokens]`` bool masks, disjoint, from one image's ``[tokens]`` saliency."""
    values = saliency.float()
    q1, q3 = torch.quantile(values, torch.tensor([0.25, 0.75], device=values.device))
    summary = values > q3 + 1.5 * (q3 - q1)
    top = torch.zeros_like(summary)
    top[values.topk(max(1, round(fraction * len(values)))).indices] = True
    local = top & ~summary
    peaks = spatial_peaks(values, grid) if grid is not None else torch.zeros_like(summary)
    return local, summary | (peaks & ~local)


@register("token_emphasis")
@dataclass(frozen=True)
class TokenEmphasis(Intervention):
    """Emphasise locally informative and spatially significant image tokens, per head by visual sensitivity."""

    local: float = 0.7
    spatial: float = 0.3
    fraction: float = 0.25
    head_specific: bool = True
    layers: str = "default"

    def check(self) -> None:
        """Check every value, naming the bad one."""
        for name in ("local", "spatial"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"token_emphasis: {name} must be >= 0, got {getattr(self, name)!r}")
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"token_emphasis: fraction must be in (0, 1], got {self.fraction!r}")
        check_layer_spec(self.layers)

    def install(self, lvlm: LVLM, handle: Handle) -> None:
        """Attach the score edit, the CLS probe (when the encoder has one) and the per-call hook."""
        if self.local == 0 and self.spatial == 0:
            return  # neutral strength: nothing to install
        state = _Emphasis(self)
        handle.on_remove(add_row_edit(lvlm, resolve_layers(self.layers, lvlm.num_layers, pai_layers), state))
        probe = add_cls_probe(lvlm, state.add_cls_rows, owner=state)
        if probe is not None:
            handle.on_remove(probe)
        handle.on_remove(add_generation_hook(lvlm, state))


class _Emphasis(GenerationHook):
    """Per-call state: the batch, CLS rows captured in the prefill, and each layer's strengths once measured."""

    def __init__(self, config: TokenEmphasis) -> None:
        """Idle until a generate call provides a batch."""
        self.config = config
        self.batch: PreparedBatch | None = None
        self.cls_rows: list[torch.Tensor] = []  # [images, patches] per vision forward of this call
        self._image_keys = torch.zeros(0, 0, dtype=torch.bool)  # [batch, prompt]
        self._grids: list[tuple[int, int] | None] = []
        self._layers: dict[int, torch.Tensor] = {}  # layer -> [rows, heads, prompt]
        self._fitted: dict[int, torch.Tensor] = {}  # layer -> the same, padded to the current key count
        self._cls_selection: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None  # sample -> (local, spatial)

    @property
    def armed(self) -> bool:
        """Whether a generate call is running."""
        return self.batch is not None

    def add_cls_rows(self, rows: torch.Tensor) -> None:
        """CLS-probe sink: one vision forward's ``[images, patches]`` attention (kept only while armed)."""
        if self.armed:
            self.cls_rows.append(rows)

    def on_generate_start(self, lvlm: LVLM, batch: PreparedBatch) -> None:
        """Arm with this batch: image-key positions and token grids."""
        self.batch = batch
        self.cls_rows = []
        self._image_keys = image_key_mask(batch)
        self._grids = [lvlm.image_token_grid(batch, i) for i in range(len(batch))]
        self._layers, self._fitted, self._cls_selection = {}, {}, None

    def on_generate_end(self, lvlm: LVLM) -> None:
        """Disarm and drop the call's measurements."""
        self.batch = None
        self.cls_rows = []
        self._layers, self._fitted, self._cls_selection = {}, {}, None

    def strength(self, layer: int, scores: torch.Tensor) -> torch.Tensor:
        """``[rows, heads, keys]``: measured in the prefill (first call for the layer), reused while decoding."""
        if layer not in self._layers:
            self._layers[layer] = self._measure(scores)
        fitted = self._fitted.get(layer)
        if fitted is None or fitted.shape[-1] != scores.shape[-1]:
            fitted = self._fitted[layer] = fit(self._layers[layer], scores.shape[0], scores.shape[-1])
        return fitted

    def _select_from_cls(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Per sample with an image: (local, spatial) from CLS attention; {} unless patches map 1:1 onto tokens."""
        batch = self.batch
        rows = torch.cat(self.cls_rows) if self.cls_rows else None
        samples = [i for i, has in enumerate(batch.has_image) if has]  # the k-th image belongs to samples[k]
        counts = [len(batch.image_positions[i]) for i in samples]
        if rows is None or rows.shape[0] != len(samples) or any(c != rows.shape[1] for c in counts):
            return {}
        fraction = self.config.fraction
        return {i: select_tokens(rows[k], self._grids[i], fraction) for k, i in enumerate(samples)}

    def _measure(self, scores: torch.Tensor) -> torch.Tensor:
        """Select tokens and weigh heads from the unedited prefill scores ``[rows, heads, prompt]``."""
        config, batch = self.config, self.batch
        if self._cls_selection is None:
            self._cls_selection = self._select_from_cls()
        rows = scores.shape[0]
        probs = scores.softmax(dim=-1)  # [rows, heads, prompt]
        image = fit(self._image_keys, rows)  # [rows, prompt]
        mass = (probs * image[:, None]).sum(dim=-1)  # [rows, heads]: each head's attention on the image
        weight = mass / mass.amax(dim=-1, keepdim=True).clamp_min(1e-12)  # relative to the most visual head
        if not config.head_specific:
            weight = torch.ones_like(weight)
        emphasis = torch.zeros(rows, image.shape[1], device=scores.device)  # [rows, prompt]
        per_sample = rows // len(batch)
        for row in range(rows):
            sample = row // per_sample
            positions = batch.image_positions[sample]
            if len(positions) == 0:
                continue
            selected = self._cls_selection.get(sample)
            if selected is None:  # fallback: this layer's own head-averaged attention to the image tokens
                selected = select_tokens(probs[row][:, positions].mean(dim=0), self._grids[sample], config.fraction)
            local, spatial = selected
            emphasis[row, positions[local]] = config.local
            emphasis[row, positions[spatial]] = config.spatial
        return emphasis[:, None, :] * weight[:, :, None]  # [rows, heads, prompt]
