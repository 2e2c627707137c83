"""Token emphasis, PAINT ("Fixing Imbalanced Attention to Mitigate In-Context Hallucination of LVLMs"; official
code hasanar1f/PAINT, ``modPAI/``: a fork of PAI that emphasises two sets of image tokens instead of all of them).

Token sets, per sample, from the vision encoder's CLS-to-patch attention (``vision``; heads averaged):

* local tokens: the top ``fraction`` (25%, ``int(0.25 * tokens)``) of the image tokens by the CLS attention of the
  encoder's FIRST layer, minus the summary tokens (``clip_encoder.py``);
* summary tokens: the IQR outliers (``> Q3 + 1.5 IQR``) of the CLS attention of the layer that produces the LM's
  image features (layer -2 for LLaVA-1.5, as in the official code).

Edit: PAI's score edit ``a + s|a|`` on the generating row, ``s`` = ``local`` (0.7) at local tokens and ``summary``
(0.3) at summary tokens, all heads alike, on PAI's layers (0-based 2..31 of 32), plus PAI's CFG against a text-only
branch (``gamma`` 1.1, cut-off 0.1), which every published PAINT run uses. Strengths and layers are the official
``chair_eval.py`` argparse defaults (its shell script's CHAIR run uses ``alpha`` 0.9 instead).

Extensions, off by default: ``spatial_peaks`` adds local maxima of the summary saliency over the token grid (3x3,
above the grid median) that the local set missed to the summary set (the official spatial ratio is fixed at 0);
``head_specific`` weighs each head's emphasis by its attention mass on the image in the prefill (relative to the
layer's most visual head). Encoders without a class token (Qwen2-VL, Idefics3/SmolVLM) or whose patches do not map
one-to-one onto the LM's image tokens (LLaVA-NeXT tiles) fall back to the LM's own attention: per edited layer, the
head-averaged attention of the prompt's last position to each image token in the prefill, before any edit of that
layer, serves as both saliencies. Selection and weights are fixed after the prefill for the rest of the call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import LogitsProcessor

from halluc.errors import ConfigError
from halluc.models import LVLM, GenerationHook, PreparedBatch
from interventions.base import Handle, Intervention, register
from interventions.batching import add_generation_hook, fit, image_key_mask
from interventions.contrastive import ContrastBranch, ContrastiveGuidance
from interventions.layers import check_layer_spec, resolve_layers
from interventions.modality import pai_layers
from interventions.row_edit import add_row_edit
from interventions.vision import FEATURE_LAYER, FIRST_LAYER, add_cls_probe

__all__ = ["TokenEmphasis", "select_tokens", "spatial_peaks"]


def spatial_peaks(saliency: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``[tokens]`` bool: tokens that are the maximum of their 3x3 grid neighbourhood and above the grid median."""
    field = saliency.float().reshape(1, 1, *grid)
    pooled = F.max_pool2d(field, kernel_size=3, stride=1, padding=1)
    return ((field == pooled) & (field > field.median())).flatten()


