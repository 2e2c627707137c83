"""The text a model continues: its chat prompt for (image, question) plus the partly written answer.

Generation (sampling the next sentence) and DPO training (scoring it) must build this text the same way, so both
use these two functions. The text is tokenized with ``add_special_tokens=False``: a BOS the tokenizer would add
on its own is written into the text here instead, so prompt and answer can be tokenized separately.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase, ProcessorMixin

from halluc.defaults import DESCRIBE_PROMPT

__all__ = ["DEFAULT_QUESTION", "continuation", "render_prompt"]

DEFAULT_QUESTION = DESCRIBE_PROMPT


def _adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer prepends BOS by itself (so a text tokenized without special tokens must carry it)."""
    bos_id = tokenizer.bos_token_id
    return bos_id is not None and tokenizer("a")["input_ids"][:1] == [bos_id]


def continuation(prompt: str, text: str) -> str:
    """``text`` as it follows ``prompt``: after a space unless the prompt already ends in whitespace."""
    return text if not prompt or prompt[-1].isspace() else " " + text


def render_prompt(processor: ProcessorMixin, question: str, context: str = "") -> str:
    """Chat prompt for one image and ``question``, followed by the answer so far (``context``, may be empty)."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    tokenizer = processor.tokenizer
    bos = tokenizer.bos_token
    if bos is not None and not text.startswith(bos) and _adds_bos(tokenizer):
        text = bos + text
    return text + continuation(text, context) if context else text
