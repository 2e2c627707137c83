"""The README's Python example runs as written, on the shipped toy model."""

from __future__ import annotations

import ast
import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_python_example_runs() -> None:
    block = re.search(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL).group(1)
    assert len([line for line in block.splitlines() if line.strip()]) <= 16
    printed = io.StringIO()
    namespace: dict[str, object] = {}
    with contextlib.redirect_stdout(printed):
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own documentation
    captions = ast.literal_eval(printed.getvalue().strip())
    assert len(captions) == 4 and all(isinstance(c, str) and c for c in captions)
    lvlm = namespace["lvlm"]
    assert lvlm.generation_hooks == [] and lvlm.attn_implementation == "sdpa"  # the decorator cleaned up
    prompts = ["Please describe this image in detail."] * 4
    by_spec = lvlm.generate(namespace["images"], prompts, max_new_tokens=64, intervention=["vhr:alpha=2", "pai"])
    assert by_spec == captions  # the comment's claim