def select_tokens(
    local_saliency: torch.Tensor,
    summary_saliency: torch.Tensor,
    fraction: float,
    grid: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(local, summary) ``[tokens]`` bool masks, disjoint, from one image's two ``[tokens]`` saliencies.

    Summary: IQR outliers of ``summary_saliency``, plus its grid peaks outside the local set when ``grid`` is given.
    Local: the top ``int(fraction * tokens)`` (at least one) of ``local_saliency``, minus the summary outliers.
    """
    values = summary_saliency.float()
    q1, q3 = torch.quantile(values, torch.tensor([0.25, 0.75], device=values.device))
    summary = values > q3 + 1.5 * (q3 - q1)
    top = torch.zeros_like(summary)
    top[local_saliency.float().topk(max(1, int(fraction * len(values)))).indices] = True
    local = top & ~summary
    if grid is not None:
        summary = summary | (spatial_peaks(values, grid) & ~local)
    return local, summary


@register("token_emphasis")
@dataclass(frozen=True)
class TokenEmphasis(Intervention):
    """Emphasise locally informative and summary image tokens on the generating row, with PAI's CFG."""

    local: float = 0.7
    summary: float = 0.3
    fraction: float = 0.25
    spatial_peaks: bool = False
    head_specific: bool = False
    cfg: bool = True
    gamma: float = 1.1
    cutoff: float = 0.1
    layers: str = "default"

    def check(self) -> None:
        """Check every value, naming the bad one."""
        for name in ("local", "summary"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"token_emphasis: {name} must be >= 0, got {getattr(self, name)!r}")
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"token_emphasis: fraction must be in (0, 1], got {self.fraction!r}")
        if not self.gamma > 0:
            raise ConfigError(f"token_emphasis: gamma must be > 0, got {self.gamma!r}")
        if not 0 <= self.cutoff < 1:
            raise ConfigError(f"token_emphasis: cutoff must be in [0, 1), got {self.cutoff!r}")
        check_layer_spec(self.layers)

    def follows_one_row_per_sample(self) -> bool:
        """CFG's text-only branch steps with one sequence per prompt (when on)."""
        return self.cfg

    def install(self, lvlm: LVLM, handle: Handle) -> None:
        """Attach the score edit and the two CLS probes (when the encoder has a class token), and the per-call hook."""
        state = _Emphasis(self)
        if self.local > 0 or self.summary > 0:
            handle.on_remove(add_row_edit(lvlm, resolve_layers(self.layers, lvlm.num_layers, pai_layers), state))
            for which in (FIRST_LAYER, FEATURE_LAYER):
                probe = add_cls_probe(lvlm, state.cls_sink(which), owner=state, which=which)
                if probe is not None:
                    handle.on_remove(probe)
        handle.on_remove(add_generation_hook(lvlm, state))


