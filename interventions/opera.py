"""OPERA, "Alleviating Hallucination in Multi-Modal Large Language Models via Over-Trust Penalty and
Retrospection-Allocation" (Huang et al., CVPR 2024): beam search whose candidates are penalised for a columnar
"knowledge aggregation pattern" in the last layer's attention, with a rollback when the pattern persists.

Ported from the official code, shikiw/OPERA@61426ef ``transformers-4.29.2/src/transformers/generation/utils.py``
(``opera_beam_search``, lines 3116-3674, ``window_size`` at 3134; arguments 1156-1162, dispatch 1619-1665) and
its ``beam_search.py`` (``BeamSearchScorer``, ``BeamHypotheses``). Defaults are the README's and the evaluation scripts'
(``README.md:60-75``, ``chair_eval.py:172-183``): ``num_beams`` 5, ``scale_factor`` 50, ``threshold`` 15,
``num_attn_candidates`` 5, ``penalty_weights`` 1; ``window_size`` 512 is ``opera_beam_search``'s own default. Each
step of the official loop, per beam row:

1. Candidates: the ``num_attn_candidates`` largest raw logits of the next token (no processors yet).
2. Each candidate is appended and run through the model; the last decoder layer's attention probabilities,
   max over heads, form with the earlier rows a lower-triangular map whose rows are divided by their sums. The
   "local window" is its block of generated positions (rows and columns from the response start, candidate last).
3. Column scores: ``1e-7 * prod_i (scale_factor * a[i, j])`` over the rows ``i >= j`` of each column ``j``, stored
   in float16 (as the official ``attn_local_scores``). While the window has at most 10 positions the penalty is
   minus the candidate row's attention summed over the image span (first to last image token); afterwards it is
   the column score maximum. Candidate score ``-= penalty_weights * penalty``; all other tokens get -999, then
   log-softmax, the logits processors, and ordinary beam search (``2 * num_beams`` best, EOS into hypotheses).
4. Retrospection: each beam slot records, per step, the mode over its candidates of the arg-max column. When the
   mode of those modes, ``loc``, appears more than ``threshold`` times in every slot's record and ``loc >= 10``,
   generation rolls back to position ``loc + 1`` (or one earlier once a position was rolled back to
   ``num_attn_candidates`` times; no rollback when both are spent): the state before that position is revived
   (sequences, beam scores, finished hypotheses) and its step is redone over the full vocabulary, the logits
   shifted to end at -999 and every continuation chosen there before set to -999.

Kept from the official code: the float16 column scores, the 10-position switch, beam slots' records that do not
follow beam reordering, the revived finished hypotheses object being reused rather than copied, the 512-state
window. Deviations: a batch of samples runs at once, every sample with its own modes, records and rollbacks
(the official takes one mode over the whole batch and was run at batch 1); a sample's hypothesis length (for
``length_penalty``) counts its own prompt without the batch's padding, and EOS closes a hypothesis shorter than
``max_length`` whatever the other samples' lengths; the prompt is encoded once per sample and its cache copied to
the beams; attention probabilities are float32; after a rollback a sample's cache keeps its prompt and gets the
revived tokens recomputed at the end of its rows (the positions in between are masked). Other stopping criteria
than the length limit are not consulted. A sample without an image gets no image reward (an empty span). When
OPERA runs with row edits (PAI), it reads the last layer's attention before their edit.

Cost and memory: per step, one forward of the chosen tokens (one per beam) and one of all candidates on the KV
cache, cropped off again: the candidates are parallel branches of a tree (a 4D mask lets each candidate's query
row see the stored keys and its own key only, all at the next position), the same attention as one forward each
(to float round-off). When another attached method edits the forwards (``GenerationHook.edits_forwards``; row
and head edits act on the last query row alone), each candidate gets its own forward instead. The official code
runs one forward per candidate, re-encodes the prompt and image at every rollback and keeps every step's full
attention map. Here only the product of each window column over its stored rows is kept per beam (``[rows,
length]``), plus the sequences and finished hypotheses of up to ``window_size`` past steps for rollbacks. The last
layer's probabilities come from an attention function registered with transformers' ``AttentionInterface`` for
the duration of the decoding loop: it hands every layer to the implementation in use before (SDPA, or the
row-edit function), and on the last layer also computes the softmax of the new query rows, so it works for every
family and composes with attention edits. The loop itself runs as ``model.generate(custom_generate=...)``
(``GenerationHook.decoding``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import LogitsProcessorList

from halluc.errors import ConfigError
from halluc.models import LVLM, GenerationHook, PreparedBatch
from interventions.base import Handle, Intervention, StepForwardProcessor, register
from interventions.batching import add_generation_hook
from interventions.contrastive import ContrastiveGuidance
from interventions.opera_loop import Lane, OperaLoop, use_probe

__all__ = ["OPERA"]


@register("opera")
@dataclass(frozen=True)
class OPERA(Intervention):
    """Beam search with OPERA's over-trust penalty and retrospection-allocation rollback (official defaults)."""

    num_beams: int = 5
    scale_factor: float = 50.0
    threshold: int = 15
    num_attn_candidates: int = 5
    penalty_weights: float = 1.0
    window_size: int = 512

    def check(self) -> None:
        """Check every value, naming the bad one."""
        for name in ("num_beams", "num_attn_candidates", "window_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"opera: {name} must be >= 1, got {getattr(self, name)!r}")
        if self.num_beams < 2:
            raise ConfigError(f"opera: num_beams must be >= 2 (it is beam search), got {self.num_beams!r}")
        if not self.scale_factor > 0:
            raise ConfigError(f"opera: scale_factor must be > 0, got {self.scale_factor!r}")
        if self.threshold < 0:
            raise ConfigError(f"opera: threshold must be >= 0, got {self.threshold!r}")
        if self.penalty_weights < 0:
            raise ConfigError(f"opera: penalty_weights must be >= 0, got {self.penalty_weights!r}")

    def own_decoding_beams(self) -> int:
        """OPERA's own beam search, which scores each step's candidate tokens with extra forwards."""
        return self.num_beams

    def install(self, lvlm: LVLM, handle: Handle) -> None:
        """Register the hook that supplies the decoding loop and reports what it did."""
        handle.on_remove(add_generation_hook(lvlm, _Decoding(self)))


class _Decoding(GenerationHook):
    """Per generate call: OPERA's decoding loop for ``custom_generate``, then its per-sample report."""

    def __init__(self, config: OPERA) -> None:
        """Idle until a generate call starts."""
        self.config = config
        self.lanes: list[Lane] = []

    def decoding(self, lvlm: LVLM, batch: PreparedBatch) -> Any:
        """The loop for this batch (a closure over its image spans and prompt lengths)."""
        self.lanes = []

        def generate(model, input_ids, logits_processor, stopping_criteria, generation_config, **model_kwargs):
            self._refuse(logits_processor, generation_config.num_beams)
            alone = not any(hook.edits_forwards for hook in lvlm.generation_hooks if hook is not self)
            with use_probe(lvlm) as probe:
                loop = OperaLoop(lvlm, batch, self.config, probe, generation_config, tokens_together=alone)
                self.lanes = loop.lanes
                return loop.run(input_ids, LogitsProcessorList(logits_processor), model_kwargs)

        return generate

    def _refuse(self, processors: LogitsProcessorList, num_beams: int) -> None:
        """Refuse what OPERA's beams cannot follow, before any forward (the CLI has already refused it before
        loading the model, with ``check_decoding``; this catches library calls)."""
        if num_beams not in (1, self.config.num_beams):
            raise ConfigError(
                f"opera sets its own beam count ({self.config.num_beams}); got num_beams={num_beams}: drop "
                f"--num-beams or set opera:num_beams={num_beams}"
            )
        if any(isinstance(p, ContrastiveGuidance) for p in processors):
            raise ConfigError(
                "opera cannot run with a contrast-branch method (VCD, PAI's or token emphasis' CFG): the branch "
                "follows one sequence per prompt and OPERA's beams roll back; turn the branch off (e.g. cfg=false)"
            )
        if any(isinstance(p, StepForwardProcessor) for p in processors):
            raise ConfigError(
                "opera cannot run with a method whose processor reads the step's forward (DoLa, VISTA's "
                "self-logits augmentation): OPERA's candidate forwards come in between; drop it (or vista:alpha=0)"
            )

    def report(self, lvlm: LVLM, batch: PreparedBatch) -> list[dict[str, Any]] | None:
        """Per sample: steps run, steps whose candidates got the image reward or the column penalty, rollbacks."""
        if not self.lanes:
            return None
        return [{"opera": lane.report()} for lane in self.lanes]

    def on_generate_end(self, lvlm: LVLM) -> None:
        """Nothing to undo: the attention function is restored by the loop itself."""