class _Emphasis(GenerationHook):
    """Per-call state: the batch, CLS rows captured in the prefill, and each layer's strengths once measured."""

    def __init__(self, config: TokenEmphasis) -> None:
        """Idle until a generate call provides a batch."""
        self.config = config
        self.batch: PreparedBatch | None = None
        self.cls_rows: dict[str, list[torch.Tensor]] = {}  # probe -> [images, patches] per vision forward
        self._image_keys = torch.zeros(0, 0, dtype=torch.bool)  # [batch, prompt]
        self._grids: list[tuple[int, int] | None] = []
        self._layers: dict[int, torch.Tensor] = {}  # layer -> [rows, heads, prompt]
        self._fitted: dict[int, torch.Tensor] = {}  # layer -> the same, padded to the current key count
        self._cls_selection: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None  # sample -> (local, summary)

    @property
    def armed(self) -> bool:
        """Whether a generate call is running."""
        return self.batch is not None

    def cls_sink(self, which: str) -> Callable[[torch.Tensor], None]:
        """The sink of one CLS probe: keeps each vision forward's ``[images, patches]`` attention while armed."""

        def sink(rows: torch.Tensor) -> None:
            if self.armed:
                self.cls_rows.setdefault(which, []).append(rows)

        return sink

    def on_generate_start(self, lvlm: LVLM, batch: PreparedBatch) -> None:
        """Arm with this batch: image-key positions and token grids."""
        self.batch = batch
        self.cls_rows = {}
        self._image_keys = image_key_mask(batch)
        self._grids = [lvlm.image_token_grid(batch, i) for i in range(len(batch))]
        self._layers, self._fitted, self._cls_selection = {}, {}, None

    def logits_processors(self, lvlm: LVLM, batch: PreparedBatch) -> list[LogitsProcessor]:
        """PAI's CFG processor with a fresh text-only branch when ``cfg`` is on."""
        if not self.config.cfg:
            return []
        return [ContrastiveGuidance(ContrastBranch.text_only(lvlm, batch), self.config.gamma, self.config.cutoff)]

    def report(self, lvlm: LVLM, batch: PreparedBatch) -> list[dict[str, Any]] | None:
        """Per sample: how many local and summary tokens were raised, read from the CLS probes or the LM."""
        if not self._layers:
            return None
        first = self._layers[min(self._layers)]  # [rows, heads, prompt] strengths of the first edited layer
        per_sample = first.shape[0] // len(batch)
        config, reports = self.config, []
        for i, positions in enumerate(batch.image_positions):
            row = first[i * per_sample, :, positions].amax(dim=0) if len(positions) else first.new_zeros(0)
            source = "cls" if i in (self._cls_selection or {}) else "lm-attention" if len(positions) else "none"
            local = int((row == config.local).sum()) if config.local > 0 else 0
            summary = int((row == config.summary).sum()) if config.summary > 0 else 0
            reports.append({"token_emphasis": {"local_tokens": local, "summary_tokens": summary, "source": source}})
        return reports

    def on_generate_end(self, lvlm: LVLM) -> None:
        """Disarm and drop the call's measurements."""
        self.batch = None
        self.cls_rows = {}
        self._layers, self._fitted, self._cls_selection = {}, {}, None

    def strength(self, layer: int, scores: torch.Tensor) -> torch.Tensor:
        """``[rows, heads, keys]``: measured in the prefill (first call for the layer), reused while decoding."""
        if layer not in self._layers:
            self._layers[layer] = self._measure(scores)
        fitted = self._fitted.get(layer)
        if fitted is None or fitted.shape[-1] != scores.shape[-1]:
            fitted = self._fitted[layer] = fit(self._layers[layer], scores.shape[0], scores.shape[-1])
        return fitted

    def _grid(self, sample: int) -> tuple[int, int] | None:
        """The sample's token grid when spatial peaks are on, else None (no peaks)."""
        return self._grids[sample] if self.config.spatial_peaks else None

    def _select_from_cls(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Per sample with an image: (local, summary) from the two CLS probes; {} unless patches map 1:1 onto tokens."""
        batch = self.batch
        probes = [self.cls_rows.get(which) for which in (FIRST_LAYER, FEATURE_LAYER)]
        if not all(probes):
            return {}
        first, feature = (torch.cat(rows) for rows in probes)
        samples = [i for i, has in enumerate(batch.has_image) if has]  # the k-th image belongs to samples[k]
        counts = [len(batch.image_positions[i]) for i in samples]
        if feature.shape[0] != len(samples) or any(c != feature.shape[1] for c in counts):
            return {}
        fraction = self.config.fraction
        return {i: select_tokens(first[k], feature[k], fraction, self._grid(i)) for k, i in enumerate(samples)}

    def _measure(self, scores: torch.Tensor) -> torch.Tensor:
        """Select tokens and weigh heads from the unedited prefill scores ``[rows, heads, prompt]``."""
        config, batch = self.config, self.batch
        if self._cls_selection is None:
            self._cls_selection = self._select_from_cls()
        rows = scores.shape[0]
        probs = scores.softmax(dim=-1)  # [rows, heads, prompt]
        image = fit(self._image_keys, rows)  # [rows, prompt]
        if config.head_specific:
            mass = (probs * image[:, None]).sum(dim=-1)  # [rows, heads]: each head's attention on the image
            weight = mass / mass.amax(dim=-1, keepdim=True).clamp_min(1e-12)  # relative to the most visual head
        else:
            weight = torch.ones(probs.shape[:2], device=scores.device)
        emphasis = torch.zeros(rows, image.shape[1], device=scores.device)  # [rows, prompt]
        per_sample = rows // len(batch)
        for row in range(rows):
            sample = row // per_sample
            positions = batch.image_positions[sample]
            if len(positions) == 0:
                continue
            selected = self._cls_selection.get(sample)
            if selected is None:  # fallback: this layer's own head-averaged attention to the image tokens
                saliency = probs[row][:, positions].mean(dim=0)
                selected = select_tokens(saliency, saliency, config.fraction, self._grid(sample))
            local, summary = selected
            emphasis[row, positions[local]] = config.local
            emphasis[row, positions[summary]] = config.summary
        return emphasis[:, None, :] * weight[:, :, None]  # [rows, heads, prompt]
